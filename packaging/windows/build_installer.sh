#!/usr/bin/env bash
# Build Folio's Windows installer on Linux (or any host with NSIS 3.06+ makensis) from a PyInstaller
# onedir build of the app for Windows.
#   bash packaging/windows/build_installer.sh [PAYLOAD_DIR] [OUTFILE]
#     PAYLOAD_DIR  folder holding folio.exe and _internal\   (default dist/folio)
#     OUTFILE      installer to write                       (default dist/folio-VERSION-windows-x64-setup.exe)
#   COMPRESSOR=zlib bash packaging/windows/build_installer.sh   faster build, larger installer (default lzma)
# The version comes from pyproject.toml ([project] version).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if ! command -v makensis >/dev/null 2>&1; then
  echo "makensis (NSIS) is not installed. On Debian/Ubuntu: sudo apt-get install -y nsis" >&2
  exit 127
fi

# [project] version from pyproject.toml: the first version = "..." line inside the [project] table.
version=$(awk '
  /^\[/ { in_project = ($0 == "[project]") ; next }
  in_project && /^version[[:space:]]*=/ { gsub(/^version[[:space:]]*=[[:space:]]*"|".*$/, ""); print; exit }
' "$root/pyproject.toml")
if [ -z "$version" ]; then
  echo "Could not read [project] version from $root/pyproject.toml" >&2
  exit 1
fi
# The PE version resource needs four numbers: the numeric prefix of the version, padded with zeros.
numeric=$(printf '%s' "$version" | grep -oE '^[0-9]+(\.[0-9]+){0,3}' || true)
IFS=. read -r v1 v2 v3 v4 <<<"${numeric:-0}"
vi_version="${v1:-0}.${v2:-0}.${v3:-0}.${v4:-0}"

payload=${1:-$root/dist/folio}
outfile=${2:-$root/dist/folio-$version-windows-x64-setup.exe}
if [ ! -d "$payload" ]; then
  echo "Payload folder $payload does not exist: build the app for Windows first" >&2
  echo "  (pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/folio.spec)" >&2
  exit 1
fi
payload=$(cd "$payload" && pwd)
mkdir -p "$(dirname "$outfile")"
outfile=$(cd "$(dirname "$outfile")" && pwd)/$(basename "$outfile")

echo "== makensis: Folio $version ($vi_version), payload $payload" >&2
# -WX: a warning is an error (NSIS warnings usually mean a real mistake in the script).
makensis -V2 -WX -INPUTCHARSET UTF8 \
  "-DVERSION=$version" "-DVI_VERSION=$vi_version" \
  "-DPAYLOAD=$payload" "-DOUTFILE=$outfile" \
  "-DCOMPRESSOR=${COMPRESSOR:-lzma}" \
  "$root/packaging/windows/folio.nsi"

size=$(stat -c %s "$outfile")
echo "$outfile"
echo "$size bytes ($(numfmt --to=iec-i --suffix=B "$size"))"
