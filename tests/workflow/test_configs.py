"""Executor configurations: the shipped NERSC Perlmutter Slurm example builds a Parsl Config (nothing is
submitted), user config files are loaded, and bad values give clear errors."""

from __future__ import annotations

import pytest
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.executors.threads import ThreadPoolExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from twinkles.workflow.execute import NERSC_CONFIG, WorkflowError, build_parsl_config, config_workers


def test_nersc_perlmutter_config_builds_without_submitting(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINKLES_NERSC_ACCOUNT", "m9999")
    monkeypatch.setenv("TWINKLES_NERSC_NODES", "2")
    monkeypatch.setenv("TWINKLES_NERSC_MAX_BLOCKS", "3")
    config, workers, isolated = build_parsl_config("slurm", tmp_path / "runinfo", None)
    assert isinstance(config, Config) and config.run_dir == str(tmp_path / "runinfo")
    (htex,) = config.executors
    assert isinstance(htex, HighThroughputExecutor) and isolated
    provider = htex.provider
    assert isinstance(provider, SlurmProvider) and isinstance(provider.launcher, SrunLauncher)
    assert provider.account == "m9999" and provider.constraint == "cpu" and provider.qos == "regular"
    assert provider.nodes_per_block == 2 and provider.max_blocks == 3 and provider.init_blocks == 0
    assert htex.max_workers_per_node == 128
    assert workers == 128 * 2 * 3  # worker slots, for CPU efficiency
    assert provider.resources == {}  # no job was submitted
    # fewer workers per node -> more cores (and memory) each
    config, workers, _ = build_parsl_config("slurm", tmp_path / "runinfo", 32)
    assert config.executors[0].cores_per_worker == 4 and workers == 32 * 2 * 3
    assert NERSC_CONFIG.name == "nersc_perlmutter.py"


def test_local_and_threads_configs(tmp_path):
    config, workers, isolated = build_parsl_config("local", tmp_path / "runinfo", 3)
    (htex,) = config.executors
    assert isinstance(htex.provider, LocalProvider) and htex.max_workers_per_node == 3 and isolated
    assert workers == 3 and config.run_dir == str(tmp_path / "runinfo")
    assert config_workers(config) >= 1
    config, workers, isolated = build_parsl_config("threads", tmp_path / "runinfo", 2)
    assert isinstance(config.executors[0], ThreadPoolExecutor) and workers == 2 and not isolated


def test_user_config_file(tmp_path):
    f = tmp_path / "site.py"
    f.write_text("from parsl.config import Config\n"
                 "from parsl.executors.threads import ThreadPoolExecutor\n"
                 "def make_config(run_dir, workers):\n"
                 "    return Config(executors=[ThreadPoolExecutor(max_threads=workers or 5)], run_dir=run_dir)\n")
    config, workers, isolated = build_parsl_config(str(f), tmp_path / "runinfo", None)
    assert workers == 5 and not isolated and config.run_dir == str(tmp_path / "runinfo")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(WorkflowError, match="neither make_config"):
        build_parsl_config(str(bad), tmp_path / "runinfo", None)
    with pytest.raises(WorkflowError, match="no such config file"):
        build_parsl_config(str(tmp_path / "missing.py"), tmp_path / "runinfo", None)
    with pytest.raises(WorkflowError, match="use local, threads, slurm"):
        build_parsl_config("pbs", tmp_path / "runinfo", None)
