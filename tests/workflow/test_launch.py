"""How the local executor starts Parsl's processes: a lean Parsl import, workers forked from a fork server."""

from __future__ import annotations

import subprocess
import sys

from twinkles.workflow.execute import _local_htex_config, _start_local_block


def test_lean_parsl_imports_the_pool_without_the_whole_library_and_loads_it_on_use():
    code = (
        "import sys, twinkles.workflow.lean_parsl\n"
        "import parsl.executors.high_throughput.process_worker_pool\n"
        "from parsl import curvezmq\n"  # a submodule: imported, package __init__ still deferred
        "assert 'parsl.dataflow.dflow' not in sys.modules, 'the DataFlowKernel was imported'\n"
        "assert 'parsl.executors.flux.executor' not in sys.modules\n"
        "import parsl\n"
        "assert callable(parsl.python_app) and parsl.__version__\n"  # first use runs the real __init__
        "from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor\n"
        "assert 'parsl.dataflow.dflow' in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _whoami():
    import os
    import sys

    import psutil
    me = psutil.Process()
    return {"pid": os.getpid(), "parent": " ".join(me.parent().cmdline()),
            "grandparent": " ".join(me.parent().parent().cmdline()),
            "dflow_imported": "parsl.dataflow.dflow" in sys.modules}


def test_local_workers_are_forked_from_the_pools_fork_server(tmp_path):
    from parsl.app.app import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from twinkles.cli import ensure_env_bin_on_path
    ensure_env_bin_on_path()
    dfk = DataFlowKernel(_local_htex_config(tmp_path / "runinfo", 2))
    try:
        _start_local_block(dfk)
        app = python_app(_whoami, data_flow_kernel=dfk)
        seen = [f.result(timeout=120) for f in [app() for _ in range(4)]]
    finally:
        dfk.cleanup()
    for w in seen:
        assert "multiprocessing.forkserver" in w["parent"], w  # not spawned by the pool itself
        assert "twinkles.workflow.worker_pool" in w["grandparent"], w
        assert not w["dflow_imported"], w  # the worker has only the parts of Parsl it uses
    assert len({w["pid"] for w in seen}) <= 2
