"""Progress on stderr while a run goes."""

from __future__ import annotations

import time
from typing import Any, TextIO

LOG_EVERY = 10.0
"""Seconds between progress lines when stderr is not a terminal."""


class Progress:
    """A bar with rows/s and ETA on a terminal (tqdm); a plain line every LOG_EVERY seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = self._logged = time.perf_counter()
        self._bar: Any = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(file=stream, unit=" rows", unit_scale=True, dynamic_ncols=True)

    def update(self, rows: int, rejected: int, fraction: float) -> None:
        if self._bar is not None:
            if fraction:
                self._bar.total = max(round(rows / fraction), rows)  # estimated from the bytes read so far
            self._bar.set_postfix(rejected=rejected, refresh=False)
            self._bar.update(rows - self._bar.n)
            return
        now = time.perf_counter()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            rate = rows / (now - self._started)
            print(f"blackbox score: {rows:,} rows read ({rejected:,} rejected), {rate:,.0f} rows/s, {fraction:.0%} of the input",
                  file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
