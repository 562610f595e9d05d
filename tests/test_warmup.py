"""The kernel warm-up loads exactly the compiled kernels a real CPU retrieval decode step then uses."""

import pytest
import torch

from engine.config import EngineConfig
from engine.cpu_decode import decode_attention_kernel as decode_kernel
from engine.generate import Finished
from engine.index.graph_search import search_serial
from engine.index.qgraph_search import search_coded_serial
from engine.ingest import Document
from engine.session import DocumentSession
from engine.warmup import warm_decode_step

TEXT = "the keepers recorded the weather three times a day and the light never failed. " * 30


@pytest.mark.parametrize(("method", "kernel"), [("retrieval", search_serial), ("qgraph", search_coded_serial)])
def test_a_real_decode_after_the_warmup_compiles_nothing_new(tiny_loaded, method, kernel):
    warm_decode_step(torch.float16, torch.float32, method)
    loaded_before = (set(kernel.signatures), set(decode_kernel.signatures))
    assert loaded_before[0] and loaded_before[1]
    config = EngineConfig(attention=method, n_sink=8, n_window=32, top_k=16, max_new_tokens=4)
    session = DocumentSession(tiny_loaded, Document(text=TEXT, title="t", source=None, sha256="b" * 64), config)
    finished = [e for e in session.ask("what did they record?") if isinstance(e, Finished)][-1]
    assert finished.token_ids and session.cache.stats.searches > 0
    assert (set(kernel.signatures), set(decode_kernel.signatures)) == loaded_before
