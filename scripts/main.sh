#!/usr/bin/env bash
# The main job: set up, create a local signing key once (keys/), train and sign
# the Titanic model into artifacts/titanic.bbx, prove it self-contained in
# isolation_env/, then serve it with that key trusted (Ctrl-C stops the server).
# It installs no system packages (the tests' packages are scripts/test.sh's).
# The server binds BLACKBOX_HOST:BLACKBOX_PORT (default 127.0.0.1:8000); a port
# already in use is reported before training, not after. Extra arguments go to
# the training command.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${BLACKBOX_HOST:-127.0.0.1}
PORT=${BLACKBOX_PORT:-8000}

# port_free: exit 2 with what to do when HOST:PORT cannot be bound (checked as gunicorn binds: SO_REUSEADDR).
port_free() {
    "${PYTHON:-python3}" - "$HOST" "$PORT" <<'PY' || exit 2
import errno, socket, sys
host, port = sys.argv[1], sys.argv[2]
try:
    number = int(port)
    family = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, number))
except (OSError, ValueError, OverflowError) as exc:
    taken = isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
    reason = "is already in use" if taken else f"cannot be bound ({exc})"
    sys.exit(f"main: port {port} on {host} {reason}: choose another with BLACKBOX_PORT=N "
             f"(and BLACKBOX_HOST=ADDR), e.g. BLACKBOX_PORT=8001 bash scripts/main.sh")
PY
}
port_free

bash scripts/setup.sh

[ -f keys/blackbox.key ] || .venv/bin/blackbox keygen --out keys
.venv/bin/python -m training --out artifacts/titanic.bbx --signing-key keys/blackbox.key \
    --predictions-out artifacts/expected.json "$@"
.venv/bin/python isolation_env/run.py artifacts/titanic.bbx --trusted-keys keys/blackbox.pub \
    --expected artifacts/expected.json

port_free  # again: training takes minutes, and something may have taken the port meanwhile
url="http://$HOST:$PORT"
echo
echo "Serving artifacts/titanic.bbx on $url — try, from another shell:"
echo "  curl -s $url/predict -H 'Content-Type: application/json' \\"
echo "       -d '{\"pclass\": 3, \"sex\": \"male\", \"age\": 22, \"sibsp\": 1, \"parch\": 0, \"fare\": 7.25, \"embarked\": \"S\", \"name\": \"Braund, Mr. Owen Harris\"}'"
exec .venv/bin/blackbox serve artifacts/titanic.bbx --host "$HOST" --port "$PORT" --trusted-keys keys/blackbox.pub
