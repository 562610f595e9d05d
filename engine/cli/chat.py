"""`python -m engine chat DOCUMENT|@ID [--chat ID]`: an interactive chat about a document.

Each line is a question; follow-ups see the earlier turns. /new starts a new chat, /regen answers the last question
again, /export FILE writes the chat as Markdown, /help lists the commands. Ctrl+C stops an answer (the part said so
far is kept), Ctrl+D leaves. The chat is kept in the library (unless --no-cache); `--chat ID` continues one.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.cli.options import config_from_args
from engine.errors import CancelledError, FolioError
from engine.events import CancelToken, Progress, ProgressPrinter

HELP = ("Type a question and press Enter. Commands: /new (a new chat on this document), /regen (answer the last "
        "question again), /export FILE (the chat as Markdown), /help, /quit. Ctrl+C stops an answer, Ctrl+D leaves.")


def open_document(args: argparse.Namespace, store):
    """The document of `args.document`: a file, or @ID from the library."""
    from engine.ingest import read_document

    if args.document.startswith("@") and args.document[1:].isdigit():
        if store is None:
            raise FolioError("@ID names a library document, and --no-cache leaves the library out.",
                             "Drop --no-cache, or give the document's file.")
        return store.load_document(int(args.document[1:]))
    return read_document(args.document)


def stream(events: Iterator, out=sys.stdout, progress: Callable[[Progress], None] | None = None):
    """Print an answer's tokens as they come; returns the Finished event."""
    from engine.generate import Finished, TokenEvent

    finished = None
    for event in events:
        if isinstance(event, Progress):
            if progress:
                progress(event)
        elif isinstance(event, TokenEvent):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Finished):
            finished = event
    return finished


def chat_command(args: argparse.Namespace) -> int:
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store

    config = config_from_args(args)
    store = None if args.no_cache else Store()
    document = open_document(args, store)
    progress = ProgressPrinter()
    loaded = load_model(config.model, config.device, config.dtype, progress, weights=config.weights,
                        cpu_weights=config.cpu_weights)
    session = DocumentSession(loaded, document, config, store)
    chat = session.chat(args.chat)
    print(f"Chat about {document.title} ({session.document_tokens:,} tokens) with {loaded.name}. {HELP}",
          file=sys.stderr)
    if chat.turns:
        print(f"Continuing chat {chat.id}: {chat.title}", file=sys.stderr)
        for turn in chat.turns:
            print(f"> {turn.question}\n{turn.answer.text}\n")
        if chat.problem:
            print(f"{chat.problem} Type /new to start a new chat.", file=sys.stderr)
    prompt = "> " if sys.stdin.isatty() else ""
    while True:
        try:
            line = input(prompt).strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl+D or /quit leaves)", file=sys.stderr)
            continue
        if not line:
            continue
        command, _, argument = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                print(HELP, file=sys.stderr)
            elif command == "/new":
                chat = session.chat()
                print("New chat: the earlier turns are left out (the document stays cached).", file=sys.stderr)
            elif command == "/export":
                if not argument.strip():
                    print("Give a file name: /export chat.md", file=sys.stderr)
                    continue
                path = Path(argument.strip()).expanduser()
                path.write_text(chat.to_markdown(), encoding="utf-8")
                print(f"Wrote {len(chat.turns)} turn(s) to {path}", file=sys.stderr)
            elif command == "/regen":
                _answer(chat, chat.regenerate, progress)
            elif command.startswith("/"):
                print(f"Unknown command {command}. {HELP}", file=sys.stderr)
            else:
                _answer(chat, functools.partial(chat.ask, line), progress)
        except FolioError as error:
            print(f"error: {error}", file=sys.stderr)
        except OSError as error:
            print(f"error: {error.strerror or error}: {getattr(error, 'filename', '')}", file=sys.stderr)


def _answer(chat, start: Callable[..., Iterator], progress) -> None:
    """Stream one answer; Ctrl+C stops it (at the next token) instead of leaving."""
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    try:
        finished = stream(start(cancel=cancel), progress=progress)
    except CancelledError:
        print("\n[stopped]", file=sys.stderr)
        return
    finally:
        signal.signal(signal.SIGINT, previous)
    print()
    stats = finished.stats
    where = f"chat {chat.id}" if chat.id is not None else "chat (not stored)"
    print(f"[{where}, turn {len(chat.turns)}: {chat.tokens_used:,} of {chat.context_max:,} tokens, "
          f"{stats.prefill_tokens:,} prefilled, first token {stats.ttft_s:.2f} s, "
          f"{stats.decode_tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    for notice in [*chat.session.cache_notices, *chat.notices]:
        print(notice, file=sys.stderr)
    chat.session.cache_notices.clear()  # said once
    chat.notices.clear()
