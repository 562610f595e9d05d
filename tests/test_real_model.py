"""Integration tests with the real default model (SmolLM2-135M-Instruct). Slow: minutes on a CPU."""

import pytest

from engine.bench.haystack import DEFAULT_NEEDLE, needle_document
from engine.config import EngineConfig
from engine.generate import Finished
from engine.ingest import Document
from engine.session import DocumentSession

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_model():
    from engine.model import load_model

    return load_model("default")


@pytest.fixture(scope="module")
def real_model_float32():
    """The default model with float32 linear layers: the reference that int8 CPU weights are measured against."""
    from engine.model import load_model

    return load_model("default", cpu_weights="full")


def test_default_model_is_the_converted_smollm2(real_model):
    config = real_model.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert real_model.max_positions == 8192
    assert (real_model.path / "model.safetensors").exists()


def test_needle_at_half_depth_of_a_3500_token_document_is_found(real_model):
    text = needle_document(real_model.tokenizer, 3500, depth=0.5)
    session = DocumentSession(real_model, Document(text, "haystack", None, "0" * 64),
                              EngineConfig(attention="full", max_new_tokens=24))
    assert 3300 < session.prefix_tokens < 4000
    finished = [e for e in session.ask(DEFAULT_NEEDLE.question) if isinstance(e, Finished)][-1]
    assert DEFAULT_NEEDLE.answer in finished.text


def test_needle_at_half_depth_survives_retrieval_attention(real_model):
    """The paper's defaults: 128 sinks + 512 window on the device, top-100 retrieved by the graph index."""
    text = needle_document(real_model.tokenizer, 3500, depth=0.5)
    config = EngineConfig(attention="retrieval", n_sink=128, n_window=512, top_k=100, max_new_tokens=24)
    session = DocumentSession(real_model, Document(text, "haystack", None, "0" * 64), config)
    finished = [e for e in session.ask(DEFAULT_NEEDLE.question) if isinstance(e, Finished)][-1]
    assert DEFAULT_NEEDLE.answer in finished.text
    assert 0 < session.cache.stats.scanned_fraction < 0.5


def test_three_turn_chat_on_the_sample_answers_in_retrieval_mode_as_full_attention_does(real_model_float32):
    """The third question points at the second answer; retrieval attention (the paper's defaults) gives the same
    tokens as full attention at every turn, and each follow-up prefills only its own tokens. On float32 weights:
    with int8 ones this 135M model loses the third turn's year in both modes alike (docs/benchmarks.md, freerun)."""
    from pathlib import Path

    from engine.ingest import read_document

    questions = ["Who was the first head keeper of the lighthouse?", "In which year was the light first lit?",
                 "How many years after the year in your previous answer did that keeper stop serving?"]
    document = read_document(Path(__file__).resolve().parents[1] / "resources" / "sample.md")
    answers = {}
    for attention in ("retrieval", "full"):
        chat = DocumentSession(real_model_float32, document,
                               EngineConfig(attention=attention, max_new_tokens=48)).chat()
        answers[attention] = []
        for question in questions:
            finished = [e for e in chat.ask(question) if isinstance(e, Finished)][-1]
            answers[attention].append(finished)
            if len(answers[attention]) > 1:
                assert finished.stats.prefill_tokens < 40  # the follow-up's own tokens, not the history
    assert [f.token_ids for f in answers["retrieval"]] == [f.token_ids for f in answers["full"]]
    assert "Brekke" in answers["retrieval"][0].text and "1865" in answers["retrieval"][1].text
    assert "1865" in answers["retrieval"][2].text  # the previous answer's year, taken from the chat


def test_int8_cpu_weights_answer_the_sample_question_with_the_float32_models_fact():
    """EngineConfig.cpu_weights "int8" against "full" (float32) on the sample document: the same keeper and year."""
    from pathlib import Path

    from engine.ingest import read_document
    from engine.model import load_model

    document = read_document(Path(__file__).resolve().parents[1] / "resources" / "sample.md")
    question = "Who was the first head keeper of the lighthouse, and when did he serve?"
    answers = {}
    for cpu_weights in ("full", "int8"):
        loaded = load_model("default", "cpu", "float32", cpu_weights=cpu_weights)
        assert loaded.cpu_weights == cpu_weights
        session = DocumentSession(loaded, document, EngineConfig(attention="full", max_new_tokens=32))
        answers[cpu_weights] = [e for e in session.ask(question) if isinstance(e, Finished)][-1].text
    for text in answers.values():
        assert "Anders Brekke" in text and "1865" in text
