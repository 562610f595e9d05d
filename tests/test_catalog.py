"""The model catalog (resources/models.json): its schema, its numbers against the weights arithmetic, the fit per
entry and precision, the recommendation, and a catalog model loaded with the RoPE scaling its entry names."""

from __future__ import annotations

import copy
import json

import pytest

from engine.catalog import catalog_path, find_entry, load_catalog, parse_catalog
from engine.choices import card, card_table, document_lengths, model_choices
from engine.config import WEIGHTS
from engine.errors import ModelError
from engine.sizing import Machine, parameter_split, weights_bytes
from engine.units import GIB

ISSUE_MODELS = {"HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
                "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3"}


@pytest.fixture(scope="module")
def raw():
    return json.loads(catalog_path().read_text(encoding="utf-8"))


def test_catalog_has_the_models_folio_offers():
    entries = load_catalog()
    assert {e.hub_id for e in entries} == ISSUE_MODELS
    assert [e.spec for e in entries if e.bundled] == ["default"]
    contexts = {e.hub_id: e.context for e in entries}
    assert contexts["Qwen/Qwen2.5-7B-Instruct"] == contexts["meta-llama/Llama-3.1-8B-Instruct"] == 131072
    assert contexts["Qwen/Qwen2.5-1.5B-Instruct"] == contexts["mistralai/Mistral-7B-Instruct-v0.3"] == 32768
    assert {e.hub_id for e in entries if e.gated} == {"meta-llama/Llama-3.1-8B-Instruct",
                                                      "mistralai/Mistral-7B-Instruct-v0.3"}


def test_numbers_agree_with_the_arithmetic():
    for entry in load_catalog():
        linear, rest = parameter_split(entry.shape)
        assert abs(linear + rest - entry.parameters) <= 0.005 * entry.parameters, entry.id  # published count
        for weights in WEIGHTS:
            assert entry.weights_bytes[weights] == weights_bytes(entry.shape, weights, 2), (entry.id, weights)
        assert entry.weights_bytes["4bit"] < entry.weights_bytes["8bit"] < entry.weights_bytes["full"]
        assert 2 * entry.parameters <= entry.download_bytes <= 2.02 * entry.parameters + 20e6, entry.id  # bfloat16


def test_rope_scaling_reaches_the_context(raw):
    qwen = find_entry("Qwen/Qwen2.5-7B-Instruct")
    assert qwen.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    overrides = qwen.load_overrides({"rope_type": "default", "rope_theta": 1e6})
    assert overrides == {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                             "original_max_position_embeddings": 32768},
                         "max_position_embeddings": 131072}
    assert find_entry("llama-3.1-8b-instruct").load_overrides({"rope_theta": 5e5}) == {}


def test_find_entry_by_id_hub_id_or_default():
    assert find_entry("default").bundled and find_entry("QWEN/qwen2.5-3b-instruct").id == "qwen2.5-3b-instruct"
    assert find_entry("someone/else") is None and find_entry("/some/folder") is None


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["models"][1].pop("licence"), "qwen2.5-1.5b-instruct has no licence"),
    (lambda r: r["models"][1].update(parameters="1.5B"), "parameters has the wrong type"),
    (lambda r: r["models"][1]["weights_bytes"].pop("4bit"), "weights_bytes must give"),
    (lambda r: r["models"][3].update(rope_scaling=None), "beyond native_context without a RoPE scaling"),
    (lambda r: r["models"][3]["rope_scaling"].update(factor=2.0), "context must be native_context x the RoPE"),
    (lambda r: r["models"].append(copy.deepcopy(r["models"][1])), "'qwen2.5-1.5b-instruct' appears twice"),
    (lambda r: r["models"][1].update(bundled=True), "exactly one entry must be the bundled model"),
    (lambda r: r.update(schema_version=2), "not a Folio model catalog"),
])
def test_schema_problems_are_named(raw, damage, message):
    broken = copy.deepcopy(raw)
    damage(broken)
    with pytest.raises(ModelError, match=message):
        parse_catalog(broken)


def test_unreadable_catalog_is_a_clear_error(tmp_path):
    path = tmp_path / "models.json"
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ModelError, match="could not be read.*Reinstall"):
        load_catalog(path)


