#!/usr/bin/env bash
# GPU check for RetrievalAttention (run on a CUDA machine; writes JSON under ${OUT:-gpu-check}/).
#   bash packaging/gpu_check.sh            # everything below, ~10 min on an H100
# 1. decode-step timing of the attention alone at 32K and 128K keys (full, flat, ivf, hnsw, retrieval)
# 2. (the decode suite also reports recall@100 and keys scanned per method at each size)
# 3. Llama-3-8B's shape, random weights, bfloat16, 128K tokens: peak device memory vs weights and
#    time per decode token with RetrievalAttention.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
status=0
run() { echo "== $*"; "$py" -m engine.bench "$@" || status=1; }
run memory --shape llama3-8b --tokens 131072 --chunk 4096 --json-out "$out/memory_llama3_8b_128k.json"
run decode --tokens 32768,131072 --json-out "$out/decode.json"
exit $status
