"""Command line: `python -m engine ask DOCUMENT "QUESTION"`, `python -m engine chat DOCUMENT`,
`python -m engine library ...`, `python -m engine models ...` and `python -m engine setup`. One module per command;
this one parses and dispatches."""

from __future__ import annotations

import argparse
import sys

from engine.cli.ask import ask_command
from engine.cli.chat import chat_command
from engine.cli.library import library_command
from engine.cli.models import add_models_parser, models_command
from engine.cli.options import add_model_arguments
from engine.config import EngineConfig
from engine.errors import FolioError
from engine.events import ProgressPrinter


def build_parser() -> argparse.ArgumentParser:
    defaults = EngineConfig()
    parser = argparse.ArgumentParser(prog="python -m engine", description="Folio engine command line.")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question about a whole document, streaming")
    ask.add_argument("document", help="a PDF or text/Markdown file, or @ID for a library document")
    ask.add_argument("question")
    add_model_arguments(ask)
    ask.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    ask.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=float, default=defaults.top_p)
    ask.add_argument("--json", action="store_true", help="print one JSON object with the answer and stats")
    ask.add_argument("--no-cache", action="store_true",
                     help="leave the document library out: no stored KV caches, the chat is not kept")
    ask.add_argument("--chat", type=int, metavar="ID",
                     help="continue the library's chat ID (see `library chats DOCUMENT_ID`); else a new chat")

    chat = commands.add_parser("chat", help="an interactive chat about a document: follow-up questions, /new, "
                                            "/regen, /export FILE; Ctrl+C stops an answer, Ctrl+D leaves")
    chat.add_argument("document", help="a PDF or text/Markdown file, or @ID for a library document")
    chat.add_argument("--chat", type=int, metavar="ID", help="continue the library's chat ID")
    add_model_arguments(chat)
    chat.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    chat.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy (default)")
    chat.add_argument("--top-p", type=float, default=defaults.top_p)
    chat.add_argument("--no-cache", action="store_true", help="leave the document library out (nothing is kept)")

    library = commands.add_parser("library", help="the stored documents and their KV caches")
    verbs = library.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="documents, cache sizes and disk use")
    listing.add_argument("--json", action="store_true")
    add = verbs.add_parser("add", help="ingest a document: prefill it, build its index and store both")
    add.add_argument("document", help="a PDF or text/Markdown file")
    add_model_arguments(add)
    add.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                     help="answer room reserved in the context")
    chats = verbs.add_parser("chats", help="the chats about a document")
    chats.add_argument("id", type=int, help="the document's id (see `library list`)")
    chats.add_argument("--json", action="store_true")
    export = verbs.add_parser("export", help="write a chat as Markdown (questions, answers, sources with pages)")
    export.add_argument("chat", type=int, help="the chat's id (see `library chats DOCUMENT_ID`)")
    export.add_argument("file", nargs="?", help="the Markdown file to write (default: print it)")
    remove = verbs.add_parser("remove", help="delete a document, its chats and its cache files")
    remove.add_argument("id", type=int)
    verbs.add_parser("path", help="print the folder where the library lives")
    verbs.add_parser("reset", help="start a new library when folio.db is damaged (a copy of it is kept)")
    budget = verbs.add_parser("budget", help="show or set the disk budget for caches (LRU eviction)")
    budget.add_argument("size", nargs="?", help="e.g. 50GiB or 500MB")

    add_models_parser(commands)
    commands.add_parser("setup", help="fetch and convert the default model (once)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "setup":
            return _setup()
        if args.command == "library":
            return library_command(args)
        if args.command == "models":
            return models_command(args)
        if args.command == "chat":
            return chat_command(args)
        return ask_command(args)
    except FolioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # invalid settings (EngineConfig validation)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130


def _setup() -> int:
    from engine.default_model import ensure_default_model

    path = ensure_default_model(ProgressPrinter())
    print(f"default model ready in {path}", file=sys.stderr)
    return 0


