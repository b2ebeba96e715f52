"""Importing this module makes later imports of Parsl's interchange and worker pool ~2x quicker.

``import parsl.executors.high_throughput.process_worker_pool`` (or ``.interchange``) first runs
``parsl/__init__.py`` and ``parsl/executors/__init__.py``, which import the whole library: the DataFlowKernel,
every executor (Flux, Work Queue, Globus Compute...), ``typeguard``... that the interchange and the
worker pool never use: ~0.3 s of CPU instead of ~0.15 s, paid one after the other before the first job of a run.

Here those two packages (and ``parsl.monitoring``, whose ``__init__`` imports the monitoring hub, and
``requests``) are registered with their ``__init__`` deferred: their submodules import as usual, and the first
access to any other attribute (``parsl.python_app``, ``parsl.executors.HighThroughputExecutor``...) runs the real
``__init__`` then, so code that needs the full package still gets it.

Two more modules these processes import without using them are stood in for until first real use (~45 ms
of the ~130 ms each process spends importing; three such processes start one after the other before the first
job of a run):

* ``typeguard`` (~30 ms with ``importlib.metadata`` and ``unittest.mock``): ``parsl.addresses``, ``parsl.utils``
  and ``parsl.log_utils`` decorate a few functions with ``@typeguard.typechecked``, which checks argument types
  at run time. The stand-in's ``typechecked`` leaves the function as it is (these are Parsl's internal calls);
  any other attribute loads the real ``typeguard``.
* ``zmq.auth.thread`` (~25 ms: it imports ``asyncio``): ``parsl.curvezmq`` imports its ``ThreadAuthenticator``,
  used only when the executor encrypts its traffic (``encrypted=True``; our local executor is loopback-only and
  does not). The stand-in's ``ThreadAuthenticator`` loads the real module when called.

Only the processes Parsl starts for the local executor import this (:mod:`twinkles.workflow.worker_pool`);
never the orchestrator, whose Parsl is the full, type-checked one.
"""

from __future__ import annotations

import importlib
import sys
import types

from ..startup import defer_package_init

__all__ = ["defer_package_init", "stand_in"]

# ``requests`` too: parsl.addresses imports it (~45 ms) for address_by_query, which neither process calls
DEFERRED = ("parsl", "parsl.executors", "parsl.monitoring", "requests")


def stand_in(name: str, attributes: dict) -> None:
    """Register a stand-in module ``name`` holding ``attributes``; any other attribute (no-op if imported)
    replaces it with the real module, everywhere, and returns the real attribute."""
    if name in sys.modules:
        return
    module = types.ModuleType(name, f"stand-in for {name} (twinkles.workflow.lean_parsl)")
    module.__dict__.update(attributes)

    def __getattr__(attr: str):  # noqa: N807 - module-level __getattr__ (PEP 562)
        if attr.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        return getattr(real_module(name), attr)

    module.__getattr__ = __getattr__
    parent, _, child = name.rpartition(".")
    if parent:  # ``import a.b.c`` then finds the parents too
        setattr(importlib.import_module(parent), child, module)
    sys.modules[name] = module
    _STAND_INS[name] = module


_STAND_INS: dict[str, types.ModuleType] = {}


def real_module(name: str):
    """The real module ``name``, imported in place of its stand-in if there is one."""
    module = sys.modules.get(name)
    if module is not None and module is _STAND_INS.get(name):
        del sys.modules[name]
        module = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return module if module is not None else importlib.import_module(name)


def _typechecked(func=None, **_options):
    """``typeguard.typechecked`` without the run-time checks: the function unchanged."""
    return (lambda f: f) if func is None else func


def _thread_authenticator(*args, **kwargs):
    """``zmq.auth.thread.ThreadAuthenticator(...)``, importing the real module (and asyncio) only now."""
    return real_module("zmq.auth.thread").ThreadAuthenticator(*args, **kwargs)


for _name in DEFERRED:
    defer_package_init(_name)
stand_in("typeguard", {"typechecked": _typechecked})
stand_in("zmq.auth.thread", {"ThreadAuthenticator": _thread_authenticator})
