"""Process start-up: importing the scientific stack without CPython's cycle collector walking it.

Importing numpy, scipy, astropy, numba, pyarrow and the stage modules creates about a million Python objects, all
of them long-lived. Meanwhile CPython's cycle collector runs some 400 times (~0.13 s of a ``twinkles stage``
command on one 4k visit, ~3.5 CPU-s in all), and every later full collection walks all of them again (~50 ms
each; three during that visit's processing). :func:`frozen_imports` runs imports with the collector off, then
moves every object that exists to the permanent generation (``gc.freeze()``), which collections skip. The cost:
reference cycles made while importing (rare, small) are never freed.

It also defers two numpy submodules nothing here uses, ``numpy.testing`` and ``numpy.f2py`` (~0.09 CPU-s):
scipy (1.17) imports them all the same -- ``scipy.ndimage`` loads its array-API layer, which copies every public
attribute of numpy, lazily loaded submodules included. They are registered with their ``__init__`` deferred
(:func:`defer_package_init`): it runs on their first real use (``from numpy.testing import ...``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["frozen_imports", "import_frozen", "defer_package_init", "defer_unused_numpy_modules"]

#: numpy submodules imported by scipy's array-API layer, not used by twinkles
UNUSED_NUMPY_MODULES = ("numpy.testing", "numpy.f2py")


def defer_package_init(name: str) -> None:
    """Register package ``name`` in ``sys.modules`` with its ``__init__`` run on first use (no-op if imported).

    The module object is the real one (``__file__``, ``__spec__``, ``__path__`` set, so introspection such as
    ``inspect.getmodule`` does not load it); the first access to any other attribute that is not one of its
    submodules runs the real ``__init__`` in it.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(attr: str):  # noqa: N807 - module-level __getattr__ (PEP 562)
        if attr.startswith("__") or state["loaded"] or importlib.util.find_spec(f"{name}.{attr}") is not None:
            # dunders, and submodules (``from parsl import curvezmq``): the import system takes it from here
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        state["loaded"] = True
        del module.__getattr__
        spec.loader.exec_module(module)  # the real __init__, in this module object
        return getattr(module, attr)

    module.__getattr__ = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def defer_unused_numpy_modules() -> None:
    """:func:`defer_package_init` for :data:`UNUSED_NUMPY_MODULES`."""
    import numpy  # noqa: F401 - the parent first
    for name in UNUSED_NUMPY_MODULES:
        defer_package_init(name)


@contextlib.contextmanager
def frozen_imports():
    """Imports inside this block run without cycle collections; if modules were imported, what exists at its end
    is frozen. (Only then: a long-lived process entering the block again -- a workflow worker, every job --
    would otherwise freeze, and so never free, the reference cycles its earlier work left for the collector.)"""
    enabled = gc.isenabled()
    gc.disable()
    n_modules = len(sys.modules)
    try:
        defer_unused_numpy_modules()
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
