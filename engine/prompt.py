"""The prompt layout: the whole document first, then the conversation, in the model's chat template.

A chat's prompt is the document prefix (system turn + the first user turn up to its question), then each turn's
question, the template's way to the assistant, the answer, the template's way back to the user, and so on; the
newest question ends with the template's generation prompt. The prefix is tokenised on its own, so its ids are the
same for every question of every chat: its KV cache (and index) is computed once and reused.

The template is rendered once with marker strings where the document, questions and answers go and split at the
markers. Its own pieces are tokenised with their control tokens; the document, the questions and any answer text
are tokenised as plain text (engine.untrusted_text), so no text from a user or a file becomes a control token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from engine.untrusted_text import encode_plain

SYSTEM_PROMPT = (
    "You answer questions about the document the user gives you. Base the answer on the document; "
    "if it does not say, answer that the document does not say."
)
QUESTION_MARKER = "\u2063FOLIO-QUESTION\u2063"  # invisible separators: never appear in real text


def _marker(kind: str, number: int) -> str:
    return f"\u2063FOLIO-{kind}-{number}\u2063"


@dataclass(frozen=True)
class Turn:
    """One earlier turn as the prompt holds it: the question's text and the answer's token ids."""

    question: str
    answer_ids: Sequence[int]


@dataclass(frozen=True)
class DocumentPrompt:
    """prefix_ids: template start + document + the first user turn's text up to its question: the reusable part.

    doc_token_start/doc_token_end: where the document's own tokens lie inside prefix_ids.
    to_answer_ids: the template's tokens after a question, up to the answer (the generation prompt).
    to_question_ids: the template's tokens after an answer, up to the next question (e.g. ChatML's
        ``<|im_end|>\\n<|im_start|>user\\n``); None when the template cannot grow a conversation turn by turn,
        and follow_up_problem then says why.
    """

    prefix_ids: list[int]
    doc_token_start: int
    doc_token_end: int
    to_answer_ids: list[int]
    to_question_ids: list[int] | None
    follow_up_problem: str | None = None

    def question_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        """Token ids that follow the prefix for a first question: the question and the turn to the assistant."""
        return encode_plain(tokenizer, question.strip()) + self.to_answer_ids

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        return self.prefix_ids + self.question_ids(tokenizer, question)

    def turn_ids(self, tokenizer: PreTrainedTokenizerBase, turns: Sequence[Turn]) -> list[int]:
        """The ids of earlier turns after the prefix: each question, the way to its answer, the answer and the way
        back to the user (ready for the next question)."""
        if turns and self.to_question_ids is None:
            raise ValueError(self.follow_up_problem or "this chat template cannot hold earlier turns")
        ids: list[int] = []
        for turn in turns:
            ids += self.question_ids(tokenizer, turn.question) + list(turn.answer_ids) + self.to_question_ids
        return ids

    def chat_ids(self, tokenizer: PreTrainedTokenizerBase, turns: Sequence[Turn], question: str) -> list[int]:
        """The whole prompt of a chat's next question: prefix + earlier turns + question + generation prompt."""
        return self.prefix_ids + self.turn_ids(tokenizer, turns) + self.question_ids(tokenizer, question)


def user_message(document_text: str, question: str) -> str:
    return (
        "Here is a document.\n\n<document>\n" + document_text.strip() + "\n</document>\n\n"
        "Answer this question about it: " + question
    )


def build_document_prompt(tokenizer: PreTrainedTokenizerBase, document_text: str) -> DocumentPrompt:
    """Render the chat template with markers, split there, and tokenise the pieces (the document as plain text)."""
    merged = _needs_merged_system(tokenizer)
    rendered = _render(tokenizer, [user_message(document_text, QUESTION_MARKER)], merged)
    cut = rendered.index(QUESTION_MARKER)
    prefix_text, to_answer_text = rendered[:cut], rendered[cut + len(QUESTION_MARKER):]
    body = document_text.strip()
    doc_start_char = prefix_text.index(body)
    before = _template_ids(tokenizer, prefix_text[:doc_start_char])
    document = document_ids(tokenizer, document_text)
    after = _template_ids(tokenizer, prefix_text[doc_start_char + len(body):])
    prefix_ids = before + document + after
    to_question_text, problem = _turn_boundary(tokenizer, merged, to_answer_text)
    to_question = _template_ids(tokenizer, to_question_text) if to_question_text is not None else None
    to_answer = _template_ids(tokenizer, to_answer_text)
    return DocumentPrompt(prefix_ids, len(before), len(before) + len(document), to_answer, to_question, problem)


