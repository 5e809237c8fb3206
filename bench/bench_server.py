"""Prediction server against the model in-process, a trivial Flask app (the ceiling) and a bare Flask app with the pipeline.

One run, on the same artifacts (trained once into a temporary directory):

* in-process ``Model.predict`` for 1 record and ``Model.predict_batch`` for 32,
  100 and 1,000 records (dict -> prediction);
* ``blackbox serve`` under gunicorn with its defaults, with micro-batching off
  and with the fast path off (and any ``--server WORKERSxTHREADS`` layouts);
  ``bench/flask_ceiling.py`` (parse the JSON body, answer a constant) with the
  same gunicorn worker, workers and threads: the ceiling; and
  ``bench/flask_baseline.py`` (``pipeline.predict(pd.DataFrame(records))``) under
  ``gunicorn -w 2 -k sync``: requests/s, records/s, p50/p99 at concurrency 1,
  10, 32 and 100 with single records, and 100-record requests at concurrency 8.
  Every load cell runs on every server in turn, ``--rounds`` times (2), and a
  ratio is taken within each round (then the median over rounds), so that both
  sides of it ran seconds apart under the same background load;
* cold start in a fresh interpreter: ``import sklearn, pandas``; plain
  ``dill.load`` of the same pickled model + one predict; ``blackbox.load``
  (signature, integrity, environment checks) + self-test;
* correctness: every blackbox server's predictions must equal the in-process
  reference's (the estimator itself, no fast path) for the same records, sent
  concurrently (so batched) and in batches, and its
  probabilities agree within the self-test's tolerance (a matrix product over
  22 rows may round the last bit differently than over 300, in-process too);
  a difference ends the run with exit status 1.

The load generator is wrk (C, event loop: ~20 us of CPU per request), so the
two cores stay the server's: ``apt-get install wrk``. Without it the bench
falls back to keep-alive ``http.client`` threads and says so (those cost the
server about a third of a core at thousands of requests/s). Load goes to
127.0.0.1 only; each cell runs ``--duration`` seconds (5; ``--quick``: 2). All
servers of a model are up at once and each cell runs on every server in turn,
so a change in the machine's background load hits them alike.
Prints a table and the targets' ratios, writes bench/results/server.json.

    .venv/bin/python bench/bench_server.py [--quick] [--duration S] [--server 2x8 ...] [--models lr,rf]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blackbox
from blackbox import signing
from blackbox.artifact import unpack
from blackbox.model import PROBA_TOLERANCE
from serving.cli import DEFAULT_THREADS

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
HEADERS = {"Content-Type": "application/json"}
SINGLE_CONCURRENCY = (1, 10, 32, 100)  # wrk, each a closed loop; c=1 is also measured call by call (single_rows)
CALL_BY_CALL = "POST /predict, call by call"
SETTLE_S = 1.0
"""Pause before each cell, so a server still busy with the previous cell's backlog does not slow the next one."""
BATCH = 100
BATCH_CONCURRENCY = (8,)
MLSERVER_P99_MS = {1: 12.0, 10: 45.0, 100: 390.0}
"""MLServer's published sklearn p99 latencies by concurrency: the anchor the issue sets (#19)."""
CEILING = "flask ceiling"
BASELINE = "flask baseline"
WRK_SCRIPT = """
local bodies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"calls": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="Seconds per load cell [default: 3, --quick: 1].")
    parser.add_argument("--rounds", type=int, help="Rounds of every load cell on every server [default: 2, --quick: 1].")
    parser.add_argument("--quick", action="store_true", help="Short cells and fewer repeats (a smoke run).")
    parser.add_argument("--models", default="lr,rf", help="Comma-separated: lr, rf, ct, hgb (see train).")
    parser.add_argument("--server", action="append", default=[], metavar="WxT",
                        help="Also run blackbox serve with WORKERS x THREADS (repeatable), to compare layouts.")
    args = parser.parse_args()
    duration = args.duration or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 2)
    driver = "wrk" if shutil.which("wrk") else "http.client threads"
    if driver != "wrk":
        print("bench_server: wrk not found (apt-get install wrk); falling back to http.client threads, "
              "which take CPU from the server: server numbers will be low", file=sys.stderr)

    records = titanic_records()
    results: dict[str, Any] = {"machine": machine(), "driver": driver, "duration_s": duration, "rounds": rounds, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        private, public = signing.keygen(Path(tmp), "bench")
        for kind in args.models.split(","):
            path = train(kind, Path(tmp), private)
            model = blackbox.load(path, trusted_keys=[str(public)])
            reference = blackbox.load(path, trusted_keys=[str(public)], fast_path=False)  # what every server must answer
            print(f"\n== {kind}: {model.estimator.steps[-1][1]!r}", file=sys.stderr)
            layouts = [("blackbox", []), ("blackbox no-batching", ["--no-batching"]), ("blackbox no-fast-path", ["--no-fast-path"])]
            layouts += [(f"blackbox {w}", ["--workers", w.lower().split("x")[0], "--threads", w.lower().split("x")[1]])
                        for w in args.server]
            with contextlib.ExitStack() as stack:  # every server up at once: their cells interleave (see load_rows)
                servers = {label: stack.enter_context(BlackboxServer(path, public, options)) for label, options in layouts}
                for label, server in servers.items():
                    check_predictions(server.port, reference, records, label)
                servers[CEILING] = stack.enter_context(CeilingServer())
                servers[BASELINE] = stack.enter_context(BaselineServer(path, public))
                rows = in_process_rows(model, records, duration)
                rows += load_rows(servers, records, duration, driver, rounds)
                rows += single_rows(model, servers, records, duration)
                order = ["in-process", *servers]
                rows.sort(key=lambda r: (order.index(r["where"]), r["records_per_call"], r["concurrency"]))
            complete = next(r for r in records if None not in r.values())
            cold = cold_start(path, public, Path(tmp), complete, repeats=2 if args.quick else 3)
            results["models"][kind] = {"model": model.manifest.estimator, "sha256": model.sha256,
                                       "rows": rows, "cold_start": cold, "targets": targets(rows, cold, kind)}

    for kind, result in results["models"].items():
        print(f"\n## {kind}\n\n{table(result['rows'])}\n\n{cold_table(result['cold_start'])}\n\n{targets_table(result['targets'])}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "server.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nload generator: {driver}; wrote {out}")


# -- the artifacts -----------------------------------------------------------
def titanic_records() -> list[dict[str, Any]]:
    """Titanic passengers as JSON gives them (missing age/fare as null), rows the schema accepts."""
    from training.data import load_titanic

    X, _ = load_titanic()
    return json.loads(X.dropna(subset=["embarked"]).to_json(orient="records"))


def train(kind: str, tmp: Path, private: Path) -> Path:
    """A signed Titanic model: the training package's pipeline with a LogisticRegression (``lr``) or a
    100-tree RandomForest (``rf``), or scikit-learn's own ColumnTransformer (imputers, a scaler, a default
    OneHotEncoder) and a LogisticRegression (``ct``) or a HistGradientBoostingClassifier (``hgb``): library
    steps only, so the plan compiles all of it, where ``lr`` and ``rf`` call the training package's feature
    classes as they are."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    from training.data import load_titanic
    from training.pipeline import build_pipeline

    X, y = load_titanic()
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=42)
    pipeline = build_pipeline(X_train.columns, seed=42)
    if kind == "rf":
        pipeline.set_params(model=RandomForestClassifier(n_estimators=100, random_state=42))
    elif kind in ("ct", "hgb"):
        pipeline = library_pipeline(kind)
    elif kind != "lr":
        sys.exit(f"bench_server: unknown model {kind!r}; use lr, rf, ct or hgb")
    pipeline.fit(X_train, y_train)
    return blackbox.save(pipeline, tmp / f"titanic-{kind}.bbx", train_data=X_train, name=f"titanic-{kind}",
                         version="bench", signing_key=private)


