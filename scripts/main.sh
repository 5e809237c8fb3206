#!/usr/bin/env bash
# The main job: set up, create a local signing key once (keys/), train and sign
# the Titanic model into artifacts/titanic.bbx, prove it self-contained in
# isolation_env/, then serve it on 127.0.0.1:8000 with that key trusted
# (Ctrl-C stops the server). Extra arguments go to the training command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

[ -f keys/blackbox.key ] || .venv/bin/blackbox keygen --out keys
.venv/bin/python -m training --out artifacts/titanic.bbx --signing-key keys/blackbox.key \
    --predictions-out artifacts/expected.json "$@"
.venv/bin/python isolation_env/run.py artifacts/titanic.bbx --trusted-keys keys/blackbox.pub \
    --expected artifacts/expected.json

echo
echo "Serving artifacts/titanic.bbx on http://127.0.0.1:8000 — try, from another shell:"
echo "  curl -s http://127.0.0.1:8000/predict -H 'Content-Type: application/json' \\"
echo "       -d '{\"pclass\": 3, \"sex\": \"male\", \"age\": 22, \"sibsp\": 1, \"parch\": 0, \"fare\": 7.25, \"embarked\": \"S\", \"name\": \"Braund, Mr. Owen Harris\"}'"
exec .venv/bin/blackbox serve artifacts/titanic.bbx --host 127.0.0.1 --port 8000 --trusted-keys keys/blackbox.pub
