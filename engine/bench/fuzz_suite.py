"""Suite `fuzz`: mutated PDFs and texts through `engine.ingest.read_document`. Every input must end in a Document
(with or without warnings) or a DocumentError; anything else is a failure, listed with the input's number so that
`fuzz_input(seed, number)` makes it again (--keep-failures writes them out). Seeded: the same --seed gives the same
inputs.

    python -m engine.bench fuzz --inputs 10000 [--seed 0] [--keep-failures DIR] [--json-out FILE]
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT = ("The lighthouse on Varnholm was lit in 1865. Keepers recorded the weather three times a day;\n"
        "the light never failed in the storm. Été, naïve, Ærø — and 灯台 in other scripts.\n")
PDF_TOKENS = [b"obj", b"endobj", b"stream", b"endstream", b"xref", b"trailer", b"startxref", b"/Kids", b"/Count",
              b"/Parent", b"/Pages", b"/Page", b"/Length", b"/Root", b"/Contents", b"/Type", b"/Filter",
              b"/FlateDecode", b"R", b"<<", b">>", b"[", b"]", b"null", b"%%EOF", b"/Encrypt", b"/Prev", b"/Size"]
NUMBER = re.compile(rb"\d+")
REFERENCE = re.compile(rb"\d+ 0 R")


@dataclass(frozen=True)
class FuzzResult:
    """What read_document did with one input: outcome is accepted, warned (accepted with warnings), refused
    (a DocumentError) or failed (any other exception: a bug)."""

    number: int
    suffix: str
    seed_name: str
    outcome: str
    seconds: float
    detail: str = ""


def seed_documents() -> list[tuple[str, str, bytes]]:
    """(name, suffix, bytes) of the well-formed files the inputs are mutated from."""
    import pymupdf

    def pdf(pages: list[str], **save) -> bytes:
        document = pymupdf.open()
        for text in pages:
            page = document.new_page()
            if text:
                page.insert_text((72, 72), text)
        document.set_metadata({"title": "Varnholm"})
        document.set_toc([[1, "Start", 1]])
        return document.tobytes(**save)

    lines = TEXT.splitlines()
    seeds = [
        ("pdf-1-page", ".pdf", pdf([lines[0]])),
        ("pdf-3-pages", ".pdf", pdf([lines[0], lines[1], lines[0]])),
        ("pdf-deflated", ".pdf", pdf([lines[0], lines[1]], deflate=True)),
        ("pdf-object-streams", ".pdf", pdf([lines[0], "", lines[1]], deflate=True, garbage=4, use_objstms=1)),
        ("pdf-encrypted", ".pdf", pdf([lines[0]], encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u",
                                      owner_pw="o")),
        ("pdf-hand-made", ".pdf", _hand_made_pdf(lines[0])),
        ("text-utf8", ".txt", (TEXT * 4).encode()),
        ("markdown-crlf", ".md", ("# Varnholm\r\n\r\n" + TEXT * 3).replace("\n", "\r\n").encode()),
        ("text-utf16-bom", ".txt", "\ufeff".encode("utf-16-le") + (TEXT * 2).encode("utf-16-le")),
        ("text-utf16-be", ".txt", (TEXT * 2).encode("utf-16-be")),
        ("text-utf8-bom", ".txt", b"\xef\xbb\xbf" + (TEXT * 2).encode()),
    ]
    return seeds


def _hand_made_pdf(text: str) -> bytes:
    """An uncompressed PDF written object by object (its structure is plain text, which mutations can hit)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text[:60]}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R 6 0 R] /Count 2 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>"]
    return pdf_from_objects(objects)


# -- mutations: each takes (data, rng, seeds) and returns new bytes ------------------------------------------------
def _flip_bits(data: bytes, rng: random.Random, _seeds) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite(data: bytes, rng: random.Random, _seeds) -> bytes:
    start = rng.randrange(max(len(data), 1))
    return data[:start] + rng.randbytes(rng.randint(1, 64)) + data[start + rng.randint(1, 64):]


def _truncate(data: bytes, rng: random.Random, _seeds) -> bytes:
    return data[: rng.randrange(max(len(data), 1))]