def library_pipeline(kind: str) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encode = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["age", "fare", "sibsp", "parch"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["sex", "embarked", "pclass"]),
    ])
    model = HistGradientBoostingClassifier(random_state=42) if kind == "hgb" else LogisticRegression(max_iter=1000)
    return Pipeline([("encode", encode), ("model", model)])


# -- in-process --------------------------------------------------------------
def in_process_rows(model: blackbox.Model, records: list[dict], duration: float) -> list[dict]:
    """dict -> prediction in this process, one call at a time."""
    rows = []
    cases: list[tuple[str, int, Callable[[int], Any]]] = []
    for size in (32, BATCH, 1000):
        batches = [records[i:i + size] for i in range(0, len(records) - size + 1, size)]
        cases.append(("Model.predict_batch", size, lambda i, b=batches: model.predict_batch(b[i % len(b)])))
    for what, size, call in cases:
        calls, seconds, p50, p99, _ = timed(call, duration / 2)
        rows.append(row("in-process", what, size, 1, calls, seconds, p50, p99, 0))
    return rows


def timed(call: Callable[[int], Any], duration: float) -> tuple[int, float, float, float, int]:
    """Call ``call(i)`` one at a time for ``duration`` seconds: (calls, seconds, p50 ms, p99 ms, errors)."""
    call(0)  # warm up
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < duration or len(latencies) < 3:
        t0 = time.perf_counter()
        call(len(latencies))
        latencies.append(time.perf_counter() - t0)
    return len(latencies), time.perf_counter() - started, 1000 * statistics.median(latencies), 1000 * percentile(latencies, 99), 0


