"""The process environment the numerical libraries and Parsl need: thread-pool sizes, the environment's bin
folder on PATH. Used by the ``twinkles`` entry point and by the workflow when it starts Parsl."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["LIBRARY_THREAD_VARIABLES", "single_threaded_libraries", "ensure_env_bin_on_path"]

#: thread-pool sizes of the numerical libraries (OpenMP: astroscrappy; OpenBLAS: numpy/scipy)
LIBRARY_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def ensure_env_bin_on_path() -> None:
    """Put this environment's bin folder (beside sys.executable) first on PATH.

    Parsl's HighThroughputExecutor starts ``interchange.py`` and ``process_worker_pool.py`` by name; a user who
    runs ``.venv/bin/twinkles`` without activating the venv would otherwise get FileNotFoundError.
    """
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in parts if p != bindir])


def single_threaded_libraries() -> None:
    """One thread per process for BLAS and OpenMP unless the user set them: a job is one core's work (the
    workflow runs workers = cores), and idle OpenBLAS threads spin (~0.2 CPU-s per process start measured, more
    after every small matrix product). Must run before numpy is imported to take effect."""
    for name in LIBRARY_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