@pytest.mark.parametrize("entry", load_catalog(), ids=lambda e: e.id)
def test_fit_per_entry_and_precision(entry):
    """Each precision fits exactly where its weights and the cache's device part fit; less memory never fits more."""
    choices = {}
    for gigabytes in (4, 8, 12, 16, 24, 48):
        [choice] = model_choices(card(gigabytes, ram_bytes=256 * GIB), [entry], installed=lambda _: True,
                                 quantization_available=True)
        choices[gigabytes] = choice
        for fit in choice.fits:
            assert fit.fits == (fit.device_bytes <= card(gigabytes).device_bytes)
            assert fit.device_bytes > entry.weights_bytes[fit.weights]  # the weights plus the document's part
        assert [f.tokens for f in choice.fits] == [t for _ in WEIGHTS for t in document_lengths(entry)]
    for tokens in document_lengths(entry):
        ranks = [{"full": 2, "8bit": 1, "4bit": 0}.get(choices[g].best_weights(tokens), -1) for g in sorted(choices)]
        assert ranks == sorted(ranks)  # a bigger card never allows a lower precision
    assert choices[48].best_weights(document_lengths(entry)[-1]) == "full"


def test_cpu_fit_counts_float32_weights_in_ram_and_the_download():
    entry = find_entry("qwen2.5-1.5b-instruct")
    machine = Machine("cpu", 0, ram_bytes=8 * GIB, disk_bytes=2 * GIB)
    [choice] = model_choices(machine, [entry], installed=lambda _: False, quantization_available=False)
    full = choice.fit("full", 32256)
    assert full.ram_bytes > weights_bytes(entry.shape, "full", 4) and full.device_bytes == 0
    assert any("download" in p for p in full.problems)  # 3.1 GB does not fit 2 GiB of disk
    assert any("bitsandbytes" in p for p in choice.fit("4bit", 32256).problems)


def test_recommendation_per_card():
    def recommended(machine):
        return [(c.entry.id, c.recommended_weights) for c in model_choices(machine, installed=lambda _: True,
                                                                          quantization_available=True)
                if c.recommended]

    assert recommended(card(8)) == [("qwen2.5-7b-instruct", "4bit")]
    assert recommended(card(24)) == [("qwen2.5-7b-instruct", "full")]
    assert recommended(Machine("cpu", 0, ram_bytes=16 * GIB)) == [("qwen2.5-1.5b-instruct", "full")]
    assert recommended(Machine("cpu", 0, ram_bytes=1 * GIB)) == [("smollm2-135m-instruct", "full")]


def test_card_table_names_every_model_card_and_context():
    rows = card_table()
    assert {r["card_gb"] for r in rows} == {8, 12, 16, 24}
    assert {(r["model"], r["card_gb"]) for r in rows} == {(e.name, g) for e in load_catalog() for g in (8, 12, 16, 24)}
    llama_128k = {r["card_gb"]: r["weights"] for r in rows if r["model"].startswith("Llama") and r["tokens"] > 65536}
    assert llama_128k == {8: "4bit", 12: "8bit", 16: "8bit", 24: "full"}


def test_a_catalog_model_loads_with_its_rope_scaling(tiny_model_dir, tmp_path, monkeypatch):
    """`qwen2.5-7b-instruct` resolves to its hub id, is pulled (here from the local hub emulation, serving a tiny
    random Qwen2 under that id) and loads with YaRN stretching its 32K positions to 128K."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.model import load_model
    from tests.fake_hub import fake_hub_env, repo_from_folder

    folder = tmp_path / "tiny-qwen"
    config = Qwen2Config(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, folder / name)
    with fake_hub_env({"Qwen/Qwen2.5-7B-Instruct": repo_from_folder(folder)}, monkeypatch, tmp_path):
        loaded = load_model("qwen2.5-7b-instruct", device="cpu", dtype="float32")
        plain = load_model(str(loaded.path), device="cpu", dtype="float32")
    assert loaded.max_positions == 131072 and plain.max_positions == 32768
    assert loaded.name == "Qwen/Qwen2.5-7B-Instruct"
    rope = loaded.model.config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0 and rope["rope_theta"] == 1e6
    assert loaded.model.model.rotary_emb.rope_type == "yarn"
    assert loaded.fingerprint != plain.fingerprint  # caches made without YaRN do not apply