def single_rows(model: blackbox.Model, servers: dict[str, Process], records: list[dict], duration: float) -> list[dict]:
    """One record at a time, in-process and on every server, interleaved call by call for ``duration`` seconds per side.

    Each record is predicted in-process and then posted to every server in
    turn, so every side's p50 is taken over the same stretch of time and the
    in-process ratio is fair. Each server thus sits idle while the other sides
    answer (~10 ms), and its threads wake from sleep for every call: this is
    the latency of a rarely-called server, a harder case than wrk's closed
    loop at c=1 (:func:`load_rows`), which the c=1 target reads. The client is
    a keep-alive ``http.client`` connection (reopened when a sync worker closes
    it); its own ~0.1 ms per call counts against the servers.
    """
    bodies = [json.dumps(record).encode() for record in records]
    connections = {label: http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for label, server in servers.items()}

    def post(label: str, i: int) -> bool:
        connections[label].request("POST", "/predict", bodies[i % len(bodies)], HEADERS)
        response = connections[label].getresponse()
        response.read()
        return response.status == 200

    sides: dict[str, Callable[[int], Any]] = {"in-process": lambda i: model.predict(records[i % len(records)])}
    sides.update({label: (lambda i, label=label: post(label, i)) for label in servers})
    latencies: dict[str, list[float]] = {label: [] for label in sides}
    errors = dict.fromkeys(sides, 0)
    for call in sides.values():  # warm up
        call(0)
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration * len(sides) or i < 3:
        for label, call in sides.items():
            t0 = time.perf_counter()
            ok = call(i)
            latencies[label].append(time.perf_counter() - t0)
            errors[label] += ok is False
        i += 1
    seconds = time.perf_counter() - started
    for connection in connections.values():
        connection.close()
    rows = []
    for label, samples in latencies.items():
        what = "Model.predict" if label == "in-process" else CALL_BY_CALL
        share = seconds * sum(samples) / sum(map(sum, latencies.values()))  # this side's part of the wall time
        rows.append(row(label, what, 1, 1, len(samples), share, 1000 * statistics.median(samples),
                        1000 * percentile(samples, 99), errors[label]))
        print(f"{label:<24}    1 rec c=1   {len(samples)} calls interleaved, p50 {rows[-1]['p50_ms']:.1f} ms", file=sys.stderr)
    return rows


