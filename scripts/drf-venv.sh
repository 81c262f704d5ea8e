#!/usr/bin/env bash
# Makes the differential test's virtualenv (target/drf-venv) with the pinned Django and Django
# REST framework from tests/drf_oracle/requirements.txt, when missing or out of date.
# authentik 2025.6 runs CPython 3.13: DRF_PYTHON, else a working python3.13 (on PATH or in
# pyenv), else python3, for which the oracle emulates what differs (tests/drf_oracle/oracle.py,
# PY313).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/drf-venv
REQ=tests/drf_oracle/requirements.txt
works() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; }
PYTHON="${DRF_PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in "$(command -v python3.13 || true)" "$HOME"/.pyenv/versions/3.13*/bin/python3.13; do
    if works "$candidate"; then PYTHON="$candidate"; break; fi
  done
fi
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && cmp -s "$REQ" "$VENV/requirements.txt" \
  && [ "$("$VENV/bin/python" -c 'import sys; print(sys.version_info[:2])')" = "$("$PYTHON" -c 'import sys; print(sys.version_info[:2])')" ]; then
  exit 0
fi
echo "drf-venv: creating $VENV with $("$PYTHON" --version)"
rm -rf "$VENV"
mkdir -p target
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null && command -v apt-get >/dev/null; then
  echo "drf-venv: installing python3-venv"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
cp "$REQ" "$VENV/requirements.txt"
