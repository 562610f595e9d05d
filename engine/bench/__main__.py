"""`python -m engine.bench <suite> [--json-out FILE] [suite options]`.

Each suite is a module of engine.bench exposing `add_arguments(parser)` and `run(args, report)`;
rows go into an engine.bench.report.Report, printed as a table and optionally written as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.bench.report import Report

SUITES: dict[str, str] = {
    "index": "engine.bench.index_suite",
    "reopen": "engine.bench.reopen_suite",
    "decode": "engine.bench.decode_suite",
    "needle": "engine.bench.needle_suite",
    "fidelity": "engine.bench.fidelity_suite",
    "memory": "engine.bench.gpu_suite",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="suite", required=True, metavar="suite")
    modules = {}
    for name, module_name in SUITES.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        doc = (module.__doc__ or name).strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=doc, description=module.__doc__)
        sub.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON to FILE")
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    report = Report(args.suite)
    try:
        modules[args.suite].run(args, report)
    finally:
        if report.rows:
            report.print_table()
            if args.json_out:
                report.write_json(args.json_out)
                print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
