#!/usr/bin/env bash
# Install dist/folio_<version>_amd64.deb with dpkg -i (needs root), check what it put where, run the installed
# `folio --version` and `folio --self-test` as an ordinary user with an empty home (so the bundled model is
# converted from scratch, offline, and nothing may be written under /opt), then remove the package.
#   bash packaging/test_deb.sh [PACKAGE.deb]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
deb=${1:-$(ls -t dist/folio_*_amd64.deb 2>/dev/null | head -1)}
[ -f "$deb" ] || { echo "error: no package found: run bash packaging/build_deb.sh first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: installing a package needs root (run with sudo)" >&2; exit 1; }

echo "== dpkg -i $deb" >&2
if ! dpkg -i "$deb"; then
  echo "== installing missing dependencies from the Debian archive (apt-get -f install)" >&2
  apt-get update -qq && apt-get install -f -y -qq
fi
dpkg-query -W -f='installed ${Package} ${Version}, ${Installed-Size} KB\n' folio
for path in /opt/folio/folio /usr/bin/folio /usr/share/applications/folio.desktop \
            /usr/share/icons/hicolor/scalable/apps/folio.svg; do
  [ -e "$path" ] || { echo "error: the package did not install $path" >&2; exit 1; }
done
grep -q '^MimeType=application/pdf;text/plain;text/markdown' /usr/share/applications/folio.desktop
if command -v desktop-file-validate >/dev/null; then desktop-file-validate /usr/share/applications/folio.desktop; fi

home=$(mktemp -d /tmp/folio-user-XXXXXX)
chmod 777 "$home"
as_user=(env -i PATH=/usr/bin:/bin HOME="$home" LANG=C.UTF-8)
if command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then as_user=(runuser -u nobody -- "${as_user[@]}"); fi
cd "$home"
"${as_user[@]}" folio --version
"${as_user[@]}" QT_QPA_PLATFORM=offscreen folio --self-test
# A downloaded GPU runtime must win over the bundled CPU torch: with a fake nvidia-smi and a fake runtime whose
# torch raises a marker, the installed app must fail with that marker.
fake=$(mktemp -d /tmp/folio-fake-gpu-XXXXXX)
"$repo/.venv/bin/python" "$repo/tests/fake_gpu_runtime.py" "$fake" >/dev/null
chmod -R a+rX "$fake"
output=$("${as_user[@]}" PATH="$fake/bin:/usr/bin:/bin" FOLIO_RUNTIME_DIR="$fake/runtime" QT_QPA_PLATFORM=offscreen \
         folio --self-test 2>&1 || true)
if grep -q "FAKE CUDA TORCH from the runtime was imported" <<<"$output"; then
  echo "a ready GPU runtime is imported before the bundled torch"
else
  echo "error: the installed app did not import torch from the GPU runtime folder" >&2; exit 1
fi
rm -rf "$fake"
if [ -z "${FOLIO_KEEP_INSTALLED:-}" ]; then
  dpkg -r folio >/dev/null
  [ ! -e /opt/folio/folio ] || { echo "error: dpkg -r left /opt/folio behind" >&2; exit 1; }
  echo "removed the package again" >&2
fi
rm -rf "$home"
