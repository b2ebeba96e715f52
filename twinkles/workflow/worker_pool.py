"""Parsl's HTEX worker pool (``process_worker_pool.py``), its processes started from a fork server.

``python -m twinkles.workflow.worker_pool ARGS`` runs Parsl's own worker pool, unchanged, with the same
arguments. The only difference is how the pool starts its processes. Parsl uses the ``spawn`` start method: the
pool's multiprocessing manager, then each worker, is a fresh interpreter that imports Parsl again (~0.3-0.7 s
each on the 2-core machine, the manager before the workers), all of it before the first job. Here a fork server
is started first thing, importing Parsl's pool module while the pool itself starts and connects to the
interchange; the manager and the workers are then forked from it, ready at once: the first job starts ~0.6 s
sooner on every worker. The fork server is single-threaded, so forking is safe (forking the pool itself is not:
it holds a ZeroMQ context); a worker replaced by the pool's watchdog is forked from it too.

Used by the ``local`` executor (:func:`twinkles.workflow.execute._local_htex_config`). The workers run Parsl's
worker function, one job at a time each, so jobs, their CPU time and their memory are measured as before.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import runpy
import sys

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"


def main() -> None:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([POOL_MODULE])
    multiprocessing.forkserver.ensure_running()  # starts importing now, in its own process
    import parsl.multiprocessing as pm

    pm.SpawnContext = context  # the pool module reads it when it is run below
    sys.argv[0] = "process_worker_pool.py"
    runpy.run_module(POOL_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
