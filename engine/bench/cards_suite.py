"""cards: which catalog model fits which NVIDIA card, computed by the fit check (engine.choices.card_table), not
measured: per card size (GB as marketed, less the CUDA context) and document length, the highest precision whose
weights and the document's device memory fit, that device memory, and the model Folio recommends on that card.
RAM is not limiting here (the offloaded K/V and index of a 128K document of an 8B model take about 20 GiB of it).

    python -m engine.bench cards [--cards 8,12,16,24]
"""

from __future__ import annotations

import argparse

from engine.choices import card_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cards", default="8,12,16,24", help="comma list of card sizes in GB")


def run(args: argparse.Namespace, report) -> None:
    cards = [int(c) for c in args.cards.split(",") if c.strip()]
    report.note("computed by engine.sizing's fit check, not measured; weights: the highest precision that fits "
                "(full = bfloat16); device_gib: weights plus the document's device memory (static set, prefill "
                "hidden states and one layer's K/V, one index build's exact top-k)")
    for row in card_table(cards):
        report.add(card_gb=row["card_gb"], model=row["model"], tokens=row["tokens"], weights=row["weights"],
                   device_gib=row["device_gib"], recommended="yes" if row["recommended"] else "")
