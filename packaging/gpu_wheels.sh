#!/usr/bin/env bash
# The wheels the GPU check needs beside what the lent GPU machine has (Python 3.12, torch 2.11 cu130,
# transformers 5.17, accelerate, huggingface_hub, numba, numpy, safetensors; no network, no bitsandbytes), fetched
# here into gpu-wheels/ (git-ignored), which travels with the working tree (about 50 MiB at most); gpu_check.sh
# installs them from there. Prints each wheel and the total size.
#   bash packaging/gpu_wheels.sh          # then: GPU_CHECK_PARTS="test quant" bash packaging/gpu_check.sh there
# - bitsandbytes: 4-bit weights (engine/quantize.py). Its wheel carries a library per CUDA version (43 MB); the copy
#   here keeps the CPU one and CUDA 13.0's (torch 2.11+cu130 on that machine), with its RECORD rewritten to match.
# - transformers 5.24 (Folio pins it: its cache and attention hooks), with the tokenizers, huggingface_hub (1.x, the
#   httpx-based line that machine's packages fit, with httpx) and safetensors versions it requires, and pytest for
#   the CUDA tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${GPU_WHEELS:-gpu-wheels}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
keep_cuda=${GPU_WHEELS_CUDA:-130}
rm -rf "$out"
mkdir -p "$out"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$out" \
  "bitsandbytes==0.50.2" "transformers==5.24.0" "tokenizers==0.23.3" "huggingface_hub==1.33.0" \
  "safetensors==0.8.0" "httpx==0.28.1" "httpcore>=1,<2" "h11>=0.16,<1" "anyio>=4,<5" "sniffio>=1.3,<2" \
  "pytest==9.0.3" "pluggy>=1.5,<2" "iniconfig>=2,<3"
"$py" - "$out" "$keep_cuda" <<'PY'
import base64, hashlib, sys, zipfile
from pathlib import Path

out, keep = Path(sys.argv[1]), f"libbitsandbytes_cuda{sys.argv[2]}.so"
[wheel] = out.glob("bitsandbytes-*.whl")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    dropped = {i.filename for i in src.infolist()
               if i.filename.startswith("bitsandbytes/libbitsandbytes_") and not i.filename.endswith(("_cpu.so", keep))}
    for info in src.infolist():
        if info.filename in dropped:
            continue
        data = src.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = [l for l in data.decode().splitlines() if l.split(",")[0] not in dropped]
            data = ("\n".join(lines) + "\n").encode()
        dst.writestr(info, data)
slim.replace(wheel)
print(f"bitsandbytes: kept the CPU library and {keep}, dropped {len(dropped)} others")
PY
ls -l "$out"
du -cb "$out"/*.whl | awk 'END { printf "total: %.1f MiB\n", $1 / 1048576 }'
