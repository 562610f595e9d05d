"""Key indexes of one layer: the protocol (base) and every registered method.

Importing this package registers all methods: "exact" (oracle), "flat", "ivf", "hnsw" (faiss
baselines) and "retrieval" (the attention-aware graph of RetrievalAttention).
"""

from engine.index import exact, faiss_indexes, graph
from engine.index.base import (
    IndexBuilder,
    IndexLoader,
    IndexParams,
    LayerIndex,
    SearchResult,
    build_layer_index,
    index_methods,
    kv_head_of,
    load_layer_index,
    register_index,
)

EXACT = exact.EXACT
FLAT = faiss_indexes.FLAT
IVF = faiss_indexes.IVF
HNSW = faiss_indexes.HNSW
RETRIEVAL = "retrieval"

__all__ = [
    "EXACT",
    "FLAT",
    "HNSW",
    "IVF",
    "RETRIEVAL",
    "IndexBuilder",
    "IndexLoader",
    "IndexParams",
    "LayerIndex",
    "SearchResult",
    "build_layer_index",
    "exact",
    "faiss_indexes",
    "graph",
    "index_methods",
    "kv_head_of",
    "load_layer_index",
    "register_index",
]
