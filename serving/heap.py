"""The garbage collector in a serving worker: a held model is kept out of its full collections.

A loaded pipeline is ~10^5 objects the collector tracks (estimators, pandas
indexes, the by-value modules of user code), alive for as long as the model is
held. A full collection scans every tracked object, and in a worker answering
requests one comes every few seconds (objects of requests in flight reach the
oldest generation and die there): ~100 ms with the GIL held each time, which
stalls every request of that worker (the c=1 p99 tail of ``bench/bench_server.py``).

After each model is installed, :func:`settle` collects once and freezes what is
alive (:func:`gc.freeze`), so later full collections scan only what came after.

Rules callers rely on: frozen objects are never collected, so :func:`settle`
first unfreezes what an earlier call froze; a model swapped out since (its
reference cycles too: by-value functions and their module dicts) is collected
then, not kept for the worker's life (one still in use by a request at that
moment waits for the next settle). It freezes the whole process, so only
``blackbox serve``'s own workers use it (``SETTLE_HEAP``), never an app built
inside another program.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what earlier models left, then keep every object alive now out of later collections."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