# -- servers -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A server subprocess on a free loopback port; ready when ``ready_line`` appears ``workers`` times."""

    def __init__(self, command: list[str], env: dict[str, str], ready: Callable[[str], bool]) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  closed in __exit__
        self.ready = ready
        self.process = subprocess.Popen([*command, *self.bind_args()], stdout=self.log, stderr=self.log, env=env)

    def bind_args(self) -> list[str]:
        raise NotImplementedError

    def batch_totals(self) -> tuple[float, float]:
        return 0.0, 0.0

    def __enter__(self) -> Process:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ready(self.text()):
                return self
            time.sleep(0.2)
        sys.exit(f"bench_server: a server did not become ready:\n{self.text()[-3000:]}")

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class BlackboxServer(Process):
    """``blackbox serve`` with the command's defaults plus ``options``."""

    def __init__(self, artifact: Path, public: Path, options: Sequence[str]) -> None:
        command = [sys.executable, "-m", "blackbox", "serve", str(artifact), "--trusted-keys", str(public),
                   "--log-format", "text", *options]
        super().__init__(command, dict(os.environ), self._loaded)

    def bind_args(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.port)]

    @staticmethod
    def _loaded(text: str) -> bool:
        workers = re.search(r"starting (\d+) worker", text)
        return bool(workers) and text.count("event=model_loaded") >= int(workers.group(1))

    def batch_totals(self) -> tuple[float, float]:
        """(records, model calls) so far, from blackbox's ``blackbox_batch_records`` histogram (zeros elsewhere)."""
        body = request(self.port, "GET", "/metrics")[1].decode()
        found = {"sum": 0.0, "count": 0.0}
        for m in re.finditer(r"^blackbox_batch_records_(sum|count)(?:\{[^}]*\})? (\S+)$", body, re.M):
            found[m.group(1)] += float(m.group(2))
        return found["sum"], found["count"]


class BaselineServer(Process):
    """bench/flask_baseline.py under ``gunicorn -w 2 -k sync``."""

    def __init__(self, artifact: Path, public: Path) -> None:
        env = {**os.environ, "BASELINE_ARTIFACT": str(artifact), "BASELINE_TRUSTED_KEY": str(public)}
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "--chdir", str(BENCH)]
        super().__init__(command, env, lambda text: text.count("baseline_loaded") >= 2)

    def bind_args(self) -> list[str]:
        return ["-b", f"127.0.0.1:{self.port}", "flask_baseline:app"]


class CeilingServer(Process):
    """bench/flask_ceiling.py (parse the body, answer a constant) with blackbox serve's gunicorn settings."""

    def __init__(self, workers: int = 2, threads: int = DEFAULT_THREADS) -> None:
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread", "--threads", str(threads),
                   "--keep-alive", "5", "--chdir", str(BENCH)]
        super().__init__(command, dict(os.environ), lambda text: text.count("ceiling_loaded") >= workers)

    def bind_args(self) -> list[str]:
        return ["-b", f"127.0.0.1:{self.port}", "flask_ceiling:app"]


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, HEADERS)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_predictions(port: int, model: blackbox.Model, records: list[dict], label: str) -> None:
    """The server must answer what ``model`` (in-process, without the fast path) gives: 300 single records sent 16 at a time, and batches."""
    sample = records[:300]
    expected_predictions, expected_proba = model.predict_and_proba_frame(model.prepare(sample)[0])
    with ThreadPoolExecutor(16) as pool:
        singles = list(pool.map(lambda r: request(port, "POST", "/predict", json.dumps(r).encode()), sample))
    batches = [request(port, "POST", "/predict", json.dumps(sample[i:i + BATCH]).encode()) for i in range(0, len(sample), BATCH)]
    for how, answers in (("one by one, concurrently", singles), ("in batches", batches)):
        bad = [status for status, _ in answers if status != 200]
        if bad:
            sys.exit(f"bench_server: {label} answered {len(bad)} of {len(answers)} requests {how} with errors {sorted(set(bad))}")
        bodies = [json.loads(body) for _, body in answers]
        got = [p for b in bodies for p in b["predictions"]]
        proba = [p for b in bodies for p in b["probabilities"]]
        differ = sum(g != e for g, e in zip(got, expected_predictions)) + len(got) - len(expected_predictions)
        gap = max(abs(a - b) for p, e in zip(proba, expected_proba) for a, b in zip(p, e))
        if differ or len(proba) != len(sample) or gap > PROBA_TOLERANCE:
            sys.exit(f"bench_server: FAILED: {label}: sent {how}, {differ} predictions differ from in-process "
                     f"(largest probability difference {gap:.3g}, tolerance {PROBA_TOLERANCE})")
    print(f"{label}: predictions equal in-process (probabilities within {PROBA_TOLERANCE}) on {len(sample)} records (singly and in batches)", file=sys.stderr)


