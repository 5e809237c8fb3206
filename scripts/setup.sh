#!/usr/bin/env bash
# Creates .venv with blackbox (editable, with its dev extras) and the example
# training package, at the versions locked in isolation_env/requirements.txt.
# Re-running is cheap: it reinstalls only when the packaging files changed since
# the last successful run. It installs no system packages (what only the tests
# need is installed by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp_inputs=(pyproject.toml training/pyproject.toml isolation_env/requirements.txt _blackbox_compat.py _blackbox_compat.pth)
stamp=$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.blackbox-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setup: installing blackbox and the training package into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The serving side's lock doubles as constraints here, so training, the
    # isolated check and the server all run the same versions.
    "$VENV/bin/python" -m pip install --quiet -c isolation_env/requirements.txt -e ".[dev]" -e ./training
    echo "$stamp" > "$VENV/.blackbox-stamp"
else
    echo "setup: $VENV is up to date"
fi
