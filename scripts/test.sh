#!/usr/bin/env bash
# Sets up .venv, runs the whole test suite, then proves self-containment end to
# end: trains a small artifact and checks it in isolation_env/ (a separate venv
# without the training package), server included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

.venv/bin/python -m pytest "$@"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== isolation_env: train a small signed artifact, then check it where training does not exist"
.venv/bin/blackbox keygen --out "$work/keys" --name ci
.venv/bin/python -m training --small-grid --out "$work/titanic.bbx" --signing-key "$work/keys/ci.key" \
    --predictions-out "$work/expected.json"
.venv/bin/python isolation_env/run.py "$work/titanic.bbx" --trusted-keys "$work/keys/ci.pub" \
    --expected "$work/expected.json"
