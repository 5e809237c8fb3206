"""Prediction server throughput and latency, beside the same model in-process, on the Titanic model.

Starts ``blackbox serve`` on a free 127.0.0.1 port (one run per ``--server
WORKERSxTHREADS``; default: the command's own defaults), checks that its
predictions equal ``Model.predict_batch`` in-process, then drives it for
``--duration`` seconds per scenario with a small keep-alive ``http.client``
load generator (one thread per connection: cheap next to a prediction, so it
leaves the server's two cores alone): single records at concurrency 1, 8 and
32, and 100-record batches at concurrency 1 and 8. In-process rows measure
``Model.predict`` (1 record), ``Model.predict_batch`` (100) and the work a
request does (validate, predict, probabilities). Prints a table and writes
bench/results/server.json. Loopback only; bounded in time (about a minute per
server configuration, plus ~10 s to train when no artifact is given).

    .venv/bin/python bench/bench_server.py [--artifact PATH (--trusted-keys PUB | --allow-unsigned)]
        [--duration 4] [--server 2x1 --server 2x2 ...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blackbox
import blackbox.cli
from blackbox import signing
from serving.inference import Scorer

RESULTS = Path(__file__).resolve().parent / "results"
HEADERS = {"Content-Type": "application/json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="Artifact to serve (default: train the small Titanic grid).")
    parser.add_argument("--trusted-keys", help="Public key the artifact is signed with.")
    parser.add_argument("--allow-unsigned", action="store_true")
    parser.add_argument("--duration", type=float, default=4.0, help="Seconds per scenario.")
    parser.add_argument("--server", action="append", default=[], metavar="WxT",
                        help="Workers x threads to run the server with (repeatable); default: blackbox serve's defaults.")
    args = parser.parse_args()

    records = titanic_records()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        artifact, trust = (args.artifact, trust_options(args)) if args.artifact else train(Path(tmp))
        model = blackbox.load(artifact, **trust)
        rows = in_process_rows(model, records, args.duration)
        for config in args.server or [""]:
            rows += server_rows(artifact, trust, config, model, records, args.duration)

    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "server.json"
    out.write_text(json.dumps({"machine": machine(), "model": {"name": model.name, "version": model.version,
                                                               "sha256": model.sha256}, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


def titanic_records() -> list[dict[str, Any]]:
    """Held-out-like Titanic passengers as JSON gives them (rows the schema accepts)."""
    from training.data import load_titanic

    X, _ = load_titanic()
    return json.loads(X.dropna(subset=["embarked"]).to_json(orient="records"))


def trust_options(args: argparse.Namespace) -> dict[str, Any]:
    """blackbox.load's trust options for a given artifact."""
    if args.trusted_keys:
        return {"trusted_keys": [args.trusted_keys]}
    if args.allow_unsigned:
        return {"allow_unsigned": True}
    sys.exit("bench_server: pass --trusted-keys PUB (or --allow-unsigned) with --artifact")


def trust_flags(trust: dict[str, Any]) -> list[str]:
    """The same options for ``blackbox serve``."""
    return ["--trusted-keys", str(trust["trusted_keys"][0])] if "trusted_keys" in trust else ["--allow-unsigned"]


