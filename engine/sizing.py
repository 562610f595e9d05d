"""How much of a document the engine holds at once: plain arithmetic, shared by the engine and the app's fit check
(which must not need torch to answer)."""

from __future__ import annotations

import math

MIN_TRAIN_STRIDE, MAX_TRAIN_STRIDE = 8, 16
KNN_CHUNK = 1024  # queries (or keys) per matmul chunk in the graph build's exact top-k
KNN_SCORE_BYTES = 256 * 2**20  # ... fewer where a chunk's [rows, N] float32 scores would exceed this


def training_stride(prefix_len: int, target: int = 2048) -> int:
    """Every how many prefill queries one trains the index (see RetrievalSettings.max_train_queries)."""
    return min(MAX_TRAIN_STRIDE, max(MIN_TRAIN_STRIDE, math.ceil(prefix_len / target)))


def training_queries_per_head(prefix_len: int, target: int = 2048) -> int:
    """How many prefill queries per query head a prefix of prefix_len tokens keeps to train its index."""
    return math.ceil(prefix_len / training_stride(prefix_len, target))


def knn_chunk_rows(n_keys: int) -> int:
    """Queries per chunk of an exact top-k over n_keys keys: KNN_CHUNK, fewer when their scores would pass
    KNN_SCORE_BYTES (at 128K keys: 512 rows, 256 MiB)."""
    return max(1, min(KNN_CHUNK, KNN_SCORE_BYTES // (4 * max(n_keys, 1))))


def device_knn_bytes(n_keys: int, n_queries: int, dim: int) -> int:
    """The device memory one exact top-k of the graph build holds: keys [N, D] and queries [n, D] in float32 and
    one chunk of scores. On a GPU host the builds run these one at a time (engine.index.graph.nearest_keys), so
    this is all the index builds add to the prefill's device memory."""
    return 4 * dim * (n_keys + n_queries) + 4 * knn_chunk_rows(n_keys) * n_keys
