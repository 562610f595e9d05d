"""The prompt layout: the whole document first, the question after it, in the model's chat template.

The document part is tokenised on its own, so its token ids are the same for every question: that
prefix's KV cache (and its index) can be computed once and reused for every question.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = (
    "You answer questions about the document the user gives you. Base the answer on the document; "
    "if it does not say, answer that the document does not say."
)
QUESTION_MARKER = "\u2063FOLIO-QUESTION\u2063"  # invisible separator: never appears in real text


@dataclass(frozen=True)
class DocumentPrompt:
    """prefix_ids: template start + document, the reusable part; suffix_text has the question marker.

    doc_token_start/doc_token_end: where the document's own tokens lie inside prefix_ids.
    """

    prefix_ids: list[int]
    suffix_template: str
    doc_token_start: int
    doc_token_end: int

    def question_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        """Token ids that follow the prefix: the question and the template's turn to the assistant."""
        text = self.suffix_template.replace(QUESTION_MARKER, question.strip())
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        return self.prefix_ids + self.question_ids(tokenizer, question)


def user_message(document_text: str, question: str) -> str:
    return (
        "Here is a document.\n\n<document>\n" + document_text.strip() + "\n</document>\n\n"
        "Answer this question about it: " + question
    )


def build_document_prompt(tokenizer: PreTrainedTokenizerBase, document_text: str) -> DocumentPrompt:
    """Render the chat template once with a marker where the question goes and split there."""
    rendered = _render(tokenizer, user_message(document_text, QUESTION_MARKER))
    cut = rendered.index(QUESTION_MARKER)
    prefix_text, suffix_template = rendered[:cut], rendered[cut:]
    body = document_text.strip()
    doc_start_char = prefix_text.index(body)
    before = tokenizer(prefix_text[:doc_start_char], add_special_tokens=False)["input_ids"]
    document = tokenizer(body, add_special_tokens=False)["input_ids"]
    after = tokenizer(prefix_text[doc_start_char + len(body):], add_special_tokens=False)["input_ids"]
    prefix_ids = before + document + after
    return DocumentPrompt(prefix_ids, suffix_template, len(before), len(before) + len(document))


def _render(tokenizer: PreTrainedTokenizerBase, user_text: str) -> str:
    """The chat template as text; models without a system role get the instruction in the user turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # e.g. Gemma's template raises for a system turn
        merged = [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + user_text}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
