"""Parsl's HTEX interchange and worker pool, started ~1 s sooner (same code, same arguments).

The ``local`` executor (:func:`twinkles.workflow.execute._local_htex_config`) starts

* the interchange with ``python -m twinkles.workflow.worker_pool --interchange`` (instead of ``interchange.py``),
* the worker pool with ``python -m twinkles.workflow.worker_pool ARGS`` (instead of ``process_worker_pool.py
  ARGS``).

Both run Parsl's own module as ``__main__``, unchanged. What differs is how fast they start, which matters
because a run waits for them one after the other before its first job:

* they import Parsl through :mod:`twinkles.workflow.lean_parsl` (the parts they use: ~0.15 s less each);
* the pool lists the installed packages for its registration message to the interchange through distributions
  that parse only the headers of their metadata files (where name and version are): ~15 ms instead of ~50 ms
  with the ~75 packages of our environment (Parsl's code parses every file whole, twice);
* the worker pool starts its processes from a fork server. Parsl uses the ``spawn`` start method: the pool's
  multiprocessing manager, then each worker, is a fresh interpreter importing Parsl again (~0.3-0.7 s each on the
  2-core machine, the manager before the workers). Here the pool imports its module's dependencies, then forks
  its fork server (and multiprocessing's resource tracker) from itself (:func:`fork_helper`) -- it is still
  single-threaded then, and the fork server has everything imported without importing it again -- and the
  manager and the workers are forked from the fork server, ready at once. Forking the pool later is not safe (it
  then holds a ZeroMQ context and threads); a worker replaced by the pool's watchdog is forked from the fork
  server too. (Starting the fork server first, importing in parallel with the pool, was ~30 ms slower to the
  first job: the two imported the same modules at once, beside the interchange, on 2 cores.)

The workers run Parsl's worker function, one job at a time each, so jobs, their CPU time and their memory are
measured as before.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util
import os
import runpy
import sys
import traceback

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"
LEAN = "twinkles.workflow.lean_parsl"


class HeaderMetadataDistribution:
    """An ``importlib.metadata`` distribution whose ``metadata`` (and so ``version``) is read from the headers of
    its metadata file only; everything else is the distribution's own."""

    def __init__(self, dist):
        self._dist = dist

    @functools.cached_property
    def metadata(self):
        import email.parser
        d = self._dist
        text = d.read_text("METADATA") or d.read_text("PKG-INFO") or d.read_text("") or ""
        return email.parser.HeaderParser().parsestr(text.split("\n\n", 1)[0])

    @property
    def version(self) -> str:
        return self.metadata["Version"]

    def __getattr__(self, attr: str):
        return getattr(self._dist, attr)


def header_metadata_distributions(**kwargs):
    """``importlib.metadata.distributions(**kwargs)`` as :class:`HeaderMetadataDistribution`."""
    return (HeaderMetadataDistribution(d) for d in _distributions(**kwargs))


def _distributions(**kwargs):
    import importlib.metadata
    return importlib.metadata.Distribution.discover(**kwargs)


def fork_helper(path: str, args: list[str], passfds) -> int:
    """``multiprocessing.util.spawnv_passfds`` for the helpers multiprocessing starts as ``python -c CODE`` (the fork
    server, the resource tracker): this process forked, running CODE with only ``passfds`` and stdin/out/err
    open -- as the new interpreter would -- instead of a new interpreter starting up and importing (the fork has
    this process's modules already). Only while this process is single-threaded: in :func:`main`, before the pool
    module runs."""
    if len(args) < 2 or args[-2] != "-c":
        return _spawnv_passfds(path, args, passfds)
    code = args[-1]
    keep = {int(fd) for fd in passfds} | {0, 1, 2}
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        exec(compile(code, "<multiprocessing helper>", "exec"), {"__name__": "__main__"})
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported, then this child exits
        traceback.print_exc()
    finally:
        os._exit(status)


_spawnv_passfds = multiprocessing.util.spawnv_passfds


def main() -> None:
    if sys.argv[1:2] == ["--interchange"]:
        del sys.argv[1]
        module = INTERCHANGE_MODULE
    else:
        module = POOL_MODULE
    __import__(LEAN)
    if module == POOL_MODULE:
        import importlib.metadata

        import parsl.multiprocessing as pm

        # the pool module's imports, once (the module itself runs below, as __main__); then the fork server, a
        # fork of this still single-threaded process with all of it imported (fork_helper): nothing to preload
        importlib.import_module(POOL_MODULE)
        context = multiprocessing.get_context("forkserver")
        multiprocessing.util.spawnv_passfds = fork_helper
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            multiprocessing.util.spawnv_passfds = _spawnv_passfds
        pm.SpawnContext = context  # the pool module reads it when it is run below
        importlib.metadata.distributions = header_metadata_distributions  # its registration message
    sys.argv[0] = module.rsplit(".", 1)[1] + ".py"
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
