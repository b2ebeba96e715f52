"""The local executor is stock Parsl: its HighThroughputExecutor and LocalProvider, configured through their
public options; its workers are Parsl's own worker pool, started without the user's venv on PATH."""

from __future__ import annotations

import os

from wf_common import whoami

from twinkles.workflow.execute import _local_htex_config


def test_local_config_is_parsls_own_executor_and_provider(tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    config = _local_htex_config(tmp_path / "runinfo", 2)
    (ex,) = config.executors
    assert type(ex) is HighThroughputExecutor and type(ex.provider) is LocalProvider  # no subclass, no patch
    assert ex.provider.init_blocks == 1 and ex.provider.max_blocks == 1  # the block starts with the run
    assert ex.max_workers_per_node == 2 and ex.prefetch_capacity == 2
    assert "process_worker_pool.py" in ex.launch_cmd  # Parsl's own launch command


def test_local_workers_are_parsls_worker_pool_found_without_an_activated_venv(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from parsl.app.app import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from twinkles.environment import ensure_env_bin_on_path
    bindir = str(Path(sys.executable).parent)
    # a user who did not activate the venv: its bin folder is not on PATH
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bindir))
    ensure_env_bin_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == bindir
    dfk = DataFlowKernel(_local_htex_config(tmp_path / "runinfo", 2))
    try:
        app = python_app(whoami, data_flow_kernel=dfk)
        seen = [f.result(timeout=120) for f in [app() for _ in range(4)]]
    finally:
        dfk.cleanup()
    for w in seen:
        assert "process_worker_pool.py" in w["pool"] and w["pid"] != os.getpid()
        assert Path(w["executable"]).parent == Path(sys.executable).parent  # this environment's Python
    assert len({w["pid"] for w in seen}) <= 2
