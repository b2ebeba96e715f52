"""Importing this module makes later imports of Parsl's interchange and worker pool ~2x quicker.

``import parsl.executors.high_throughput.process_worker_pool`` (or ``.interchange``) first runs
``parsl/__init__.py`` and ``parsl/executors/__init__.py``, which import the whole library: the DataFlowKernel,
every executor (Flux, Work Queue, Globus Compute...), ``typeguard``... that the interchange and the
worker pool never use: ~0.3 s of CPU instead of ~0.15 s, paid one after the other before the first job of a run.

Here those two packages (and ``parsl.monitoring``, whose ``__init__`` imports the monitoring hub, and
``requests``) are registered with their ``__init__`` deferred: their submodules import as usual, and the first
access to any other attribute (``parsl.python_app``, ``parsl.executors.HighThroughputExecutor``...) runs the real
``__init__`` then, so code that needs the full package still gets it. Only the processes Parsl starts for the
local executor import this (:mod:`twinkles.workflow.worker_pool`); never the orchestrator.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["defer_package_init"]

# ``requests`` too: parsl.addresses imports it (~45 ms) for address_by_query, which neither process calls
DEFERRED = ("parsl", "parsl.executors", "parsl.monitoring", "requests")


def defer_package_init(name: str) -> None:
    """Register package ``name`` in ``sys.modules`` with its ``__init__`` run on first use (no-op if imported)."""
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


for _name in DEFERRED:
    defer_package_init(_name)
