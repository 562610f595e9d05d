#!/usr/bin/env bash
# GPU check for RetrievalAttention (run on a CUDA machine; writes JSON and a log under ${OUT:-gpu-check}/).
#   bash packaging/gpu_check.sh                        # the default parts: test quant (about 7 minutes on an H100/H200)
#   GPU_CHECK_PARTS="test memory" bash packaging/gpu_check.sh
# Wheels the machine lacks (bitsandbytes, Folio's transformers; no network there): fetch them beforehand with
# `bash packaging/gpu_wheels.sh` into gpu-wheels/, which travels with the working tree; they are installed here into
# ${GPU_SITE:-/tmp/folio-site} and put first on PYTHONPATH.
# test:   tests/test_cuda_decode.py: with the static set on the GPU and the offloaded set in CPU memory, retrieval
#         decoding equals full attention when top_k covers the offloaded set (fp32, max abs error <= 1e-4).
# quant:  Llama-3-8B's shape, random weights, at 128K tokens, retrieval (layer-major prefill, background index builds)
#         and full attention: first in bfloat16 on the whole card, then with 4-bit weights (bitsandbytes NF4) with the
#         process's device memory capped to a 12 GB and an 8 GB card (torch.cuda.set_per_process_memory_fraction):
#         device peak, time per token, prefill and index build of each.
# memory: the same shape in bfloat16 at 32K and 128K, full against retrieval, and at 32K the chunk-by-chunk prefill
#         (retrieval@chunk) for comparison.
# decode: one layer's decode-step attention at 32K and 128K keys on real vectors of the default model (full, flat,
#         ivf, hnsw, retrieval) with recall@100 and keys scanned; it needs the default model and faiss on the machine.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-check}
parts=${GPU_CHECK_PARTS:-test quant}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
export PYTHONUNBUFFERED=1
if compgen -G "gpu-wheels/*.whl" >/dev/null; then
  site=${GPU_SITE:-/tmp/folio-site}
  "$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --target "$site" gpu-wheels/*.whl \
    || echo "could not install the wheels in gpu-wheels/"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$py" -c "import torch, numba, transformers; print('torch', torch.__version__, 'numba', numba.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
"$py" -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>/dev/null || echo "no bitsandbytes"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
status=0
for part in $parts; do
  echo "== $part"
  case $part in
    test) "$py" -m pytest -q -p no:cacheprovider tests/test_cuda_decode.py || status=1 ;;
    quant) "$py" -m engine.bench memory --shape llama3-8b --tokens 131072 --chunk 4096 --decode-steps 8 \
             --methods retrieval,full --setups full,4bit@12,4bit@8 \
             --json-out "$out/memory_llama3_8b_128k_4bit.json" || status=1 ;;
    memory) "$py" -m engine.bench memory --shape llama3-8b --tokens 32768,131072 --chunk 4096 \
              --json-out "$out/memory_llama3_8b.json" || status=1
            "$py" -m engine.bench memory --shape llama3-8b --tokens 32768 --chunk 4096 --methods retrieval@chunk \
              --json-out "$out/memory_llama3_8b_chunk_major.json" || status=1 ;;
    decode) "$py" -m engine.bench decode --tokens 32768,131072 --json-out "$out/decode.json" || status=1 ;;
    *) echo "unknown part $part (choose from: test quant memory decode)"; status=1 ;;
  esac
done
exit $status
