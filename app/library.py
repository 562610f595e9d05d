"""The document library the side panel shows, behind a small adapter.

LibraryEntry is what the panel needs. `Library` keeps entries in memory for this session; the backend fills it
from the engine's persistent library.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Protocol

from app.backend import LibraryEntry


class LibraryBackend(Protocol):
    def entries(self) -> list[LibraryEntry]: ...
    def get(self, entry_id: str) -> LibraryEntry | None: ...
    def put(self, entry: LibraryEntry) -> None: ...
    def delete(self, entry_id: str) -> None: ...


class Library:
    """In-memory library, most recently used first."""

    def __init__(self) -> None:
        self._entries: dict[str, LibraryEntry] = {}

    def entries(self) -> list[LibraryEntry]:
        return sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)

    def get(self, entry_id: str) -> LibraryEntry | None:
        return self._entries.get(entry_id)

    def put(self, entry: LibraryEntry) -> None:
        self._entries[entry.id] = entry

    def update(self, entry_id: str, **changes) -> LibraryEntry | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        entry = replace(entry, **changes)
        self._entries[entry_id] = entry
        return entry

    def touch(self, entry_id: str) -> LibraryEntry | None:
        return self.update(entry_id, last_used=time.time())

    def delete(self, entry_id: str) -> None:
        self._entries.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def total_cache_bytes(self) -> int:
        return sum(e.cache_bytes for e in self._entries.values())


def format_ago(timestamp: float, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 d ago'."""
    if not timestamp:
        return "never"
    seconds = max(0.0, (now or time.time()) - timestamp)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"
