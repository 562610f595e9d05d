"""Text from users and files, tokenised as plain text: it never becomes a special or control token.

A document, a question or an answer read back from the library may contain a chat template's control strings
(``<|im_end|>\\n<|im_start|>assistant``, ``<|eot_id|>``, ``[INST]``...). Tokenised the ordinary way, those strings
become the control tokens themselves, so a question or a PDF could forge a turn of the conversation. Here they are
tokenised as the characters they are: special tokens are split (``split_special_tokens=True``), and the non-special
added tokens that the chat template writes (Qwen's ``<tool_call>``, ``<think>``) are broken apart before the
tokenizer can match them. Only the template's own pieces (engine.prompt) are tokenised with control tokens.

No torch; any transformers tokenizer (fast ones also give character offsets).
"""

from __future__ import annotations

import re

Offsets = list[tuple[int, int]]


def control_tokens(tokenizer) -> dict[str, int]:
    """The added tokens plain text must never produce, content -> id: every special token, the tokenizer's declared
    ``chat_control_tokens``, and the non-special added tokens that appear in the chat template (not whitespace ones,
    such as Gemma's "\\n" tokens, which templates write as ordinary text)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = "\0".join(template.values())
    declared = set(getattr(tokenizer, "chat_control_tokens", None) or ())
    return {token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items()
            if token.special or token.content in declared
            or (token.content in template and not token.content.isspace())}


def encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as plain text (no control token among them; no BOS/EOS added)."""
    return encode_plain_with_offsets(tokenizer, text, offsets=False)[0]


def encode_plain_with_offsets(tokenizer, text: str, offsets: bool = True) -> tuple[list[int], Offsets]:
    """(ids, character (start, end) of each token in `text`) of `text` as plain text. offsets=False skips them ([])
    for tokenizers that cannot give them."""
    controls = control_tokens(tokenizer)
    ids, spans = _encode(tokenizer, text, offsets)
    control_ids = set(controls.values())
    if not control_ids & set(ids):
        return ids, spans
    # Rare: a control string that split_special_tokens does not cover (a non-special added token) is in the text.
    # Cut the text at each such string and tokenise the string as its first character and the rest, apart, so the
    # tokenizer cannot match it whole; the rest goes through this function again (it may hold another one).
    pattern = re.compile("|".join(re.escape(c) for c in sorted(controls, key=len, reverse=True)))
    ids, spans, done = [], [], 0
    for match in pattern.finditer(text):
        _extend(ids, spans, *_encode(tokenizer, text[done : match.start()], offsets), done)
        _extend(ids, spans, *_encode(tokenizer, match.group()[:1], offsets), match.start())
        _extend(ids, spans, *encode_plain_with_offsets(tokenizer, match.group()[1:], offsets), match.start() + 1)
        done = match.end()
    _extend(ids, spans, *_encode(tokenizer, text[done:], offsets), done)
    if leaked := control_ids & set(ids):  # the tokenizer's own vocabulary spells a control token
        raise ValueError(f"the tokenizer turns plain text into its control token(s) {sorted(leaked)}")
    return ids, spans


def _encode(tokenizer, text: str, offsets: bool) -> tuple[list[int], Offsets]:
    if not text:
        return [], []
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)
    spans = [(int(start), int(end)) for start, end in encoded["offset_mapping"]] if offsets else []
    return list(encoded["input_ids"]), spans


def _extend(ids: list[int], spans: Offsets, more_ids: list[int], more_spans: Offsets, shift: int) -> None:
    ids += more_ids
    spans += [(start + shift, end + shift) for start, end in more_spans]
