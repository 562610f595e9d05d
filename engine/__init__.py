"""Folio's engine: whole-document question answering with RetrievalAttention, no Qt.

The public API is what ``__all__`` lists; everything else is internal and may change. A script asks a question
about a document in a few lines::

    from engine import DocumentSession, EngineConfig, Store, TokenEvent, load_model, read_document

    config = EngineConfig()                      # auto attention, 128 sinks, 512 window, top-k 100
    loaded = load_model(config.model)            # "default", a model folder or a hub id
    session = DocumentSession(loaded, read_document("manual.pdf"), config, store=Store())
    for event in session.ask("Which year was it built?"):
        if isinstance(event, TokenEvent):
            print(event.text, end="", flush=True)

Names are imported on first use (``engine.X``), so ``import engine`` and the light names (errors, events, units,
config) do not import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Model downloads (engine/hub.py) go over plain HTTP, which reports every chunk so that Cancel stops within a file;
# huggingface_hub reads this when it is first imported.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

# public name -> the module that defines it
_EXPORTS = {
    # settings
    "EngineConfig": "engine.config",
    "ConfigChange": "engine.config",
    "ATTENTION_MODES": "engine.config",
    "DEVICES": "engine.config",
    "DTYPES": "engine.config",
    "MAX_ANSWER_TOKENS": "engine.config",
    "CPU_WEIGHTS": "engine.config",
    "SettingsCost": "engine.change_cost",
    "settings_cost": "engine.change_cost",
    # models
    "LoadedModel": "engine.model",
    "load_model": "engine.model",
    "describe_device": "engine.model",
    "ensure_default_model": "engine.default_model",
    "default_model_gguf": "engine.default_model",
    "use_bundled_default_model": "engine.default_model",
    "WEIGHTS": "engine.config",
    "CatalogEntry": "engine.catalog",
    "load_catalog": "engine.catalog",
    "find_entry": "engine.catalog",
    "ModelChoice": "engine.choices",
    "model_choices": "engine.choices",
    "machine_now": "engine.choices",
    "card": "engine.choices",
    "pull_model": "engine.hub",
    "remove_model": "engine.hub",
    "save_hub_token": "engine.hub",
    "stored_hub_token": "engine.hub",
    "gated_error": "engine.hub",
    # documents and questions
    "Document": "engine.ingest",
    "read_document": "engine.ingest",
    "supported_suffixes": "engine.ingest",
    "DocumentSession": "engine.session",
    "document_ids": "engine.prompt",
    # chats
    "Chat": "engine.chat",
    "chat_markdown": "engine.chat",
    "ChatSummary": "engine.chat_store",
    "ChatTurn": "engine.chat_store",
    "ChatRecord": "engine.chat_store",
    "AnswerVersion": "engine.chat_store",
    # the library
    "Store": "engine.store",
    "DocumentInfo": "engine.store",
    "LibraryConfig": "engine.store",
    "data_dir": "engine.store",
    "reset_damaged_library": "engine.store",
    # events
    "Progress": "engine.events",
    "ProgressCallback": "engine.events",
    "ProgressMeter": "engine.events",
    "ProgressPrinter": "engine.events",
    "CancelToken": "engine.events",
    "TokenEvent": "engine.generate",
    "Finished": "engine.generate",
    "GenerationStats": "engine.generate",
    # errors
    "FolioError": "engine.errors",
    "DocumentError": "engine.errors",
    "ContextTooLongError": "engine.errors",
    "ChatFullError": "engine.errors",
    "QuestionTooLongError": "engine.errors",
    "EmptyQuestionError": "engine.errors",
    "ChatError": "engine.errors",
    "ModelError": "engine.errors",
    "StoreError": "engine.errors",
    "LibraryDamagedError": "engine.errors",
    "CancelledError": "engine.errors",
    # citations
    "Passage": "engine.citations",
    "SpanMap": "engine.citations",
    "top_passages": "engine.citations",
    "UnsupportedFact": "engine.grounding",
    "unsupported_facts": "engine.grounding",
    # a cited passage in its file
    "PdfPages": "engine.page_render",
    "PageImage": "engine.page_render",
    "TextExcerpt": "engine.page_render",
    "is_pdf": "engine.page_render",
    "text_excerpt": "engine.page_render",
    # sizing and units
    "ModelShape": "engine.sizing",
    "FitReport": "engine.sizing",
    "estimate_fit": "engine.sizing",
    "Machine": "engine.sizing",
    "ModelFit": "engine.sizing",
    "check_text_length": "engine.sizing",
    "memory_in_use": "engine.memory",
    "GIB": "engine.units",
    "format_bytes": "engine.units",
    "parse_size": "engine.units",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

