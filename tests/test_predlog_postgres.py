"""The prediction log on a real PostgreSQL server: round trip, concurrent table creation, an outage mid-traffic.

The session fixture starts a throw-away cluster (Debian's postgresql, ``initdb``
+ ``pg_ctl``) in a temporary directory on 127.0.0.1 and a free port, as the
``postgres`` user when the tests run as root (PostgreSQL refuses root), and
stops it at the end. Without the binaries the tests are skipped, except in CI
(``CI=true``), where that is a failure: ``scripts/setup.sh`` installs them there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from blackbox.monitoring.predlog import PredictionLog, read_log

from _helpers import free_port, log_round_trip, make_app, outage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_recorders")]  # a real PostgreSQL server

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass
class Cluster:
    directory: Path
    port: int
    bin: Path
    user: list[str]

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.user, str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.pg_ctl("-l", str(self.directory / "server.log"), "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def createdb(self, name: str) -> str:
        subprocess.run([*self.user, str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, timeout=30)
        return self.url(name)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI: {reason} (scripts/setup.sh installs it)")
    pytest.skip(f"PostgreSQL not available: {reason}; apt-get install postgresql")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if not BIN_DIRS or not (BIN_DIRS[0] / "initdb").exists():
        _unavailable("no /usr/lib/postgresql/*/bin/initdb")
    user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="blackbox-pg-"))
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            _unavailable("running as root without runuser to drop to the postgres user")
        user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres", "postgres")
    server = Cluster(directory, free_port(), BIN_DIRS[0], user)
    try:
        subprocess.run([*user, str(server.bin / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
                        "--auth=trust", "--no-sync"], check=True, capture_output=True, timeout=120)
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        _unavailable(f"the test cluster did not start: {exc} {getattr(exc, 'stderr', b'')!r}")
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def test_postgres_round_trip(cluster, base_config, served_model, passengers):
    log_round_trip(base_config, cluster.createdb("round_trip"), served_model, passengers)


def test_postgres_tables_created_once_by_workers_starting_together(cluster):
    url = cluster.createdb("race")
    logs = [PredictionLog(url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda log: log.ensure_tables(), logs))  # re-raises what any of them raised
    finally:
        for log in logs:  # their pools' connections (a ResourceWarning when collected open)
            log.dispose()
    assert read_log(url).empty


def test_postgres_stopped_mid_traffic_loses_no_answered_request(cluster, base_config, passengers):  # LD-01
    app = make_app(base_config, cluster.createdb("outage"))
    try:
        outage(app, cluster.stop, cluster.start, passengers)
    finally:
        if not (cluster.directory / "data" / "postmaster.pid").exists():
            cluster.start()
