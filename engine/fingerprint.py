"""The identity of a model and a tokenizer, which the library's caches are keyed by (engine.persist.CacheIdentity).

A model's fingerprint is a sha256 over its config and every weight file's name, size and full-content sha256, so it
changes whenever any weight changes. Hashing 16 GB at every open would take a minute, so each file's sha256 is
remembered in FOLIO_CACHE_DIR/weight-hashes.json under its path and the file's identity as the file system sees it
(device, inode, size, modification and change time; a program can set the modification time back, not the change
time). A file written to in any way gets a new identity and is hashed again. A file in the Hugging Face hub's cache
is a link to blobs/<sha256 of its bytes>: the first time Folio sees it that name is its hash, so a hub download is
never read for it; once seen, a change to it is hashed like any other file's. What this costs at open for an 8B model
is in docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.arrays import file_identity, file_sha256
from engine.default_model import cache_dir
from engine.weights import weight_files

HASHES_FILE = "weight-hashes.json"
HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")  # an LFS blob in the hub's cache is named by its sha256


def model_fingerprint(path: Path) -> str:
    """sha256 over the model folder's config and, per weight file, its name, size and full sha256."""
    digest = hashlib.sha256()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    digest.update(json.dumps(config, sort_keys=True).encode())
    remembered = _load_remembered()
    before = dict(remembered)
    weights = weight_files(path)
    with ThreadPoolExecutor(max(1, min(len(weights), os.cpu_count() or 1, 4))) as pool:  # hashlib frees the GIL
        hashes = list(pool.map(lambda weight: _weight_sha256(weight, remembered), weights))
    for weight, (size, sha) in zip(weights, hashes, strict=True):
        digest.update(f"{weight.name}\0{size}\0{sha}\0".encode())
    if remembered != before:
        _save_remembered(remembered)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary, special tokens and chat template: what turns text into prompt ids."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: vocab, merges, normalizer
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest.update(vocab.encode())
    digest.update(json.dumps(tokenizer.all_special_tokens).encode())
    digest.update((tokenizer.chat_template or "").encode())
    return digest.hexdigest()


def _weight_sha256(weight: Path, remembered: dict[str, dict]) -> tuple[int, str]:
    """(size, sha256) of one weight file: remembered, the hub's blob name, or hashed now (and remembered)."""
    resolved = weight.resolve()
    key, size = file_identity(resolved), resolved.stat().st_size
    entry = remembered.get(str(resolved))
    if entry is not None and entry.get("key") == key:
        return size, entry["sha256"]
    first_sight = entry is None
    if first_sight and resolved.parent.name == "blobs" and HUB_BLOB.match(resolved.name):
        sha = resolved.name
    else:
        sha = file_sha256(resolved)
    remembered[str(resolved)] = {"key": key, "sha256": sha}
    return size, sha


def _remembered_path() -> Path:
    return cache_dir() / HASHES_FILE


def _load_remembered() -> dict[str, dict]:
    try:
        data = json.loads(_remembered_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # none yet, unreadable or damaged: hash again
        return {}


def _save_remembered(remembered: dict[str, dict]) -> None:
    """Write the remembered hashes (of files that still exist) atomically; a failure only costs a hash later."""
    path = _remembered_path()
    kept = {name: entry for name, entry in remembered.items() if os.path.exists(name)}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(kept, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
