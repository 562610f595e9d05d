"""Suite `fingerprint`: what the model identity (engine.fingerprint) costs at open for a folder of a given size.

Makes a model folder of --gib GiB in --shards weight files (real, non-sparse bytes) under --folder, then times
model_fingerprint: the first open with the files not in the page cache (dropped with posix_fadvise), the first open
with them cached, later opens (the remembered hashes), a shard rewritten (hashed again), and a hub download seen for
the first time (its blob names are its hashes). The folder is removed afterwards unless --keep.

    python -m engine.bench fingerprint --folder /tmp/fp --gib 16 --shards 4
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

CHUNK = 64 * 2**20


def add_arguments(parser) -> None:
    parser.add_argument("--folder", help="where to make the model folder (default: a temporary folder)")
    parser.add_argument("--gib", type=float, default=1.0, help="total size of the weight files (8B model: 16)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--later-opens", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the folder")


def make_model_folder(folder: Path, total_bytes: int, shards: int) -> list[Path]:
    """config.json and `shards` weight files of total_bytes together (pseudo-random bytes, written, not sparse)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 32}))
    block = os.urandom(CHUNK)
    paths = []
    for index in range(shards):
        path = folder / f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        remaining = total_bytes // shards
        with open(path, "wb") as handle:
            while remaining > 0:
                piece = block[: min(CHUNK, remaining)]
                handle.write(bytes([index]) + piece[1:])  # shards differ
                remaining -= len(piece)
        paths.append(path)
    return paths


def drop_from_page_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(args, report) -> None:
    from engine import fingerprint

    base = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="folio-fingerprint-"))
    model, cache, hub = base / "model", base / "cache", base / "hub"
    os.environ["FOLIO_CACHE_DIR"] = str(cache)  # the remembered hashes of this run only
    total = int(args.gib * 2**30)
    try:
        started = time.perf_counter()
        paths = make_model_folder(model, total, args.shards)
        print(f"made {len(paths)} files, {total / 2**30:.1f} GiB, in {time.perf_counter() - started:.0f} s")

        def timed(case: str, hashed_bytes: int, prepare=None) -> None:
            if prepare:
                prepare()
            begin = time.perf_counter()
            fingerprint.model_fingerprint(model)
            seconds = time.perf_counter() - begin
            report.add(case=case, gib=round(total / 2**30, 2), shards=args.shards,
                       hashed_gib=round(hashed_bytes / 2**30, 2), seconds=round(seconds, 4),
                       hashed_gib_per_s=round(hashed_bytes / 2**30 / seconds, 2) if hashed_bytes else None)

        def forget() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        shard = paths[0].stat().st_size
        timed("first open, files not in the page cache", total, lambda: (forget(), drop_from_page_cache(paths)))
        timed("first open, files in the page cache", total, forget)
        for number in range(args.later_opens):
            timed(f"later open {number + 1} (remembered)", 0)
        timed("after one shard is rewritten", shard, lambda: os.utime(paths[0]))
        # A hub download: each weight file a link to blobs/<sha256>, seen for the first time.
        blobs = hub / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        for path in paths:
            sha = fingerprint.file_sha256(path)
            path.rename(blobs / sha)
            path.symlink_to(blobs / sha)
        timed("first open of a hub download (blob names)", 0, forget)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
