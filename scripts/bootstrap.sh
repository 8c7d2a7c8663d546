#!/usr/bin/env bash
# Set up pdnsr in a virtual environment and run the demo or the tests: the README's two set-up commands.
#
#   bash scripts/bootstrap.sh demo [demo options]     # trains EDSR and EDSR+ on built-in photos, prints a table
#   bash scripts/bootstrap.sh test [pytest options]   # the test suite (what CI runs)
#
# The environment lives in $PDNSR_VENV (default .venv). It is created with $PYTHON (default python3, >= 3.10: Gradio 6 of the app extra needs it) and
# the pinned, tested package set of constraints-ci.txt; re-installs only when setup.py or the constraints change.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in
  demo|test) shift ;;
  *) echo "usage: bash scripts/bootstrap.sh {demo|test} [options]" >&2; exit 2 ;;
esac

venv=${PDNSR_VENV:-.venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "[pdnsr] creating virtual environment $venv with $("$python" --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.pdnsr-install-stamp"
want=$(cat setup.py constraints-ci.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[pdnsr] installing pdnsr and its pinned dependencies (torch is large: the first time takes minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints-ci.txt -e ".[test,deploy,app]"
  echo "$want" > "$stamp"
fi

if [ "$what" = demo ]; then
  exec "$venv/bin/python" scripts/demo.py "$@"
fi
exec "$venv/bin/python" -m pytest -q "$@"
