"""Regenerate resources/folio.ico from resources/folio.png (256x256 RGBA).

The .ico is committed, so neither the installer build nor PyInstaller needs Pillow; run this
only when the PNG changes:  python packaging/windows/make_icon.py   (needs Pillow installed)
"""

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
# The sizes Windows asks for: shell small/large icons at 100-200 % scaling, Start tiles, Explorer views.
SIZES = [(16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64), (128, 128), (256, 256)]


def main() -> None:
    source = ROOT / "resources" / "folio.png"
    target = ROOT / "resources" / "folio.ico"
    with Image.open(source) as image:
        image.convert("RGBA").save(target, format="ICO", sizes=SIZES)
    print(f"{target.relative_to(ROOT)}: {target.stat().st_size} bytes, sizes {[s[0] for s in SIZES]}")


if __name__ == "__main__":
    main()