def document_ids(tokenizer: PreTrainedTokenizerBase, document_text: str) -> list[int]:
    """The document's own token ids as the prompt holds them (its text stripped, as plain text): the one count of a
    document's tokens (the library, the fit check, the window)."""
    return encode_plain(tokenizer, document_text.strip())


def _template_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The template's own text (and Folio's fixed wording around the document): control tokens are parsed."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _conversation(n_turns: int) -> list[str]:
    """Contents of a conversation with markers: user, assistant, user, ... ending with a user turn."""
    contents = [user_message(_marker("DOC", 0), _marker("Q", 1))]
    for number in range(1, n_turns):
        contents += [_marker("A", number), _marker("Q", number + 1)]
    return contents


def _split_at_markers(tokenizer: PreTrainedTokenizerBase, n_turns: int, merged: bool) -> list[str] | None:
    """The rendered conversation cut at its markers: [before Q1, Q1->A1, A1->Q2, ..., Qn->end], or None when the
    template drops, reorders or repeats a marker."""
    text = _render(tokenizer, _conversation(n_turns), merged)
    markers = [_marker("Q", 1)] + [m for n in range(1, n_turns) for m in (_marker("A", n), _marker("Q", n + 1))]
    pieces, start = [], 0
    for marker in markers:
        cut = text.find(marker, start)
        if cut < 0 or text.count(marker) != 1:
            return None
        pieces.append(text[start:cut])
        start = cut + len(marker)
    return [*pieces, text[start:]]


def _turn_boundary(tokenizer: PreTrainedTokenizerBase, merged: bool, to_answer: str) -> tuple[str | None, str | None]:
    """The template's text between an answer and the next question, and None for a problem; or (None, why) when the
    template does not render a conversation as one growing text: the document prefix and every turn's pieces must be
    the same whether one, two or three questions follow."""
    try:
        one, three = _split_at_markers(tokenizer, 1, merged), _split_at_markers(tokenizer, 3, merged)
    except TemplateError as error:
        return None, f"this model's chat template refuses a conversation ({error})"
    if one is None or three is None:
        return None, "this model's chat template drops or reorders the turns of a conversation"
    to_answers, to_questions = three[1::2], three[2::2]
    # An earlier answer may be rendered with a space before it (Mistral's " " + content): that space is the start
    # of the answer as the model writes it, which the chat holds as the model's own tokens.
    if (three[0] != one[0] or len(set(to_questions)) != 1
            or any(not piece.startswith(to_answer) or piece[len(to_answer):].strip() for piece in to_answers)):
        return None, "this model's chat template changes earlier turns as a conversation grows"
    return to_questions[0], None


def _needs_merged_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the instruction goes into the first user turn instead of a system turn: when the template refuses a
    system turn (Gemma), or moves it as the conversation grows (Mistral's puts it in the last user turn) where the
    merged form does not."""
    try:
        with_system = _split_at_markers(tokenizer, 2, merged=False)
    except TemplateError:
        return True
    if with_system is not None and with_system[0] == _split_at_markers(tokenizer, 1, merged=False)[0]:
        return False
    try:
        merged = _split_at_markers(tokenizer, 2, merged=True)
    except TemplateError:
        return False
    return merged is not None and merged[0] == _split_at_markers(tokenizer, 1, merged=True)[0]


def _render(tokenizer: PreTrainedTokenizerBase, contents: list[str], merged: bool) -> str:
    """The chat template as text for alternating user/assistant `contents`; `merged` puts the instruction into the
    first user turn (for models without a usable system role)."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": content} for i, content in enumerate(contents)]
    if merged:
        messages[0] = {"role": "user", "content": SYSTEM_PROMPT + "\n\n" + messages[0]["content"]}
    else:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
