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
