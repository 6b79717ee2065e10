"""Progress lines for long work: a count, a rate and an ETA, printed at most every few seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress("tokenize", total=n) as p: p.advance(k)`` prints ``stage: 1,200/25,000 (2,310/s, ETA 10s)``."""

    def __init__(self, label: str, total: int | None = None, every_s: float = 2.0, stream=None) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self._start = time.perf_counter()
        self._last = self._start

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if final:
            line = f"{self.label}: {self.done:,} in {elapsed:.1f}s ({rate:,.0f}/s)"
        elif self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            line = f"{self.label}: {self.done:,}/{self.total:,} ({rate:,.0f}/s, ETA {eta:.0f}s)"
        else:
            line = f"{self.label}: {self.done:,} ({rate:,.0f}/s)"
        print(line, file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._print(time.perf_counter(), final=True)
