#!/usr/bin/env bash
# Build the Linux package: dist/folio_<version>_amd64.deb (the frozen app under /opt/folio, `folio` on PATH,
# a desktop entry that offers "Open with Folio" for PDF, text and Markdown files, and the icon).
#   bash packaging/build_deb.sh            set up, freeze with PyInstaller, package
#   FOLIO_DEB_SKIP_FREEZE=1 bash ...       package an existing dist/folio
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb is missing (a Debian/Ubuntu machine builds the .deb)" >&2; exit 127; }

bash packaging/dev.sh setup
py=.venv/bin/python
version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

if [ -z "${FOLIO_DEB_SKIP_FREEZE:-}" ]; then
  if ! "$py" -c "import PyInstaller" 2>/dev/null; then
    echo "== installing the packaging tools (pyinstaller)" >&2
    "$py" -m pip install --quiet --disable-pip-version-check -e ".[app,dev,package]"
  fi
  echo "== fetching the default model's GGUF" >&2
  "$py" packaging/fetch_default_model.py >/dev/null
  echo "== freezing the app with PyInstaller (a few minutes)" >&2
  "$py" -m PyInstaller --noconfirm --log-level ERROR --distpath dist --workpath build/pyinstaller packaging/folio.spec
fi
[ -x dist/folio/folio ] || { echo "error: dist/folio/folio is missing: run without FOLIO_DEB_SKIP_FREEZE" >&2; exit 1; }

root=build/deb/folio_${version}_amd64
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
  "$root/usr/share/icons/hicolor/scalable/apps" "$root/usr/share/icons/hicolor/256x256/apps"
cp -a dist/folio "$root/opt/folio"
install -m 755 packaging/linux/folio-launcher.sh "$root/usr/bin/folio"
install -m 644 packaging/linux/folio.desktop "$root/usr/share/applications/folio.desktop"
install -m 644 resources/folio.svg "$root/usr/share/icons/hicolor/scalable/apps/folio.svg"
install -m 644 resources/folio.png "$root/usr/share/icons/hicolor/256x256/apps/folio.png"
installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# Qt's xcb platform plugin and OpenGL/EGL come from the system; everything else is in /opt/folio.
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_KB@/$installed_kb/" packaging/linux/control.in > "$root/DEBIAN/control"

mkdir -p dist
deb=dist/folio_${version}_amd64.deb
# xz makes the smallest download; FOLIO_DEB_COMPRESSION=zstd packs ~10x faster (for CI), a bit larger.
compression=${FOLIO_DEB_COMPRESSION:-xz}
echo "== packaging $deb ($compression)" >&2
dpkg-deb --root-owner-group "-Z$compression" --build "$root" "$deb" >/dev/null
rm -rf "$root"
size=$(stat -c %s "$deb")
echo "$deb $(( size / 1000000 )) MB (installed $(( installed_kb / 1000 )) MB)"
