"""Parsl configuration for any Slurm cluster (``twinkles run REPO --executor slurm``).

Nothing site-specific: the orchestrator (``twinkles run``, on a login node or in a long job) submits Slurm jobs
(Parsl "blocks") with ``sbatch``; each block runs one Parsl worker pool per node (``srun``), one worker per core
unless ``--workers`` says otherwise, and the workers connect back to the orchestrator. The repository must be on
a file system the nodes share with the login node.

Every setting comes from a ``twinkles run`` flag, else an environment variable, else the default:

=====================  =================================  ==========================================
flag                   environment                        default
=====================  =================================  ==========================================
``--partition``        ``TWINKLES_SLURM_PARTITION``       the cluster's default partition
``--account``          ``TWINKLES_SLURM_ACCOUNT``         the user's default account
``--qos``              ``TWINKLES_SLURM_QOS``             none
``--nodes-per-block``  ``TWINKLES_SLURM_NODES``           1
``--max-blocks``       ``TWINKLES_SLURM_MAX_BLOCKS``      4 (Slurm jobs at once)
``--walltime``         ``TWINKLES_SLURM_WALLTIME``        01:00:00 (per Slurm job)
``--worker-init``      ``TWINKLES_SLURM_WORKER_INIT``     put this Python's bin folder on PATH, one BLAS
                                                          thread per worker
(none)                 ``TWINKLES_SLURM_CORES_PER_NODE``  none: Slurm's default allocation
(none)                 ``TWINKLES_SLURM_EXCLUSIVE``       1: whole nodes (0: share nodes)
(none)                 ``TWINKLES_SLURM_ADDRESS``         none: workers try every address of this host
(none)                 ``TWINKLES_SLURM_SCHEDULER_OPTIONS``  extra ``#SBATCH`` lines
(none)                 ``TWINKLES_SLURM_HEARTBEAT``       30 (seconds; a lost worker is noticed after
                                                          4 heartbeats)
=====================  =================================  ==========================================

When a block ends early (cancelled, node failure, walltime) its running jobs are recorded as lost and retried on
a new block (``--retries``); three failed blocks in a row stop the run (Parsl's windowed block error handler),
so a broken setup fails instead of queueing for ever. To start from it for another site, copy this file (or the
NERSC Perlmutter one beside it), edit it, and pass ``--executor my_site.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

#: setting -> environment variable (flags of ``twinkles run`` take precedence)
ENVIRONMENT = {
    "partition": "TWINKLES_SLURM_PARTITION",
    "account": "TWINKLES_SLURM_ACCOUNT",
    "qos": "TWINKLES_SLURM_QOS",
    "nodes_per_block": "TWINKLES_SLURM_NODES",
    "max_blocks": "TWINKLES_SLURM_MAX_BLOCKS",
    "walltime": "TWINKLES_SLURM_WALLTIME",
    "worker_init": "TWINKLES_SLURM_WORKER_INIT",
    "cores_per_node": "TWINKLES_SLURM_CORES_PER_NODE",
    "exclusive": "TWINKLES_SLURM_EXCLUSIVE",
    "address": "TWINKLES_SLURM_ADDRESS",
    "scheduler_options": "TWINKLES_SLURM_SCHEDULER_OPTIONS",
    "heartbeat": "TWINKLES_SLURM_HEARTBEAT",
}


def default_worker_init() -> str:
    """Shell lines run in each block before its workers start: this environment's bin folder first on PATH (the
    nodes run the same Python and find Parsl's process_worker_pool.py), one BLAS/OpenMP thread per worker."""
    venv_bin = Path(sys.executable).parent
    return (f"export PATH={venv_bin}:$PATH; "
            "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1")


def settings(**given) -> dict:
    """The effective settings: given (not None) values, else the environment, else the defaults."""
    out = {}
    for key, var in ENVIRONMENT.items():
        value = given.get(key)
        out[key] = value if value is not None else os.environ.get(var) or None
    for key, default in (("nodes_per_block", 1), ("max_blocks", 4), ("heartbeat", 30)):
        try:
            out[key] = int(out[key]) if out[key] is not None else default
        except ValueError:
            raise ValueError(f"{ENVIRONMENT[key]}={out[key]!r}: must be an integer") from None
        if out[key] < 1:
            raise ValueError(f"{key} (--{key.replace('_', '-')} / {ENVIRONMENT[key]}) must be >= 1")
    out["cores_per_node"] = int(out["cores_per_node"]) if out["cores_per_node"] else None
    out["exclusive"] = str(out["exclusive"] if out["exclusive"] is not None else "1").lower() not in (
        "0", "false", "no")
    out["walltime"] = out["walltime"] or "01:00:00"
    out["worker_init"] = out["worker_init"] if out["worker_init"] is not None else default_worker_init()
    return out


def make_config(run_dir: str = "runinfo", workers: int | None = None, **given) -> Config:
    """The Parsl config; ``workers``: workers per node (default one per core of the node); ``given``: the
    settings of the module doc (None: from the environment, else the default)."""
    s = settings(**given)
    options = s["scheduler_options"] or ""
    if s["qos"]:
        options = f"#SBATCH --qos={s['qos']}\n{options}"
    provider = SlurmProvider(
        partition=s["partition"],
        account=s["account"],
        nodes_per_block=s["nodes_per_block"],
        cores_per_node=s["cores_per_node"],
        init_blocks=1,  # the first block is submitted at once (not at the strategy's first tick)
        min_blocks=0,
        max_blocks=s["max_blocks"],
        walltime=s["walltime"],
        exclusive=s["exclusive"],
        worker_init=s["worker_init"],
        scheduler_options=options,
        launcher=SrunLauncher(),  # one worker pool per node of the block
    )
    htex_options = {"address": s["address"]} if s["address"] else {}
    if workers:
        htex_options["max_workers_per_node"] = int(workers)  # else Parsl's default: one per core of the node
    htex = HighThroughputExecutor(
        label="slurm",
        heartbeat_period=s["heartbeat"],
        heartbeat_threshold=4 * s["heartbeat"],
        worker_logdir_root=str(run_dir),
        block_error_handler=windowed_error_handler,
        provider=provider,
        **htex_options,
    )
    return Config(executors=[htex], run_dir=str(run_dir), strategy="htex_auto_scale", max_idletime=60.0,
                  strategy_period=min(5.0, float(s["heartbeat"])), retries=0, usage_tracking=0)
