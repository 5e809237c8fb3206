"""What the prediction log costs a request: ``blackbox serve`` with ``--prediction-log`` (SQLite) and without.

One run, one artifact, one server layout: the same gunicorn server runs twice,
on two free 127.0.0.1 ports, without the log and with a SQLite log in a
temporary directory. Each cell (single records at concurrency 1 and 8,
100-record requests at concurrency 2; keep-alive ``http.client`` threads) drives
them in turn, three rounds of ``--duration``/3 seconds each, so both see the
same machine load (an idle server costs nothing). After the run both are
stopped with SIGTERM and the database must hold exactly the records the logged
server answered, so the numbers are for a log that kept up. Prints a table with
the on/off ratios and writes bench/results/predlog.json.

    .venv/bin/python bench/bench_predlog.py [--artifact artifacts/titanic.bbx] [--trusted-keys keys/blackbox.pub]
        [--duration 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CELLS = (("single", 1, 1), ("single", 1, 8), ("batch", 100, 2))  # (what, records per request, concurrency)
ROUNDS = 3
RECORD = {"pclass": 3, "sex": "male", "age": 22, "sibsp": 1, "parch": 0, "fare": 7.25, "embarked": "S",
          "name": "Braund, Mr. Owen Harris"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "titanic.bbx")
    parser.add_argument("--trusted-keys", type=Path, default=ROOT / "keys" / "blackbox.pub")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per cell (bounded: at most 30).")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.artifact.exists():
        sys.exit(f"No artifact at {args.artifact}: run scripts/main.sh (or blackbox-train --out {args.artifact}) first.")
    duration = min(args.duration, 30.0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-predlog-") as tmp:
        database = Path(tmp) / "predictions.db"
        servers = {mode: start(args, extra, Path(tmp) / f"{mode}.log")
                   for mode, extra in (("off", []), ("sqlite", ["--prediction-log", str(database)]))}
        try:
            for what, size, concurrency in CELLS:
                measured: dict[str, list[tuple[float, list[float]]]] = {mode: [] for mode in servers}
                for _ in range(ROUNDS):  # alternate, so both modes see the same machine load
                    for mode, server in servers.items():
                        measured[mode].append(load(server["port"], [RECORD] * size, concurrency, duration / ROUNDS))
                        server["answered"] += len(measured[mode][-1][1]) * size
                rows += [{"log": mode, "what": what, "records": size, "concurrency": concurrency, **summary(runs, size)}
                         for mode, runs in measured.items()]
        finally:
            codes = {mode: stop(server) for mode, server in servers.items()}
        with sqlite3.connect(database) as conn:
            logged = conn.execute("SELECT COUNT(*) FROM blackbox_predictions").fetchone()[0]
        if logged != servers["sqlite"]["answered"] or set(codes.values()) != {0}:
            sys.exit(f"the log holds {logged} rows for {servers['sqlite']['answered']} answered records "
                     f"(server exits {codes}): see {servers['sqlite']['log']}")
    writer = writer_cost()
    print(table(rows))
    print("\nwriter thread, CPU per record (in process, SQLite): "
          + ", ".join(f"{size}-row transactions {ms:.3f} ms" for size, ms in writer.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "predlog.json"
    out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": len(_cpus())},
                               "duration": duration, "workers": args.workers, "rows": rows,
                               "writer_cpu_ms_per_record": writer}, indent=2))
    print(f"\nwrote {out}")


def start(args: argparse.Namespace, extra: list[str], log: Path) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "blackbox", "serve", str(args.artifact), "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(args.workers), "--trusted-keys", str(args.trusted_keys), *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}: {log.read_text()}")
        if log.read_text().count('"event":"model_loaded"') >= args.workers and _ready(port):
            warmup = load(port, [RECORD], 2, 0, requests=20)[1]
            return {"process": process, "port": port, "log": log, "answered": len(warmup)}
        time.sleep(0.2)
    process.kill()
    sys.exit(f"server not ready after 60 s: {log.read_text()}")


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop(server: dict[str, Any]) -> int:
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def load(port: int, body: list[dict], concurrency: int, duration: float, requests: int | None = None) -> tuple[float, list[float]]:
    """Drive POST /predict from ``concurrency`` keep-alive connections for ``duration`` s (or ``requests`` in all).

    Returns the wall time and every request's latency in seconds; any failed request ends the run.
    """
    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    budget = [requests]
    end = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            send(conn)
        except (OSError, http.client.HTTPException):
            with lock:
                errors[0] += 1
        finally:
            conn.close()

    def send(conn: http.client.HTTPConnection) -> None:
        while True:
            with lock:
                if budget[0] is not None:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                elif time.monotonic() >= end:
                    return
            started = time.perf_counter()
            conn.request("POST", "/predict", payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - started)
                errors[0] += response.status != 200

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors[0]:
        sys.exit(f"{errors[0]} requests failed")
    return time.monotonic() - started, latencies


def summary(runs: list[tuple[float, list[float]]], size: int) -> dict[str, Any]:
    seconds = sum(wall for wall, _ in runs)
    latencies = sorted(latency for _, batch in runs for latency in batch)
    return {
        "requests": len(latencies), "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 1), "records_per_s": round(len(latencies) * size / seconds, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2), "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
    }


def writer_cost() -> dict[int, float]:
    """CPU milliseconds per record the writer spends building rows and inserting them, by transaction size.

    CPU time, not wall time, so other load on the machine does not count: this is
    what logging takes from a worker's cores, whatever the request latencies say.
    """
    from blackbox.monitoring.predlog import PredictionLog, prediction_rows

    fields = list(RECORD)
    costs = {}
    with tempfile.TemporaryDirectory(prefix="bench-predlog-") as tmp:
        log = PredictionLog(Path(tmp) / "writer.db")
        log.ensure_tables()
        for size in (1, 100, 1000):
            started, total = time.process_time(), 0
            while total < 3000:
                log.append(prediction_rows(
                    request_id="bench", ts=datetime.now(UTC), model={"name": "m", "version": "1", "sha256": "0" * 64},
                    client_id=None, latency_ms=1.0, fields=fields, records=[RECORD] * size, predictions=[0] * size,
                    probabilities=[[0.5, 0.5]] * size,
                ))
                total += size
            costs[size] = round((time.process_time() - started) * 1000 / total, 4)
        log.dispose()
    return costs


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'request':<14}{'c':>3}  {'log':<7}{'req/s':>8}{'rec/s':>9}{'p50 ms':>9}{'p99 ms':>9}   on/off: req/s  p50  p99"]
    for what, size, concurrency in CELLS:
        off, on = (next(r for r in rows if r["log"] == mode and r["what"] == what and r["concurrency"] == concurrency)
                   for mode in ("off", "sqlite"))
        for row in (off, on):
            ratio = "" if row is off else (f"   {on['requests_per_s'] / off['requests_per_s']:11.2f}"
                                           f" {on['p50_ms'] / off['p50_ms']:5.2f} {on['p99_ms'] / off['p99_ms']:4.2f}")
            lines.append(f"{f'{what} x{size}':<14}{concurrency:>3}  {row['log']:<7}{row['requests_per_s']:>8.1f}"
                         f"{row['records_per_s']:>9.1f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{ratio}")
    return "\n".join(lines)


def _cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


if __name__ == "__main__":
    main()
