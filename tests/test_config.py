"""EngineConfig: the prefill chunk chosen by device."""

import pytest

from engine.config import EngineConfig


def test_prefill_chunk_follows_the_device_unless_set():
    auto = EngineConfig()
    assert auto.prefill_chunk_for("cpu") == 512
    assert auto.prefill_chunk_for("cuda") == 4096  # each chunk sends the stored prefix to the device again
    assert EngineConfig(prefill_chunk=1000).prefill_chunk_for("cuda") == 1000
    assert EngineConfig(prefill_chunk=1000).prefill_chunk_for("cpu") == 1000


def test_a_negative_prefill_chunk_is_refused():
    with pytest.raises(ValueError, match="prefill_chunk must be 0 or more"):
        EngineConfig(prefill_chunk=-1)


def test_a_config_change_says_what_it_costs():
    from engine.config import ConfigChange

    base = EngineConfig()
    assert ConfigChange.between(base, base) == ConfigChange(False, ())
    assert ConfigChange.between(base, EngineConfig(temperature=0.5)).changed == ("temperature",)
    assert ConfigChange.between(base, EngineConfig(model="/m")).reload_model
    window = ConfigChange.between(base, EngineConfig(n_window=1024))
    assert window.changed == ("n_window",) and not window.reload_model


def test_the_command_line_takes_its_defaults_from_the_config():
    from engine.cli import build_parser

    args = build_parser().parse_args(["ask", "doc.md", "why?"])
    defaults = EngineConfig()
    assert (args.max_new_tokens, args.top_k, args.n_sink, args.n_window, args.attention, args.temperature) == (
        defaults.max_new_tokens, defaults.top_k, defaults.n_sink, defaults.n_window, defaults.attention,
        defaults.temperature)


def test_answer_length_and_model_are_checked():
    with pytest.raises(ValueError, match="max_new_tokens must be at most 32,768"):
        EngineConfig(max_new_tokens=40000)
    with pytest.raises(ValueError, match="model must be"):
        EngineConfig(model=" ")
