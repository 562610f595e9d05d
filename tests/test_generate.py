"""The prefill + decode loop against transformers' own forward and generate as references."""

import pytest
import torch
from transformers import DynamicCache

from engine.errors import CancelledError
from engine.events import CancelToken, Progress
from engine.generate import Finished, SamplingOptions, TokenEvent, generate, prefill

TWELVE_TOKENS = SamplingOptions(max_new_tokens=12)


def run(loaded, prompt, options=TWELVE_TOKENS, cancel=None, chunk=7, stop_ids=None):
    events = list(generate(
        loaded.model, prompt, DynamicCache(config=loaded.model.config),
        decode_text=lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True),
        stop_ids=set() if stop_ids is None else stop_ids, max_positions=loaded.max_positions,
        options=options, cancel=cancel, prefill_chunk=chunk,
    ))
    return events


def prompt_ids(loaded, n=40):
    torch.manual_seed(1)
    return torch.randint(3, loaded.model.config.vocab_size, (n,)).tolist()


def test_chunked_prefill_gives_the_same_logits_as_one_forward(tiny_loaded):
    ids = torch.tensor(prompt_ids(tiny_loaded))
    whole = tiny_loaded.model(input_ids=ids[None]).logits[0, -1]
    chunked = prefill(tiny_loaded.model, ids, DynamicCache(config=tiny_loaded.model.config), chunk=9)
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)


def test_greedy_answer_matches_transformers_generate(tiny_loaded):
    ids = prompt_ids(tiny_loaded)
    reference = tiny_loaded.model.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(ids):].tolist()
    finished = run(tiny_loaded, ids)[-1]
    assert isinstance(finished, Finished)
    assert finished.token_ids == reference


def test_events_stream_progress_then_tokens_then_stats(tiny_loaded):
    ids = prompt_ids(tiny_loaded)
    events = run(tiny_loaded, ids)
    progress = [e for e in events if isinstance(e, Progress)]
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    finished = events[-1]
    assert progress[0].done == 0 and progress[-1].done == progress[-1].total == len(ids)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert "".join(t.text for t in tokens) == finished.text
    stats = finished.stats
    assert stats.prompt_tokens == len(ids) and stats.reused_tokens == 0
    assert stats.new_tokens == 12 and stats.stop_reason == "max_new_tokens"
    assert 0 < stats.prefill_s <= stats.ttft_s
    assert stats.decode_tokens_per_s > 0


def test_stops_at_a_stop_token(tiny_loaded):
    ids = prompt_ids(tiny_loaded)
    free = run(tiny_loaded, ids)[-1].token_ids
    stopped = run(tiny_loaded, ids, stop_ids={free[3]})[-1]
    assert stopped.token_ids == free[: free.index(free[3])]
    assert stopped.stats.stop_reason == "stop_token"


def test_cancel_during_prefill_stops_between_chunks(tiny_loaded):
    cancel = CancelToken()
    seen = []
    stream = generate(tiny_loaded.model, prompt_ids(tiny_loaded), DynamicCache(config=tiny_loaded.model.config),
                      lambda ids: "", set(), 4096, cancel=cancel, prefill_chunk=5)
    with pytest.raises(CancelledError):
        for event in stream:
            seen.append(event)
            if isinstance(event, Progress) and event.done >= 10:
                cancel.cancel()
    assert max(e.done for e in seen) == 10, "no chunk runs after cancel"


def test_cancel_during_decode_stops_between_tokens(tiny_loaded):
    cancel = CancelToken()
    tokens = 0
    with pytest.raises(CancelledError):
        for event in run_stream(tiny_loaded, cancel):
            if isinstance(event, TokenEvent):
                tokens += 1
                if tokens == 3:
                    cancel.cancel()
    assert tokens == 3


def run_stream(loaded, cancel):
    return generate(loaded.model, prompt_ids(loaded), DynamicCache(config=loaded.model.config),
                    lambda ids: loaded.tokenizer.decode(ids), set(), 4096,
                    SamplingOptions(max_new_tokens=50), cancel=cancel)


def test_seeded_sampling_is_reproducible_and_tiny_top_p_is_greedy(tiny_loaded):
    ids = prompt_ids(tiny_loaded)
    sampled = SamplingOptions(max_new_tokens=10, temperature=1.5, seed=7)
    assert run(tiny_loaded, ids, sampled)[-1].token_ids == run(tiny_loaded, ids, sampled)[-1].token_ids
    nucleus = SamplingOptions(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3)
    greedy = SamplingOptions(max_new_tokens=10)
    assert run(tiny_loaded, ids, nucleus)[-1].token_ids == run(tiny_loaded, ids, greedy)[-1].token_ids


def test_incremental_text_decodes_a_window_and_its_deltas_join_to_the_whole_answer(tiny_loaded):
    from engine.generate import IncrementalText

    tokenizer = tiny_loaded.tokenizer
    text = "Keepers wrote: «the light never failed» — 1874, 7351 ✓ done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lengths: list[int] = []

    def decode(part: list[int]) -> str:
        lengths.append(len(part))
        return tokenizer.decode(part, skip_special_tokens=True)

    stream = IncrementalText(decode)
    joined = "".join(stream.add(token) for token in ids)
    decode_calls_before_flush = len(lengths)
    joined += stream.flush()
    assert joined == tokenizer.decode(ids) == stream.text
    assert "\ufffd" not in joined
    assert max(lengths[:decode_calls_before_flush]) <= 2 * (IncrementalText.MAX_HELD + 1)  # a window, not the answer


@pytest.mark.parametrize("capacity", [0, 10, 400])  # regrown many times, once, never
def test_the_growing_cache_decodes_what_dynamic_cache_decodes_and_crops_back(tiny_loaded, capacity):
    from engine.full_cache import GrowingLayer, growing_cache

    prompt = prompt_ids(tiny_loaded, 60)
    reference = run(tiny_loaded, prompt)[-1]
    cache = growing_cache(tiny_loaded.model.config, capacity)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    decode = lambda ids: tiny_loaded.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    finished = list(generate(tiny_loaded.model, prompt, cache, decode, set(), tiny_loaded.max_positions,
                             TWELVE_TOKENS, prefill_chunk=7))[-1]
    assert finished.token_ids == reference.token_ids
    assert cache.get_seq_length() == 60 + 12
    cache.crop(-13)  # back to the prompt's first 59 tokens: the last one is prefilled again
    again = list(generate(tiny_loaded.model, prompt, cache, decode, set(), tiny_loaded.max_positions,
                          TWELVE_TOKENS, prefill_chunk=7))[-1]
    assert again.token_ids == reference.token_ids and again.stats.reused_tokens == 59
