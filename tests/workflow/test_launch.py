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
    _prints_ok_in_a_fresh_python(code)


def test_stand_ins_keep_typeguard_and_zmq_auth_out_until_used():
    code = (
        "import sys, twinkles.workflow.lean_parsl\n"
        "import parsl.executors.high_throughput.interchange, parsl.executors.high_throughput.process_worker_pool\n"
        "assert 'asyncio' not in sys.modules and 'unittest.mock' not in sys.modules, 'stand-ins not used'\n"
        "import typeguard\n"
        "f = lambda x: x\n"
        "assert typeguard.typechecked(f) is f and typeguard.typechecked()(f) is f\n"
        "from typeguard import check_type, TypeCheckError\n"  # anything else: the real typeguard
        "assert check_type(3, int) == 3\n"
        "try:\n"
        "    check_type('3', int)\n"
        "    raise SystemExit('not checked')\n"
        "except TypeCheckError:\n"
        "    pass\n"
        "assert sys.modules['typeguard'].check_type is check_type\n"
        "import zmq\n"
        "from parsl import curvezmq\n"
        "auth = curvezmq.ThreadAuthenticator(zmq.Context())\n"  # loads the real module when called
        "import zmq.auth.thread as real\n"
        "assert type(auth) is real.ThreadAuthenticator and 'asyncio' in sys.modules\n"
        "print('ok')\n")
    _prints_ok_in_a_fresh_python(code)


def test_registration_lists_the_same_packages_from_metadata_headers():
    from importlib.metadata import distributions

    from twinkles.workflow.worker_pool import header_metadata_distributions
    fast = {d.metadata["Name"]: d.version for d in header_metadata_distributions()}
    full = {d.metadata["Name"]: d.version for d in distributions()}
    assert fast == full and "parsl" in fast and "numpy" in fast


def _whoami():
    import os
    import sys

    import psutil
    me = psutil.Process()
    parent = me.parent()
    return {"pid": os.getpid(), "parent_pid": parent.pid, "parent_threads": parent.num_threads(),
            "parent": " ".join(parent.cmdline()), "grandparent": " ".join(parent.parent().cmdline()),
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
        # forked by the fork server -- itself a fork of the pool made before the pool started any thread -- not
        # spawned by the pool (whose ZeroMQ and communication threads make forking it unsafe)
        assert "twinkles.workflow.worker_pool" in w["parent"] and "twinkles.workflow.worker_pool" in w["grandparent"]
        assert w["parent_threads"] == 1, w
        assert not w["dflow_imported"], w  # the worker has only the parts of Parsl it uses
    assert len({w["pid"] for w in seen}) <= 2 and len({w["parent_pid"] for w in seen}) == 1


def _prints_ok_in_a_fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter (imports are the point of these tests); it must print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
