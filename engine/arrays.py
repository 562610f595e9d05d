"""Array files of the library: .npy written crash-safely and read back memory-mapped after checks.

Writing: `<name>.tmp` is written (hashing the bytes as they go), flushed and fsynced, then renamed
to `<name>`; `sync_folder` makes the renames durable. A reader never sees a half-written `<name>`.
Reading: size, sha256 (when asked), dtype and shape are checked against the FileRecord made at write
time before the array is used; any difference raises DamagedFileError with a reason for people.
A file whose identity as the file system sees it (`file_identity`) is the one recorded when its sha256 was last
checked is not hashed again: a write of any kind changes the identity (as engine/fingerprint.py relies on for model
weights), so a reopen reads no byte it does not use. The one blind spot, shared with every stat-based check (git's
included), is a change within the same timestamp tick as Folio's own write of the file.
Never pickles: allow_pickle=False everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"
MMAP_MIN_BYTES = 1 << 16


class DamagedFileError(Exception):
    """A stored file is missing, truncated, or differs from its record (str: the reason)."""


@dataclass(frozen=True)
class FileRecord:
    """What was written: name (relative to its folder), size in bytes, sha256 of the bytes, dtype, shape, and the
    file's identity when its sha256 was last checked (None: hash it at the next check)."""

    name: str
    bytes: int
    sha256: str
    dtype: str
    shape: tuple[int, ...]
    identity: str | None = None

    def to_row(self, owner: str) -> dict:
        return {"owner": owner, "name": self.name, "bytes": self.bytes, "sha256": self.sha256,
                "dtype": self.dtype, "shape": json.dumps(list(self.shape)), "identity": self.identity}

    @classmethod
    def from_row(cls, row: dict) -> FileRecord:
        return cls(row["name"], int(row["bytes"]), row["sha256"], row["dtype"], tuple(json.loads(row["shape"])),
                   row.get("identity"))


def file_identity(path: Path) -> str:
    """The file as the file system sees it: device, inode, size, modification and change time. Any write changes it
    (a program can set the modification time back, not the change time)."""
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


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
    return FileRecord(name, writer.size, writer.digest.hexdigest(), array.dtype.str, tuple(array.shape),
                      file_identity(final))



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
    """sha256 of the file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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


def verify_files(folder: Path, records: list[FileRecord], full_hash: bool = True, threads: int = 4
                 ) -> list[FileRecord]:
    """Check every file's size, and (full_hash) its sha256, in parallel; raise DamagedFileError on the first bad.

    A file whose identity is its record's is not hashed (see the module's docstring). Returns the records hashed now,
    with the identity they were checked at: what the caller stores so that the next check skips them.
    """
    for record in records:
        check_size(folder, record)
    if not full_hash:
        return []
    stale = [record for record in records if record.identity != file_identity(folder / record.name)]

    def check(record: FileRecord) -> FileRecord:
        identity = file_identity(folder / record.name)
        if file_sha256(folder / record.name) != record.sha256:
            raise DamagedFileError(f"{record.name} does not match its checksum (its content changed)")
        return dataclasses.replace(record, identity=identity)

    with ThreadPoolExecutor(max(1, min(threads, len(stale) or 1))) as pool:
        return list(pool.map(check, stale))


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
