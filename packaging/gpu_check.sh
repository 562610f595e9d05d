#!/usr/bin/env bash
# GPU check for RetrievalAttention (run on a CUDA machine; writes JSON and a log under ${OUT:-gpu-check}/).
#   bash packaging/gpu_check.sh                        # all three parts below
#   GPU_CHECK_PARTS="test memory" bash packaging/gpu_check.sh
# test:   tests/test_cuda_decode.py: with the static set on the GPU and the offloaded set in CPU memory, retrieval
#         decoding equals full attention when top_k covers the offloaded set (fp32, max abs error <= 1e-4).
# memory: Llama-3-8B's shape, random weights, bfloat16, at 32K and 128K tokens: full attention (sdpa, every K/V on
#         the device) against retrieval (static set on the device, the rest and its index in CPU memory): prefill,
#         index build, time per decode token, and peak device memory against the weights. The retrieval prefill runs
#         layer by layer with each layer's index built on a CPU thread meanwhile; a second run at 32K prefills chunk
#         by chunk (retrieval@chunk), the order before, for comparison.
# decode: one layer's decode-step attention at 32K and 128K keys on real vectors of the default model (full, flat,
#         ivf, hnsw, retrieval) with recall@100 and keys scanned; it needs the default model on the machine.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-check}
parts=${GPU_CHECK_PARTS:-test memory decode}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
export PYTHONUNBUFFERED=1
"$py" -c "import torch, numba, transformers; print('torch', torch.__version__, 'numba', numba.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
status=0
for part in $parts; do
  echo "== $part"
  case $part in
    test) "$py" -m pytest -q -p no:cacheprovider tests/test_cuda_decode.py || status=1 ;;
    memory) "$py" -m engine.bench memory --shape llama3-8b --tokens 32768,131072 --chunk 4096 \
              --json-out "$out/memory_llama3_8b.json" || status=1
            "$py" -m engine.bench memory --shape llama3-8b --tokens 32768 --chunk 4096 --methods retrieval@chunk \
              --json-out "$out/memory_llama3_8b_chunk_major.json" || status=1 ;;
    decode) "$py" -m engine.bench decode --tokens 32768,131072 --json-out "$out/decode.json" || status=1 ;;
    *) echo "unknown part $part (choose from: test memory decode)"; status=1 ;;
  esac
done
exit $status
