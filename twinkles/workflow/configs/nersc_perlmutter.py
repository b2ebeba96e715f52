"""Parsl configuration for NERSC Perlmutter CPU nodes (``twinkles run REPO --executor slurm``).

A template: copy it, edit the account and environment, and pass the copy with ``--executor my_config.py``.
Environment variables override the defaults without editing:

* ``TWINKLES_NERSC_ACCOUNT`` -- the NERSC project charged (default ``m1727``, LSST DESC);
* ``TWINKLES_NERSC_QOS`` -- ``regular`` (default), ``debug`` (<= 30 min) or ``preempt``;
* ``TWINKLES_NERSC_NODES`` -- nodes per Slurm job (default 1); ``TWINKLES_NERSC_MAX_BLOCKS`` -- Slurm jobs at
  once (default 4);
* ``TWINKLES_NERSC_WALLTIME`` -- per Slurm job (default 02:00:00);
* ``TWINKLES_NERSC_WORKER_INIT`` -- shell lines run before the workers start (default: activate the venv of
  the Python running twinkles).

A Perlmutter CPU node has 2 x 64-core AMD EPYC 7763 (128 cores, 256 hardware threads) and 512 GB: one worker
per core, each worker with up to 3.5 GB. The orchestrator runs on a login node (or in a workflow QOS job) and
talks to the workers over the high-speed network; the repository must be on a file system both see
($SCRATCH or CFS).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

CORES_PER_NODE = 128
MEM_PER_NODE_GB = 512


def make_config(run_dir: str = "runinfo", workers: int | None = None) -> Config:
    """The Parsl config; ``workers``: workers per node (default one per core)."""
    per_node = int(workers or CORES_PER_NODE)
    venv_bin = Path(sys.executable).parent
    worker_init = os.environ.get(
        "TWINKLES_NERSC_WORKER_INIT",
        f"module load python; export PATH={venv_bin}:$PATH; "
        "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1")
    provider = SlurmProvider(
        account=os.environ.get("TWINKLES_NERSC_ACCOUNT", "m1727"),
        qos=os.environ.get("TWINKLES_NERSC_QOS", "regular"),
        constraint="cpu",
        nodes_per_block=int(os.environ.get("TWINKLES_NERSC_NODES", "1")),
        cores_per_node=CORES_PER_NODE,
        init_blocks=0,
        min_blocks=0,
        max_blocks=int(os.environ.get("TWINKLES_NERSC_MAX_BLOCKS", "4")),
        walltime=os.environ.get("TWINKLES_NERSC_WALLTIME", "02:00:00"),
        exclusive=True,
        worker_init=worker_init,
        # one process_worker_pool per node, using all its hardware threads
        launcher=SrunLauncher(overrides="--cpus-per-task=256 --cpu-bind=none"),
        scheduler_options="#SBATCH --licenses=scratch",
    )
    htex = HighThroughputExecutor(
        label="perlmutter_cpu",
        address=address_by_hostname(),
        max_workers_per_node=per_node,
        cores_per_worker=CORES_PER_NODE / per_node,
        mem_per_worker=MEM_PER_NODE_GB * 0.9 / per_node,
        cpu_affinity="block",
        heartbeat_period=30,
        heartbeat_threshold=180,
        provider=provider,
    )
    return Config(executors=[htex], run_dir=run_dir, strategy="htex_auto_scale", max_idletime=300.0, retries=0,
                  usage_tracking=0)
