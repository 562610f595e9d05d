"""Array files of the library: .npy written crash-safely and read back memory-mapped after checks.

Writing: `<name>.tmp` is written (hashing the bytes as they go), flushed and fsynced, then renamed
to `<name>`; `sync_folder` makes the renames durable. A reader never sees a half-written `<name>`.
Reading: size, sha256 (when asked), dtype and shape are checked against the FileRecord made at write
time before the array is used; any difference raises DamagedFileError with a reason for people.
Never pickles: allow_pickle=False everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HASH_CHUNK = 8 << 20
TMP_SUFFIX = ".tmp"
MMAP_MIN_BYTES = 1 << 16


class DamagedFileError(Exception):
    """A stored file is missing, truncated, or differs from its record (str: the reason)."""


@dataclass(frozen=True)
class FileRecord:
    """What was written: name (relative to its folder), size in bytes, sha256 of the bytes, dtype, shape."""

    name: str
    bytes: int
    sha256: str
    dtype: str
    shape: tuple[int, ...]

    def to_row(self, owner: str) -> dict:
        return {"owner": owner, "name": self.name, "bytes": self.bytes, "sha256": self.sha256,
                "dtype": self.dtype, "shape": json.dumps(list(self.shape))}

    @classmethod
    def from_row(cls, row: dict) -> FileRecord:
        return cls(row["name"], int(row["bytes"]), row["sha256"], row["dtype"], tuple(json.loads(row["shape"])))


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, handle) -> None:
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self.handle.write(view)


def npy_bytes(array: np.ndarray) -> int:
    """About the size of `array` as a .npy file: its data plus a header (128 bytes for usual shapes)."""
    return int(array.nbytes) + 128


def write_array(folder: Path, name: str, array: np.ndarray) -> FileRecord:
    """Write `array` to folder/name as .npy via a fsynced temporary file; return its record.

    On any error (ENOSPC included) the temporary file is removed and the error re-raised; an
    existing folder/name is never touched before the rename.
    """
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # (which makes 0-d 1-d)
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be stored (no pickling)")
    final, tmp = folder / name, folder / (name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            np.lib.format.write_array(writer, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileRecord(name, writer.size, writer.digest.hexdigest(), array.dtype.str, tuple(array.shape))



def sync_folder(folder: Path) -> None:
    """fsync a folder so the renames in it survive a power cut (no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_size(folder: Path, record: FileRecord) -> None:
    """Raise DamagedFileError unless folder/record.name exists with the recorded size."""
    path = folder / record.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DamagedFileError(f"{record.name} is missing") from None
    if size < record.bytes:
        raise DamagedFileError(f"{record.name} is truncated ({size:,} of {record.bytes:,} bytes)")
    if size != record.bytes:
        raise DamagedFileError(f"{record.name} has {size:,} bytes instead of {record.bytes:,}")


def verify_files(folder: Path, records: list[FileRecord], full_hash: bool = True, threads: int = 4) -> None:
    """Check every file's size, and (full_hash) its sha256, in parallel; raise DamagedFileError on the first bad."""
    for record in records:
        check_size(folder, record)
    if not full_hash:
        return

    def check(record: FileRecord) -> None:
        if file_sha256(folder / record.name) != record.sha256:
            raise DamagedFileError(f"{record.name} does not match its checksum (its content changed)")

    with ThreadPoolExecutor(max(1, min(threads, len(records)))) as pool:
        for _ in pool.map(check, records):
            pass


def load_array(folder: Path, record: FileRecord) -> np.ndarray:
    """Memory-map folder/record.name copy-on-write (writable for torch, the file is never changed);
    files under 64 KiB are read into memory instead.

    Checks the size, then the .npy header's dtype and shape against the record.
    """
    check_size(folder, record)
    mmap_mode = "c" if record.bytes >= MMAP_MIN_BYTES else None  # small ones (and 0-d) are plain reads
    try:
        array = np.load(folder / record.name, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DamagedFileError(f"{record.name} cannot be read as an array ({error})") from None
    if array.dtype.str != record.dtype or tuple(array.shape) != record.shape:
        raise DamagedFileError(f"{record.name} holds {array.dtype.str} {tuple(array.shape)}, "
                               f"expected {record.dtype} {record.shape}")
    return array
