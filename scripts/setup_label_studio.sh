#!/usr/bin/env bash
# Create .venv-label-studio with Label Studio (pinned), apart from todal's .venv: its many pins never
# touch todal's. The real-server test (tests/project/test_labelstudio_server.py) starts it from here.
# Idempotent: does nothing when the pinned version is already importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=1.23.2
VENV=.venv-label-studio
if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" - "$VERSION" <<'PYCHECK' 2>/dev/null
import sys
from importlib.metadata import version
import label_studio  # noqa: F401
sys.exit(version("label-studio") != sys.argv[1])
PYCHECK
then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q "label-studio==$VERSION"
