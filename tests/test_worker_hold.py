"""A held new worker (a SIGHUP hand-over) whose model did not load never accepts before the master stops it.

Before: past its own load deadline it fell through to gunicorn's accept loop, and until the master's hand-over
deadline stopped it the kernel gave it requests it answered 503 ``not_ready`` (a fresh-clone CI run caught one).
The worker here is :class:`serving.worker.Held` over a stand-in for gunicorn's loop; the master stops it
(``alive = False``) after the worker's own deadline has passed.
"""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

from serving.state import EXTENSION
from serving.worker import Held, Readiness


class Loop:
    accepted_at: float | None = None

    def run(self) -> None:  # gunicorn's accept loop
        self.accepted_at = time.monotonic()


class Worker(Held, Loop):
    pass


def test_a_held_worker_whose_load_timed_out_waits_for_the_master_instead_of_accepting(tmp_path):
    loading = SimpleNamespace(holder=SimpleNamespace(model=None, loading=True, failure=None))
    settings = SimpleNamespace(unavailable=(), load_timeout=0.3)
    worker = Worker()
    worker.app = SimpleNamespace(readiness=Readiness(tmp_path), hold=True)
    worker.wsgi = SimpleNamespace(extensions={EXTENSION: SimpleNamespace(models={"m": loading}, settings=settings)})
    worker.pid, worker.ppid, worker.alive = os.getpid(), os.getppid(), True
    worker.log = SimpleNamespace(warning=lambda *args: None)
    worker.notify = lambda: None
    started = time.monotonic()
    stopper = threading.Timer(0.5, lambda: setattr(worker, "alive", False))  # the master: after the worker's own 0.3 s, within 0.3 s more
    stopper.start()
    try:
        worker.run()
    finally:
        stopper.cancel()
    assert "did not load within" in (Readiness(tmp_path).read(os.getpid()) or "")
    assert worker.accepted_at is not None and worker.accepted_at - started >= 0.45, worker.accepted_at - started
