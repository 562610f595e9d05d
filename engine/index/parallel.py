"""Searching a layer's query heads on several threads at once.

The graph searches are numba kernels that release the GIL (nogil), so plain Python threads run them in parallel
without numba's own thread pool (whose OpenMP or workqueue layer competes with torch's for the same cores). One
persistent pool per process; the calling thread takes the first share of the heads itself, so a decode step wakes
threads - 1 workers. `threads` 1 runs everything on the caller, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def default_search_threads() -> int:
    """FOLIO_SEARCH_THREADS, else 1: a decode search on one thread (see docs/benchmarks.md, parallel search)."""
    value = os.environ.get("FOLIO_SEARCH_THREADS", "")
    return max(1, int(value)) if value.isdigit() else 1


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="folio-search")
        return _POOL


def over_heads(search: Callable[[np.ndarray], T], n_heads: int, threads: int) -> list[T]:
    """search(heads [h] int64) for contiguous shares of range(n_heads), `threads` at a time; results in head order."""
    shares = [share for share in np.array_split(np.arange(n_heads, dtype=np.int64), max(1, min(threads, n_heads)))
              if len(share)]
    if len(shares) == 1:
        return [search(shares[0])]
    futures = [_pool(len(shares) - 1).submit(search, share) for share in shares[1:]]
    first = search(shares[0])
    return [first] + [future.result() for future in futures]
