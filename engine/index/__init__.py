"""Key indexes of one layer: the protocol (base) and every registered method.

Importing this package registers all methods: "exact" (oracle), "flat", "ivf", "hnsw" (faiss
baselines), "retrieval" (the attention-aware graph of RetrievalAttention) and "qgraph" (that graph with int8-coded
keys in its neighbour lists).
"""

from engine.index import exact, faiss_indexes, graph, qgraph
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
QGRAPH = qgraph.METHOD

__all__ = [
    "EXACT",
    "FLAT",
    "HNSW",
    "IVF",
    "QGRAPH",
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
    "qgraph",
    "register_index",
]
