"""Parsl's HTEX interchange and worker pool, started ~1 s sooner (same code, same arguments).

The ``local`` executor (:func:`twinkles.workflow.execute._local_htex_config`) starts

* the interchange with ``python -m twinkles.workflow.worker_pool --interchange`` (instead of ``interchange.py``),
* the worker pool with ``python -m twinkles.workflow.worker_pool ARGS`` (instead of ``process_worker_pool.py
  ARGS``).

Both run Parsl's own module as ``__main__``, unchanged. What differs is how fast they start, which matters
because a run waits for them one after the other before its first job:

* they import Parsl through :mod:`twinkles.workflow.lean_parsl` (the parts they use: ~0.15 s less each);
* the worker pool starts its processes from a fork server. Parsl uses the ``spawn`` start method: the pool's
  multiprocessing manager, then each worker, is a fresh interpreter importing Parsl again (~0.3-0.7 s each on the
  2-core machine, the manager before the workers). Here a fork server is started first thing, importing the pool
  module while the pool itself starts and connects to the interchange; the manager and the workers are forked
  from it, ready at once. The fork server is single-threaded, so forking is safe (forking the pool itself is
  not: it holds a ZeroMQ context); a worker replaced by the pool's watchdog is forked from it too.

The workers run Parsl's worker function, one job at a time each, so jobs, their CPU time and their memory are
measured as before.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import runpy
import sys

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"
LEAN = "twinkles.workflow.lean_parsl"


def main() -> None:
    if sys.argv[1:2] == ["--interchange"]:
        del sys.argv[1]
        module = INTERCHANGE_MODULE
    else:
        module = POOL_MODULE
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([LEAN, POOL_MODULE])
        multiprocessing.forkserver.ensure_running()  # starts importing now, in its own process
    __import__(LEAN)
    if module == POOL_MODULE:
        import parsl.multiprocessing as pm

        pm.SpawnContext = context  # the pool module reads it when it is run below
    sys.argv[0] = module.rsplit(".", 1)[1] + ".py"
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