# -- load --------------------------------------------------------------------
def load_rows(servers: dict[str, Process], records: list[dict], duration: float, driver: str, rounds: int) -> list[dict]:
    """Every cell on every server in turn, ``rounds`` times: a change in the background load hits all servers alike.

    The servers take turns going first (a cell right after a sync server's c=100 cell ran ~2x slower: that
    server was still answering its backlog), with a pause before each cell. A row is one server's cell over
    all rounds (calls and seconds summed, the
    median of the rounds' p50 and p99); ``round_calls_per_s`` keeps each round's
    rate, so ratios can be taken within a round (:func:`paired`).
    """
    singles = [json.dumps(record) for record in records]
    batches = [json.dumps(records[i:i + BATCH]) for i in range(0, len(records) - BATCH + 1, BATCH)]
    cells = [(singles, 1, c) for c in SINGLE_CONCURRENCY] + [(batches, BATCH, c) for c in BATCH_CONCURRENCY]
    drive = wrk if driver == "wrk" else threads
    for server in servers.values():
        drive(server.port, singles[:50], 8, 1.0)  # warm up every worker and thread
    measured: dict[tuple[str, int, int], list[tuple[int, float, float | None, float | None, int, float | None]]] = {}
    labels = list(servers)
    for round_ in range(rounds):
        for cell, (bodies, size, concurrency) in enumerate(cells):
            shift = (round_ + cell) % len(labels)  # who goes first turns, so no server always follows the same one
            for label in labels[shift:] + labels[:shift]:
                server = servers[label]
                if label == CEILING and size > 1:
                    continue  # it answers a constant: its records/s mean nothing
                time.sleep(SETTLE_S)  # the server before may still be answering its backlog (a sync worker's queue)
                before = server.batch_totals()
                calls, seconds, p50, p99, errors = drive(server.port, bodies, concurrency, duration)
                after = server.batch_totals()
                per_call = (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None
                measured.setdefault((label, size, concurrency), []).append((calls, seconds, p50, p99, errors, per_call))
                print(f"round {round_ + 1} {label:<24} {size:>4} rec c={concurrency:<3} {calls / seconds:8.1f} req/s  "
                      f"p50 {ms(p50)} ms  p99 {ms(p99)} ms  load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    for (label, size, concurrency), runs in measured.items():
        p50s = [r[2] for r in runs if r[2] is not None]
        p99s = [r[3] for r in runs if r[3] is not None]
        rows.append(row(label, "POST /predict", size, concurrency, sum(r[0] for r in runs), sum(r[1] for r in runs),
                        statistics.median(p50s) if p50s else None, statistics.median(p99s) if p99s else None,
                        sum(r[4] for r in runs)))
        rows[-1]["round_calls_per_s"] = [r[0] / r[1] for r in runs]
        per_call = [r[5] for r in runs if r[5] is not None]
        if per_call:  # blackbox: records per model call, from its own histogram
            rows[-1]["records_per_model_call"] = statistics.mean(per_call)
    return rows


def wrk(port: int, bodies: list[str], concurrency: int, duration: float) -> tuple[int, float, float | None, float | None, int]:
    """wrk with ``concurrency`` keep-alive connections posting bodies round-robin."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script, data = Path(tmp) / "post.lua", Path(tmp) / "bodies.txt"
        script.write_text(WRK_SCRIPT)
        data.write_text("\n".join(bodies) + "\n")
        command = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--timeout", "30s",
                   "-s", str(script), f"http://127.0.0.1:{port}/predict", "--", str(data)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    found = re.search(r"^WRK (.*)$", out.stdout, re.M)
    if out.returncode or not found:
        sys.exit(f"bench_server: wrk failed:\n{out.stdout}\n{out.stderr}")
    r = json.loads(found.group(1))
    return r["calls"], r["seconds"], r["p50_ms"], r["p99_ms"], r["errors"]


def threads(port: int, bodies: list[str], concurrency: int, duration: float) -> tuple[int, float, float | None, float | None, int]:
    """The fallback: one thread per keep-alive ``http.client`` connection."""
    encoded = [body.encode() for body in bodies]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, failed, i = [], 0, offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            conn.request("POST", "/predict", encoded[i % len(encoded)], HEADERS)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t0)
            failed += response.status != 200
            i += concurrency
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if not latencies:
        return 0, time.perf_counter() - started, None, None, errors[0]
    return len(latencies), time.perf_counter() - started, 1000 * statistics.median(latencies), 1000 * percentile(latencies, 99), errors[0]


# -- cold start --------------------------------------------------------------
def cold_start(path: Path, public: Path, tmp: Path, record: dict, repeats: int) -> dict[str, Any]:
    """Fresh interpreters doing each start-up, ``repeats`` rounds of every script back to back.

    Medians of wall and CPU (user + system) seconds per script; ``ratio`` is the
    median over rounds of each round's blackbox / dill wall time, so that both
    sides of a ratio ran seconds apart under the same background load.
    """
    artifact = unpack(path.read_bytes())
    pickled = tmp / f"{path.stem}.pkl"
    pickled.write_bytes(artifact.payload)  # the same model as a plain dill pickle
    scripts = {
        "import sklearn, pandas": "import sklearn, pandas",
        "dill.load + predict": (f"import dill, pandas as pd\nwith open({str(pickled)!r}, 'rb') as f: m = dill.load(f)\n"
                                f"m.predict(pd.DataFrame([{record!r}]))"),  # a record without missing values
        "blackbox.load + self_test": (f"import blackbox\nblackbox.load({str(path)!r}, trusted_keys=[{str(public)!r}]).self_test()"),
    }
    wall: dict[str, list[float]] = {name: [] for name in scripts}
    cpu: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(repeats):
        for name, script in scripts.items():
            t0 = time.perf_counter()
            child = subprocess.Popen([sys.executable, "-c", script])
            _, status, usage = os.wait4(child.pid, 0)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(usage.ru_utime + usage.ru_stime)
            if status:
                sys.exit(f"bench_server: cold-start script {name!r} failed ({status})")
    rounds = zip(wall["blackbox.load + self_test"], wall["dill.load + predict"])
    return {"wall_s": {name: statistics.median(v) for name, v in wall.items()},
            "cpu_s": {name: statistics.median(v) for name, v in cpu.items()},
            "ratio": statistics.median(ours / theirs for ours, theirs in rounds), "rounds": repeats}


# -- reporting ---------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def row(where: str, what: str, size: int, concurrency: int, calls: int, seconds: float, p50: float | None, p99: float | None,
        errors: int) -> dict:
    """One cell; latencies are None when no call completed in it."""
    return {"where": where, "what": what, "records_per_call": size, "concurrency": concurrency, "calls": calls,
            "calls_per_s": calls / seconds, "records_per_s": calls * size / seconds,
            "p50_ms": p50 if calls else None, "p99_ms": p99 if calls else None, "errors": errors}


def find(rows: list[dict], where: str, size: int, concurrency: int = 1, what: str | None = None) -> dict:
    """A cell; a server's c=1 is its closed loop (wrk) unless ``what`` asks for the call-by-call row."""
    return next(r for r in rows if r["where"] == where and r["records_per_call"] == size and r["concurrency"] == concurrency
                and (r["what"] == what if what else r["what"] != CALL_BY_CALL))


def paired(rows: list[dict], a: dict, b: dict) -> float | None:
    """The median over rounds of a's req/s over b's in the same round (the cells ran seconds apart)."""
    ours, theirs = a.get("round_calls_per_s"), b.get("round_calls_per_s")
    if not ours or not theirs:
        return ratio(a["calls_per_s"], b["calls_per_s"])
    return statistics.median(x / y for x, y in zip(ours, theirs) if y)


def targets(rows: list[dict], cold: dict[str, Any], kind: str) -> list[dict]:
    """The issues' targets as measured ratios or values; ``met`` is None where no goal is set (or a cell had no data).

    #19's goals are for the LogisticRegression (the RandomForest's are reported);
    the MLServer p99s are the anchor for both.
    """
    ours, ceiling, base = find(rows, "blackbox", 1, 32), find(rows, CEILING, 1, 32), find(rows, BASELINE, 1, 32)
    alone = find(rows, "in-process", 1)
    single = find(rows, "blackbox", 1, 1)
    apart = find(rows, "blackbox", 1, 1, CALL_BY_CALL)
    batched = max((find(rows, "blackbox", BATCH, c) for c in BATCH_CONCURRENCY), key=lambda r: r["records_per_s"])
    lr = kind == "lr"
    checks = [
        ("c=32 single req/s vs flask ceiling (same round)", paired(rows, ours, ceiling), ">=", 0.75 if lr else None),
        ("c=32 single req/s vs flask baseline (same round)", paired(rows, ours, base), ">=", 10.0 if lr else None),
        ("c=32 single p99 ms", ours["p99_ms"], "<=", 30.0 if lr else None),
        ("c=1 single p50 ms (closed loop, wrk)", single["p50_ms"], "<=", 2.0 if lr else None),
        ("c=1 single p50 ms, call by call between the other sides' calls", apart["p50_ms"], "<=", None),
        *[(f"c={c} single p99 ms vs MLServer's published {p99:g} ms", find(rows, "blackbox", 1, c)["p99_ms"], "<=", p99)
          for c, p99 in MLSERVER_P99_MS.items()],
        ("c=1 single p50 vs in-process Model.predict (both call by call)", ratio(apart["p50_ms"], alone["p50_ms"]), "<=", None),
        (f"{BATCH}-record req records/s vs in-process predict_batch({BATCH})",
         ratio(batched["records_per_s"], find(rows, "in-process", BATCH)["records_per_s"]), ">=", 0.5),
        ("cold start vs dill.load + predict (median of paired rounds)", cold["ratio"], "<=", 1.2),
    ]
    return [{"target": name, "ratio": value, "goal": None if goal is None else f"{op} {goal}",
             "met": None if goal is None or value is None else (value >= goal if op == ">=" else value <= goal)}
            for name, value, op, goal in checks]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def table(rows: list[dict]) -> str:
    head = (f"| {'where':<22} | {'rec/req':>7} | {'conc':>4} | {'req/s':>8} | {'records/s':>9} | {'p50 ms':>7} | "
            f"{'p99 ms':>7} | {'errors':>6} | {'rec/call':>8} |")
    lines = [head, re.sub(r"[^|]", "-", head)]
    for r in rows:
        lines.append(f"| {r['where']:<22} | {r['records_per_call']:>7} | {r['concurrency']:>4} | {r['calls_per_s']:>8.1f} | "
                     f"{r['records_per_s']:>9.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {r['errors']:>6} | "
                     f"{ms(r.get('records_per_model_call'), 8)} |")
    return "\n".join(lines)


def ms(value: float | None, width: int = 7) -> str:
    return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"


def cold_table(cold: dict[str, Any]) -> str:
    return (f"cold start (fresh interpreter, median of {cold['rounds']} rounds, wall / CPU): "
            + "; ".join(f"{name} {seconds:.2f} / {cold['cpu_s'][name]:.2f} s" for name, seconds in cold["wall_s"].items()))


def targets_table(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        verdict = "(reported)" if c["met"] is None else ("MET" if c["met"] else "NOT MET")
        unit = " ms" if re.search(r"p\d\d ms", c["target"]) else "x"
        measured = "no data" if c["ratio"] is None else f"{c['ratio']:.2f}{unit}"
        lines.append(f"- {c['target']}: {measured} {c['goal'] or ''} {verdict}")
    return "targets:\n" + "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average": os.getloadavg()}


if __name__ == "__main__":
    main()
