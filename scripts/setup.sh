#!/usr/bin/env bash
# Creates .venv with blackbox (editable, with its dev extras) and the example
# training package, at the versions locked in isolation_env/requirements.txt. Re-running is cheap: it reinstalls only when the packaging
# files changed since the last successful run.
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

# Debian packages some tests need: installed only in CI or as root, and only when missing.
# system_package PACKAGE WHAT-FOR: call it when PACKAGE is missing.
system_package() {
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)  # CI runners: passwordless sudo
    if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; } && "${as_root[@]}" true 2>/dev/null; then
        echo "setup: installing $1 (for $2)"
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
    elif [ "${CI:-}" = true ]; then
        echo "setup: CI needs $1 for $2; run this as root or install it first" >&2
        exit 1
    else
        echo "setup: $1 not installed (needs root: apt-get install $1); $2 will be skipped"
    fi
}
# PostgreSQL for tests/test_predlog_postgres.py (the tests start their own throw-away
# cluster from these binaries).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || system_package postgresql "the prediction-log tests"
# A headless browser for tests/test_report.py, which looks at a screenshot of the drift report.
command -v chromium >/dev/null || system_package chromium "the drift report's browser test"
