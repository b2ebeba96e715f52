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
    config, workers, isolated = build_parsl_config("perlmutter", tmp_path / "runinfo", None)
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
    config, workers, _ = build_parsl_config("perlmutter", tmp_path / "runinfo", 32)
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
    with pytest.raises(WorkflowError, match="use local, threads, slurm, perlmutter"):
        build_parsl_config("pbs", tmp_path / "runinfo", None)


def test_generic_slurm_config_from_flags_and_environment(tmp_path, monkeypatch):
    """`--executor slurm`: partition, account, nodes per block, walltime and worker init from the flags, else
    from TWINKLES_SLURM_*, else defaults; nothing of NERSC's in it; nothing submitted."""
    from twinkles.workflow.execute import SLURM_CONFIG
    for var in ("PARTITION", "ACCOUNT", "NODES", "MAX_BLOCKS", "WALLTIME", "WORKER_INIT", "QOS"):
        monkeypatch.delenv(f"TWINKLES_SLURM_{var}", raising=False)
    config, workers, isolated = build_parsl_config("slurm", tmp_path / "runinfo", None)
    (htex,) = config.executors
    p = htex.provider
    assert isinstance(p, SlurmProvider) and isinstance(p.launcher, SrunLauncher) and isolated
    assert p.partition is None and p.account is None and p.qos is None and p.constraint is None
    assert p.nodes_per_block == 1 and p.max_blocks == 4 and p.walltime == "01:00:00"
    assert "--licenses" not in p.scheduler_options and "m1727" not in SLURM_CONFIG.read_text()
    assert "PATH=" in p.worker_init and p.resources == {}
    monkeypatch.setenv("TWINKLES_SLURM_PARTITION", "short")
    monkeypatch.setenv("TWINKLES_SLURM_ACCOUNT", "desc")
    monkeypatch.setenv("TWINKLES_SLURM_WALLTIME", "00:30:00")
    monkeypatch.setenv("TWINKLES_SLURM_WORKER_INIT", "source /opt/env.sh")
    config, workers, _ = build_parsl_config("slurm", tmp_path / "runinfo", 8, {"partition": "long",
                                                                             "nodes_per_block": 3, "max_blocks": 2})
    p = config.executors[0].provider
    assert p.partition == "long" and p.account == "desc" and p.walltime == "00:30:00"  # the flag beats the variable
    assert p.nodes_per_block == 3 and p.max_blocks == 2 and p.worker_init.strip() == "source /opt/env.sh"
    assert "#SBATCH --partition=long" in p.scheduler_options and "#SBATCH --account=desc" in p.scheduler_options
    assert config.executors[0].max_workers_per_node == 8 and workers == 8 * 3 * 2
    with pytest.raises(WorkflowError, match="settings of a Slurm cluster"):
        build_parsl_config("local", tmp_path / "runinfo", None, {"partition": "long"})
    monkeypatch.setenv("TWINKLES_SLURM_NODES", "many")
    with pytest.raises(WorkflowError, match="TWINKLES_SLURM_NODES='many': must be an integer"):
        build_parsl_config("slurm", tmp_path / "runinfo", None)
