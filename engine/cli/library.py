"""`python -m engine library list|add FILE|chats ID|export CHAT [FILE]|remove ID|path|budget [SIZE]|reset`: the
document library from a shell."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from engine.cli.options import config_from_args
from engine.store import Store
from engine.units import format_bytes, parse_size


def library_command(args: argparse.Namespace) -> int:
    """Run one `library` verb; returns the exit code (FolioErrors are reported by engine.cli.main)."""
    if args.verb == "path":
        from engine.store import data_dir

        print(data_dir())
        return 0
    if args.verb == "reset":
        from engine.store import data_dir, reset_damaged_library

        copy = reset_damaged_library(data_dir())
        kept = f"; the damaged file is kept in {copy}" if copy else ""
        print(f"started a new library in {data_dir()}{kept}")
        return 0
    with Store() as store:
        for notice in store.notices:
            print(notice, file=sys.stderr)
        if args.verb == "list":
            return _list(store, args.json)
        if args.verb == "chats":
            return _chats(store, args.id, args.json)
        if args.verb == "export":
            return _export(store, args.chat, args.file)
        if args.verb == "remove":
            if not store.delete_document(args.id):
                print(f"error: the library has no document {args.id}.", file=sys.stderr)
                return 2
            print(f"removed document {args.id}, its chats and its cache files")
            return 0
        if args.verb == "budget":
            if args.size:
                try:
                    store.set_budget(parse_size(args.size))
                except ValueError as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 2
                evicted = store.make_room(0)
                if evicted:
                    print(f"removed {len(evicted)} least recently used cache(s) to fit", file=sys.stderr)
            print(f"disk budget {format_bytes(store.budget_bytes)}, used {format_bytes(store.used_bytes())}")
            return 0
        return _add(store, args)


def _list(store: Store, as_json: bool) -> int:
    documents = store.list_documents()
    if as_json:
        print(json.dumps({"data_dir": str(store.root), "budget_bytes": store.budget_bytes,
                          "used_bytes": store.used_bytes(),
                          "documents": [{**vars(d), "cached": d.cached} for d in documents]}, indent=2))
        return 0
    print(f"{'id':>4}  {'title':<32} {'pages':>5} {'tokens':>8}  {'cache':>12}  last used")
    for d in documents:
        cache = format_bytes(d.cache_bytes) if d.cached else "not cached"
        used = dt.datetime.fromtimestamp(d.last_used_at).strftime("%Y-%m-%d %H:%M")
        tokens = f"{d.tokens:,}" if d.tokens is not None else "?"
        print(f"{d.id:>4}  {d.title[:32]:<32} {d.pages:>5} {tokens:>8}  {cache:>12}  {used}")
    print(f"{len(documents)} document(s); caches use {format_bytes(store.used_bytes())} of a "
          f"{format_bytes(store.budget_bytes)} budget; data in {store.root}")
    return 0


def _chats(store: Store, doc_id: int, as_json: bool) -> int:
    from engine.chat_store import list_chats

    if store.get_document(doc_id) is None:
        print(f"error: the library has no document {doc_id}. List them with `library list`.", file=sys.stderr)
        return 2
    chats = list_chats(store, doc_id)
    if as_json:
        print(json.dumps([vars(c) for c in chats], indent=2))
        return 0
    print(f"{'id':>4}  {'title':<40} {'turns':>5}  {'model':<24} last answer")
    for c in chats:
        used = dt.datetime.fromtimestamp(c.updated_at).strftime("%Y-%m-%d %H:%M")
        print(f"{c.id:>4}  {c.title[:40]:<40} {c.turns:>5}  {c.model_name[:24]:<24} {used}")
    print(f"{len(chats)} chat(s); continue one with `python -m engine chat @{doc_id} --chat ID`")
    return 0


def _export(store: Store, chat_id: int, file: str | None) -> int:
    from pathlib import Path

    from engine.chat import chat_markdown
    from engine.chat_store import load_chat

    record = load_chat(store, chat_id)
    markdown = chat_markdown(record, store.load_document(record.document_id))
    if file is None:
        sys.stdout.write(markdown)
        return 0
    Path(file).expanduser().write_text(markdown, encoding="utf-8")
    print(f"wrote chat {chat_id} ({len(record.turns)} turn(s)) to {file}", file=sys.stderr)
    return 0


def _add(store: Store, args: argparse.Namespace) -> int:
    from engine.events import ProgressPrinter
    from engine.ingest import read_document
    from engine.model import load_model
    from engine.session import DocumentSession

    config = config_from_args(args)
    document = read_document(args.document)
    progress = ProgressPrinter()
    loaded = load_model(config.model, config.device, config.dtype, progress, weights=config.weights,
                            cpu_weights=config.cpu_weights)
    session = DocumentSession(loaded, document, config)  # raises ContextTooLongError before storing anything
    if not session.uses_retrieval:
        doc_id = store.add_document(document, session.prompt.doc_token_end - session.prompt.doc_token_start)
        print(f"added document {doc_id} (full attention: no cache is stored)")
        return 0
    session.store = store
    for event in session.prepare():
        progress(event)
    if session.cache_notice:
        print(session.cache_notice, file=sys.stderr)
    doc_id = store.find_document(document.sha256)
    state = "cached" if session.cache_bytes else "not cached"
    print(f"added document {doc_id}: {session.prefix_tokens:,} tokens, {state} "
          f"({format_bytes(session.cache_bytes)})")
    return 0
