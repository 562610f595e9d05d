"""Errors a user or a file can cause. Each names the problem and the fix, in words for people."""

from __future__ import annotations


class FolioError(Exception):
    """Base class: `str(error)` is a complete message for the user (problem, then what to do)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip())


class DocumentError(FolioError):
    """The document cannot be read (format, encoding, encryption, no text...)."""


class ContextTooLongError(FolioError):
    """The prompt does not fit the model's context window. characters: the count was judged from the text's length
    before tokenizing it (`needed` is then a lower bound)."""

    def __init__(self, needed: int, maximum: int, prompt_tokens: int, reserved: int, characters: int = 0) -> None:
        self.needed, self.maximum = needed, maximum
        if characters:
            problem = (f"This document has {characters:,} characters: that is at least {prompt_tokens:,} tokens, so "
                       f"with {reserved:,} reserved for the answer it needs at least {needed:,} tokens, but the model "
                       f"handles at most {maximum:,}.")
        else:
            problem = (f"This document and question need {needed:,} tokens ({prompt_tokens:,} for the prompt + "
                       f"{reserved:,} reserved for the answer) but the model handles at most {maximum:,}.")
        super().__init__(problem, "Use a shorter document, lower the answer length, or choose a model with a longer "
                                  "context.")


class ChatFullError(ContextTooLongError):
    """A chat's next turn does not fit the model's context: the earlier turns take too much of it."""

    def __init__(self, needed: int, maximum: int, prefix_tokens: int, history_tokens: int, question_tokens: int,
                 reserved: int) -> None:
        FolioError.__init__(
            self,
            f"This chat is full: the next answer needs {needed:,} tokens ({prefix_tokens:,} for the document, "
            f"{history_tokens:,} for the earlier turns, {question_tokens:,} for this question and {reserved:,} "
            f"reserved for the answer) but the model handles at most {maximum:,}.",
            "Start a new chat (the document stays cached)"
            + (f", or lower the answer length to at most {reserved - (needed - maximum):,} tokens."
               if needed - maximum < reserved else "."),
        )
        self.needed, self.maximum = needed, maximum


class QuestionTooLongError(ContextTooLongError):
    """A question that does not fit the model's context even in a new chat."""

    def __init__(self, needed: int, maximum: int, prefix_tokens: int, question_tokens: int, reserved: int) -> None:
        FolioError.__init__(
            self,
            f"This question is too long: with the document ({prefix_tokens:,} tokens) it needs {needed:,} tokens "
            f"({question_tokens:,} for the question and {reserved:,} reserved for the answer) but the model handles "
            f"at most {maximum:,}.",
            f"Ask a shorter question (at most {question_tokens - (needed - maximum):,} tokens)"
            + (" or lower the answer length." if reserved > 1 else "."),
        )
        self.needed, self.maximum = needed, maximum


class EmptyQuestionError(FolioError):
    """An empty or whitespace-only question."""

    def __init__(self) -> None:
        super().__init__("The question is empty.", "Type a question about the document.")


class ChatError(FolioError):
    """A chat cannot be found or continued (its document was removed, or it was made with another model)."""


class ModelError(FolioError):
    """The model cannot be found, downloaded, converted or loaded."""


class CancelledError(FolioError):
    """The user cancelled the running job."""

    def __init__(self) -> None:
        super().__init__("Cancelled.")


class StoreError(FolioError):
    """The document library cannot be read or written (disk full, permissions, a database problem).
    disk_full: the disk is full (the library can still be read)."""

    disk_full = False


class LibraryDamagedError(StoreError):
    """The library's database is damaged. copy: where a copy of the damaged file is kept (None if none could be)."""

    def __init__(self, problem: str, fix: str = "", copy=None) -> None:
        super().__init__(problem, fix)
        self.copy = copy