def train(tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The small Titanic grid, saved and signed with a throw-away key."""
    from sklearn.model_selection import train_test_split

    from training.data import load_titanic
    from training.pipeline import search

    X, y = load_titanic()
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=42)
    private, public = signing.keygen(tmp, "bench")
    grid = search(X_train, y_train, seed=42, n_jobs=-1, small=True)
    path = blackbox.save(grid, tmp / "titanic.bbx", train_data=X_train, name="titanic", version="bench", signing_key=private)
    return path, {"trusted_keys": [str(public)]}


# -- in-process --------------------------------------------------------------
def in_process_rows(model: blackbox.Model, records: list[dict], duration: float) -> list[dict]:
    batches = [records[i:i + 100] for i in range(0, len(records) - 99, 100)]
    score = Scorer().score
    cases: list[tuple[str, int, Callable[[int], Any]]] = [
        ("Model.predict", 1, lambda i: model.predict(records[i % len(records)])),
        ("validate+predict+proba", 1, lambda i: score(model, [records[i % len(records)]], strict=False)),
        ("Model.predict_batch", 100, lambda i: model.predict_batch(batches[i % len(batches)])),
        ("validate+predict+proba", 100, lambda i: score(model, batches[i % len(batches)], strict=False)),
    ]
    rows = []
    for name, size, call in cases:
        call(0)  # warm up
        latencies, elapsed = repeat_for(call, duration)
        rows.append(row("in-process", name, size, 1, latencies, elapsed, errors=0))
    return rows


def repeat_for(call: Callable[[int], Any], duration: float) -> tuple[list[float], float]:
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < duration:
        t0 = time.perf_counter()
        call(len(latencies))
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


# -- the server --------------------------------------------------------------
def server_rows(artifact: Path, trust: dict[str, Any], config: str, model: blackbox.Model, records: list[dict],
                duration: float) -> list[dict]:
    options = []
    if config:
        workers, threads = config.lower().split("x")
        options = ["--workers", workers, "--threads", threads]
    label = f"server {config or 'default'}"
    with Server(artifact, [*trust_flags(trust), *options]) as server:
        check_predictions(server, model, records)
        singles = [json.dumps(record).encode() for record in records]
        batches = [json.dumps(records[i:i + 100]).encode() for i in range(0, len(records) - 99, 100)]
        rows = []
        for name, bodies, size, concurrency in [("POST /predict", singles, 1, c) for c in (1, 8, 32)] + [
                ("POST /predict", batches, 100, c) for c in (1, 8)]:
            drive(server.port, bodies[:16], 4, 1.0)  # warm every worker
            latencies, elapsed, errors = drive(server.port, bodies, concurrency, duration)
            rows.append(row(label, name, size, concurrency, latencies, elapsed, errors))
    return rows


class Server:
    """``blackbox serve`` on a free loopback port, stopped with SIGTERM on exit."""

    def __init__(self, artifact: Path, options: Sequence[str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        registered = "serve" in blackbox.cli.cli.commands
        command = [sys.executable, "-m", "blackbox", "serve"] if registered else [sys.executable, "-m", "serving"]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([*command, str(artifact), "--host", "127.0.0.1", "--port", str(self.port),
                                         "--log-format", "text", *options], stdout=self.log, stderr=self.log)

    def __enter__(self) -> Server:
        """Wait until every worker has loaded the model (/ready answers for whichever worker got it)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            self.log.seek(0)
            text = self.log.read().decode()
            workers = re.search(r"starting (\d+) worker", text)
            if workers and text.count("event=model_loaded") >= int(workers.group(1)):
                return self
            time.sleep(0.2)
        self.log.seek(0)
        sys.exit(f"bench_server: the server did not become ready:\n{self.log.read().decode()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, HEADERS)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_predictions(server: Server, model: blackbox.Model, records: list[dict]) -> None:
    """The server must answer exactly what the model predicts in-process, singly and in batches."""
    sample = records[:300]
    got = []
    for i in range(0, len(sample), 100):
        status, body = request(server.port, "POST", "/predict", json.dumps(sample[i:i + 100]).encode())
        got += json.loads(body)["predictions"] if status == 200 else [None] * 100
    got[:20] = [json.loads(request(server.port, "POST", "/predict", json.dumps(r).encode())[1])["predictions"][0]
                for r in sample[:20]]
    expected = model.predict_batch(sample)
    if got != expected:
        sys.exit(f"bench_server: {sum(g != e for g, e in zip(got, expected))} server predictions differ from in-process")
    print(f"server predictions equal in-process Model.predict_batch on {len(sample)} records", file=sys.stderr)


def drive(port: int, bodies: list[bytes], concurrency: int, duration: float) -> tuple[list[float], float, int]:
    """``concurrency`` keep-alive connections posting bodies round-robin for ``duration`` seconds."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, i = [], offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            conn.request("POST", "/predict", bodies[i % len(bodies)], HEADERS)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t0)
            if response.status != 200:
                with lock:
                    errors[0] += 1
            i += concurrency
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors[0]


# -- reporting ---------------------------------------------------------------
def row(where: str, what: str, size: int, concurrency: int, latencies: list[float], elapsed: float, errors: int) -> dict:
    ordered = sorted(latencies)
    return {
        "where": where, "what": what, "records_per_call": size, "concurrency": concurrency, "calls": len(ordered),
        "calls_per_s": len(ordered) / elapsed, "records_per_s": len(ordered) * size / elapsed,
        "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors,
    }


def table(rows: list[dict]) -> str:
    head = f"| {'where':<16} | {'what':<22} | {'rec/call':>8} | {'conc':>4} | {'calls/s':>8} | {'records/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} |"
    lines = [head, "|" + "|".join("-" * (len(cell) + 0) for cell in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(
            f"| {r['where']:<16} | {r['what']:<22} | {r['records_per_call']:>8} | {r['concurrency']:>4} | {r['calls_per_s']:>8.1f} | "
            f"{r['records_per_s']:>9.0f} | {r['p50_ms']:>7.1f} | {r['p99_ms']:>7.1f} | {r['errors']:>6} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


if __name__ == "__main__":
    main()
