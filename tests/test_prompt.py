"""The document is a reusable prefix of every question's prompt, in the model's chat template."""

from engine.prompt import QUESTION_MARKER, build_document_prompt


def test_document_prefix_is_shared_by_every_question(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    prompt = build_document_prompt(tokenizer, "The light was first lit in 1865.\n")
    first = prompt.prompt_ids(tokenizer, "When was it lit?")
    second = prompt.prompt_ids(tokenizer, "Who lit it?")
    n = len(prompt.prefix_ids)
    assert first[:n] == second[:n] == prompt.prefix_ids
    assert first[n:] != second[n:]


def test_layout_uses_the_chat_template_with_document_before_question(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    prompt = build_document_prompt(tokenizer, "DOCUMENT BODY")
    text = tokenizer.decode(prompt.prompt_ids(tokenizer, "THE QUESTION?"))
    assert text.startswith("<|im_start|>system\n")
    assert text.index("DOCUMENT BODY") < text.index("THE QUESTION?")
    assert text.endswith("<|im_start|>assistant\n")
    assert QUESTION_MARKER not in text


def test_document_token_span_decodes_to_the_document(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    prompt = build_document_prompt(tokenizer, "  the quick brown fox  ")
    span = prompt.prefix_ids[prompt.doc_token_start : prompt.doc_token_end]
    assert tokenizer.decode(span) == "the quick brown fox"