def _delete_chunk(data: bytes, rng: random.Random, _seeds) -> bytes:
    start = rng.randrange(max(len(data), 1))
    return data[:start] + data[start + rng.randint(1, max(1, len(data) // 4)):]


def _duplicate_chunk(data: bytes, rng: random.Random, _seeds) -> bytes:
    start = rng.randrange(max(len(data), 1))
    chunk = data[start: start + rng.randint(1, 256)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + chunk * rng.randint(1, 4) + data[at:]


def _insert_random(data: bytes, rng: random.Random, _seeds) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 128)) + data[at:]


def _swap_token(data: bytes, rng: random.Random, _seeds) -> bytes:
    """A PDF keyword replaced by another (structure broken in a way a parser meets)."""
    old, new = rng.choice(PDF_TOKENS), rng.choice(PDF_TOKENS)
    places = [m.start() for m in re.finditer(re.escape(old), data)]
    if not places:
        return data
    at = rng.choice(places)
    return data[:at] + new + data[at + len(old):]


def _change_number(data: bytes, rng: random.Random, _seeds) -> bytes:
    """A number changed: an object number, a /Length, a /Count, an xref offset."""
    numbers = list(NUMBER.finditer(data))
    if not numbers:
        return data
    match = rng.choice(numbers)
    value = rng.choice([0, 1, 2, 3, 7, 2**31, 10**12, int(match.group()) + rng.randint(-3, 3)])
    return data[: match.start()] + str(max(value, 0)).encode() + data[match.end():]


def _redirect_reference(data: bytes, rng: random.Random, _seeds) -> bytes:
    """An indirect reference pointed at another object (page-tree cycles, pages that are fonts...)."""
    references = list(REFERENCE.finditer(data))
    if not references:
        return data
    match = rng.choice(references)
    return data[: match.start()] + f"{rng.randint(0, 8)} 0 R".encode() + data[match.end():]


def _splice(data: bytes, rng: random.Random, seeds) -> bytes:
    _, _, other = rng.choice(seeds)
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


MUTATIONS: list[Callable[[bytes, random.Random, list], bytes]] = [
    _flip_bits, _overwrite, _truncate, _delete_chunk, _duplicate_chunk, _insert_random, _swap_token, _change_number,
    _redirect_reference, _splice]


def fuzz_input(seed: int, number: int, seeds: list[tuple[str, str, bytes]]) -> tuple[str, str, bytes]:
    """Input `number` of run `seed`: (seed document's name, suffix, mutated bytes); the same arguments give the same
    bytes."""
    rng = random.Random(f"{seed}:{number}")
    name, suffix, data = seeds[number % len(seeds)]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATIONS)(data, rng, seeds)
    return name, suffix, data


def fuzz_inputs(count: int, seed: int = 0) -> Iterator[tuple[int, str, str, bytes]]:
    """(number, seed document's name, suffix, bytes) of `count` inputs."""
    seeds = seed_documents()
    for number in range(count):
        yield (number, *fuzz_input(seed, number, seeds))


def read_one(path: Path, number: int, seed_name: str) -> FuzzResult:
    """Run read_document on one input and classify what happened."""
    from engine.errors import DocumentError
    from engine.ingest import read_document

    started = time.perf_counter()
    try:
        document = read_document(path)
        outcome, detail = ("warned", document.warnings[0]) if document.warnings else ("accepted", "")
    except DocumentError as error:
        outcome, detail = "refused", str(error)
    except Exception as error:  # the bug this suite looks for: an error that is not the project's own
        outcome, detail = "failed", f"{type(error).__module__}.{type(error).__name__}: {error}"
    return FuzzResult(number, path.suffix, seed_name, outcome, time.perf_counter() - started, detail)


def run_fuzz(count: int, seed: int = 0, folder: Path | None = None) -> list[FuzzResult]:
    """Every input written to a file in `folder` (a temporary one by default) and read back."""
    results = []
    with tempfile.TemporaryDirectory(prefix="folio-fuzz-") as scratch:
        folder = Path(folder or scratch)
        for number, seed_name, suffix, data in fuzz_inputs(count, seed):
            path = folder / f"input-{number}{suffix}"
            path.write_bytes(data)
            results.append(read_one(path, number, seed_name))
            path.unlink()
    return results


def add_arguments(parser) -> None:
    parser.add_argument("--inputs", type=int, default=1000, help="how many mutated files to read (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-failures", metavar="DIR", help="write the inputs that failed into DIR")


def run(args, report) -> None:
    started = time.perf_counter()
    results = run_fuzz(args.inputs, args.seed)
    elapsed = time.perf_counter() - started
    for kind, suffixes in (("pdf", {".pdf"}), ("text", {".txt", ".md"})):
        rows = [r for r in results if r.suffix in suffixes]
        counts = Counter(r.outcome for r in rows)
        report.add(kind=kind, inputs=len(rows), accepted=counts["accepted"], warned=counts["warned"],
                   refused=counts["refused"], failed=counts["failed"],
                   max_ms=round(1000 * max((r.seconds for r in rows), default=0), 1),
                   mean_ms=round(1000 * sum(r.seconds for r in rows) / max(len(rows), 1), 2), seed=args.seed,
                   total_s=round(elapsed, 1))
    failures = [r for r in results if r.outcome == "failed"]
    for failure in failures:
        print(f"FAILED input {failure.number} (from {failure.seed_name}): {failure.detail}", file=sys.stderr)
    if failures and args.keep_failures:
        folder = Path(args.keep_failures)
        folder.mkdir(parents=True, exist_ok=True)
        seeds = seed_documents()
        for failure in failures:
            _, suffix, data = fuzz_input(args.seed, failure.number, seeds)
            (folder / f"input-{failure.number}{suffix}").write_bytes(data)
    refusals = Counter(re.sub(r"^\S+ ", "", r.detail.split(" (")[0]) for r in results if r.outcome == "refused")
    print("most common refusals: " + "; ".join(f"{n} x {text[:70]}" for text, n in refusals.most_common(6)),
          file=sys.stderr)


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF with these objects (numbered from 1; object 1 is the catalog) and a correct xref table."""
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out
