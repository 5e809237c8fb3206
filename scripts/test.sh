#!/usr/bin/env bash
# Sets up .venv, lints and type-checks (ruff, mypy --strict), installs the Debian
# packages only the tests need (postgresql, chromium: as root or in CI, when
# missing), runs the whole test suite, then
# proves self-containment end to end: trains a small artifact and checks it in
# isolation_env/ (a separate venv without the training package), server
# included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Lint and types before anything slow (a few seconds): ruff with pyproject.toml's rules over the whole tree,
# mypy --strict over blackbox/ and serving/. Either failing fails the run.
echo "== lint: ruff check, mypy --strict"
.venv/bin/ruff check .
.venv/bin/mypy

# Debian packages only the tests need: installed in CI or as root, and only when missing
# (the main job, scripts/main.sh, needs none of them).
# system_package PACKAGE WHAT-FOR: call it when PACKAGE is missing.
system_package() {
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)  # CI runners: passwordless sudo
    # Another apt or dpkg (unattended-upgrades, say) may hold the lock: wait for it rather than fail.
    apt=(apt-get -o DPkg::Lock::Timeout=300 -qq)
    if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; } && "${as_root[@]}" true 2>/dev/null; then
        echo "test: installing $1 (for $2)"
        if "${as_root[@]}" "${apt[@]}" update && \
           "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y "$1" >/dev/null; then
            return
        fi
        [ "${CI:-}" = true ] && { echo "test: CI needs $1 for $2, and installing it failed" >&2; exit 1; }
        echo "test: installing $1 failed; $2 will be skipped"
    elif [ "${CI:-}" = true ]; then
        echo "test: CI needs $1 for $2; run this as root or install it first" >&2
        exit 1
    else
        echo "test: $1 not installed (needs root: apt-get install $1); $2 will be skipped"
    fi
}
# PostgreSQL for tests/test_predlog_postgres.py (the tests start their own throw-away
# cluster from these binaries).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || system_package postgresql "the prediction-log tests"
# A headless browser for tests/test_report.py, which looks at a screenshot of the drift report.
command -v chromium >/dev/null || system_package chromium "the drift report's browser test"

.venv/bin/python -m pytest "$@"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== isolation_env: train a small signed artifact, then check it where training does not exist"
.venv/bin/blackbox keygen --out "$work/keys" --name ci
.venv/bin/python -m training --small-grid --out "$work/titanic.bbx" --signing-key "$work/keys/ci.key" \
    --predictions-out "$work/expected.json"
.venv/bin/python isolation_env/run.py "$work/titanic.bbx" --trusted-keys "$work/keys/ci.pub" \
    --expected "$work/expected.json"
