"""`python -m engine models list|pull ID|remove ID|token`: the model catalog from a shell: what fits this machine,
downloads with progress (Ctrl+C cancels; a later pull resumes), removal, and the hub access token for gated models."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from engine import hub
from engine.catalog import find_entry, load_catalog
from engine.choices import machine_now, model_choices
from engine.default_model import ensure_default_model
from engine.errors import ModelError
from engine.events import ProgressPrinter
from engine.units import format_bytes


def add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="the model catalog: list, pull, remove, and the hub token")
    verbs = models.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="catalog models, installed or not, and what fits this machine")
    listing.add_argument("--json", action="store_true")
    pull = verbs.add_parser("pull", help="download a model (catalog id or hub id) into the Hugging Face cache")
    pull.add_argument("id")
    remove = verbs.add_parser("remove", help="delete a downloaded model from the Hugging Face cache")
    remove.add_argument("id")
    token = verbs.add_parser("token", help="store the hub access token for gated models (read without echo)")
    token.add_argument("--clear", action="store_true", help="forget the stored token")


def models_command(args: argparse.Namespace) -> int:
    if args.verb == "list":
        return _list(args.json)
    if args.verb == "token":
        if args.clear:
            hub.save_hub_token("")
            print("hub token removed", file=sys.stderr)
        else:
            path = hub.save_hub_token(getpass.getpass("Hub access token (hidden): ") if sys.stdin.isatty()
                                  else sys.stdin.readline())
            print(f"hub token stored in {path} (readable by you only)", file=sys.stderr)
        return 0
    entry = find_entry(args.id)
    if args.verb == "pull":
        if entry is not None and entry.bundled:
            path = ensure_default_model(ProgressPrinter())
        else:
            path = hub.pull_model(entry.hub_id if entry else args.id, ProgressPrinter())
        print(path)
        return 0
    if entry is not None and entry.bundled:
        raise ModelError("The bundled model cannot be removed: it is what Folio runs offline.",
                         "Remove a downloaded model instead.")
    freed = hub.remove_model(entry.hub_id if entry else args.id)
    if not freed:
        print(f"{args.id} is not downloaded.", file=sys.stderr)
        return 1
    print(f"removed {args.id} ({format_bytes(freed)} freed)", file=sys.stderr)
    return 0


def _list(as_json: bool) -> int:
    machine = machine_now()
    choices = model_choices(machine, load_catalog())
    if as_json:
        print(json.dumps({"machine": machine.name, "models": [{
            "id": c.entry.id, "hub_id": c.entry.hub_id, "parameters": c.entry.parameters,
            "context": c.entry.context, "licence": c.entry.licence, "gated": c.entry.gated,
            "installed": c.installed, "download_bytes": c.entry.download_bytes,
            "recommended_weights": c.recommended_weights,
            "fits": [{"weights": f.weights, "tokens": f.tokens, "fits": f.fits, "device_bytes": f.device_bytes,
                      "ram_bytes": f.ram_bytes, "problems": list(f.problems)} for f in c.fits],
        } for c in choices]}, indent=2))
        return 0
    print(f"On this machine: {machine.name}")
    print(f"{'':2}{'id':26}{'params':>8}{'context':>9}  {'installed':10}"
          f"{'best fit (document tokens: weights)':38}licence")
    for choice in choices:
        entry = choice.entry
        fits = ", ".join(f"{t // 1024}K: {choice.best_weights(t) or 'no'}" for t in choice.lengths())
        installed = "yes" if choice.installed else format_bytes(entry.download_bytes)
        licence = entry.licence + (" (gated)" if entry.gated else "")
        mark = "* " if choice.recommended else "  "
        print(f"{mark}{entry.id:26}{entry.parameters / 1e9:>7.2f}B{entry.context:>9,}  {installed:10}"
              f"{fits:38}{licence}")
    recommended = next((c for c in choices if c.recommended), None)
    if recommended is not None:
        print(f"* recommended here: {recommended.entry.id} with {recommended.recommended_weights} weights "
              f"(python -m engine ask DOCUMENT QUESTION --model {recommended.entry.id} "
              f"--weights {recommended.recommended_weights})")
    return 0
