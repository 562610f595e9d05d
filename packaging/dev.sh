#!/usr/bin/env bash
# Folio developer set-up, idempotent: virtual environment, torch (CPU build, installed first so no
# open range pulls a multi-GB CUDA build), the project with its extras, and the default model.
#   bash packaging/dev.sh run [app options...]   set up, then launch the desktop app (python -m app)
#   bash packaging/dev.sh cli [ask options...]   set up, then answer the sample question on the command line
#   bash packaging/dev.sh test [pytest args...]  set up, then run the tests
#   bash packaging/dev.sh setup                  set up only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

base_python=${FOLIO_PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $base_python" >&2
  "$base_python" -m venv .venv
fi
py=.venv/bin/python

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "== installing torch==2.13.0" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi

stamp=.venv/.folio-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing Folio and its dependencies" >&2
  "$py" -m pip install --quiet --disable-pip-version-check -e ".[app,dev]"
  touch "$stamp"
fi

"$py" -m engine setup

command=${1:-run}
shift || true
case "$command" in
  run) exec "$py" -m app "$@" ;;
  cli)
    exec "$py" -m engine ask resources/sample.md \
      "Who was the first head keeper of the lighthouse, and how long did he serve?" "$@" ;;
  test) exec "$py" -m pytest "$@" ;;
  setup) ;;
  *) echo "usage: bash packaging/dev.sh {run|cli|test|setup} [args...]" >&2; exit 2 ;;
esac
