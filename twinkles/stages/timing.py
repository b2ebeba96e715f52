"""Per-step timing of a stage's ``run``: ``with timer("detection"): ...`` -- wall seconds per named step, and the
CPU time of the whole run. The timings go to the job's record and log, never into a dataset (a re-run must
write identical files)."""

from __future__ import annotations

import contextlib
import time

__all__ = ["StepTimer"]


class StepTimer:
    """Wall seconds of each named step (``with timer(name):``), and CPU seconds since it was made."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._cpu0 = time.process_time()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def timings(self) -> dict[str, float]:
        """{step: wall seconds, ..., "cpu_s": CPU seconds of the process since the timer was made}."""
        return dict(self.seconds, cpu_s=time.process_time() - self._cpu0)
