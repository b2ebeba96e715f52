"""Process start-up: importing the scientific stack without CPython's cycle collector walking it.

Importing numpy, scipy, astropy, numba, pyarrow and the stage modules creates about a million Python objects, all
of them long-lived. Meanwhile CPython's cycle collector runs some 400 times (~0.13 s of a ``twinkles stage``
command on one 4k visit, ~3.5 CPU-s in all), and every later full collection walks all of them again (~50 ms
each; three during that visit's processing). :func:`frozen_imports` runs imports with the collector off, then
moves every object that exists to the permanent generation (``gc.freeze()``, a documented CPython API), which
collections skip. The cost: reference cycles made while importing (rare, small) are never freed.

It is entered by the entry points only: ``twinkles.cli.main`` (the verbs' modules; ``twinkles stage`` and
``twinkles run`` around loading their stages) and a workflow worker's job (``twinkles.workflow.job``: its first
job imports the stage), never by library code such as ``load_stage``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from types import ModuleType

__all__ = ["frozen_imports", "import_frozen"]


@contextlib.contextmanager
def frozen_imports():
    """Imports inside this block run without cycle collections; if modules were imported, what exists at its end
    is frozen. (Only then: a long-lived process entering the block again -- a workflow worker, every job --
    would otherwise freeze, and so never free, the reference cycles its earlier work left for the collector.)"""
    enabled = gc.isenabled()
    gc.disable()
    n_modules = len(sys.modules)
    try:
        yield
    finally:
        if len(sys.modules) > n_modules:
            gc.freeze()
        if enabled:
            gc.enable()


def import_frozen(name: str) -> ModuleType:
    """``importlib.import_module(name)`` inside :func:`frozen_imports`."""
    with frozen_imports():
        return importlib.import_module(name)
