"""Per-job memory and time limits: parsing (``--job-memory 4GB --job-time 30m``, ``twinkles.yaml``) and display.

A limit is enforced by the worker running the job (:mod:`twinkles.workflow.job`): the job runs in a child
process of the worker, which watches its resident memory and wall time and kills it when it goes over; the job
is recorded ``failed`` with the reason ("exceeded memory limit 4.0 GB (peak 4.3 GB)") and the worker goes on
with its next job. Memory sizes are binary, as Slurm's and ``free``'s: 1 GB = 1024 MB = 2**30 bytes.

In ``twinkles.yaml``::

    workflow:
      job_memory: 4GB         # every stage (unless --job-memory is given)
      job_time: 30m
      stages:
        assemble_coadd: {job_memory: 12GB, job_time: 2h}   # this stage's own limits, over the others

Precedence, per stage: the stage's own entry in ``twinkles.yaml``, then ``--job-memory``/``--job-time``, then
``workflow.job_memory``/``workflow.job_time`` in ``twinkles.yaml``; none: no limit.
"""

from __future__ import annotations

import re

__all__ = ["LimitError", "parse_memory", "parse_duration", "format_memory", "format_duration", "stage_limits"]

_MEM_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_TIME_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class LimitError(ValueError):
    """A job limit that cannot be read (the message says which value and how to write it)."""


def parse_memory(value, what: str = "--job-memory") -> int:
    """Bytes of a memory size: ``4GB``, ``4G``, ``512MB``, ``1.5GiB`` (binary units), or an integer of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise LimitError(f"{what} {value!r}: write a size such as 4GB, 500MB or 1.5GB")
        n = float(m.group(1)) * _MEM_UNITS[m.group(2).upper()]
    if n <= 0:
        raise LimitError(f"{what} {value!r}: must be more than 0")
    return int(n)


def parse_duration(value, what: str = "--job-time") -> float:
    """Seconds of a duration: ``30m``, ``90s``, ``2h``, ``1h30m``, ``1.5h`` or ``HH:MM:SS`` / ``MM:SS``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise LimitError(f"{what} {value!r}: give a unit (30m, 90s, 2h) or HH:MM:SS")
    text = str(value).strip()
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + int(part)
    else:
        parts = re.findall(r"([0-9]*\.?[0-9]+)\s*(min|[smhd])", text, re.IGNORECASE)
        if not parts or re.sub(r"([0-9]*\.?[0-9]+)\s*(min|[smhd])|\s+", "", text, flags=re.IGNORECASE):
            raise LimitError(f"{what} {value!r}: write a duration such as 30m, 90s, 2h, 1h30m or HH:MM:SS")
        seconds = sum(float(n) * _TIME_UNITS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise LimitError(f"{what} {value!r}: must be more than 0")
    return seconds


def format_memory(n_bytes: float) -> str:
    """``4.0 GB`` at or above 1 GB, else ``230 MB`` (binary units, as :func:`parse_memory`)."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GB"
    return f"{n_bytes / 2**20:.0f} MB"


def format_duration(seconds: float) -> str:
    """``45.0 s`` below 2 minutes, ``30.0 min`` below 2 hours, else ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def stage_limits(repo_config: dict, stages: list[str], job_memory=None, job_time=None) -> dict[str, dict]:
    """{stage: {"memory_bytes": int | None, "time_s": float | None}} for these stages (see the module doc)."""
    wf = (repo_config or {}).get("workflow") or {}
    if not isinstance(wf, dict):
        raise LimitError("twinkles.yaml: `workflow` must be a mapping (job_memory, job_time, stages)")
    per_stage = wf.get("stages") or {}
    if not isinstance(per_stage, dict):
        raise LimitError("twinkles.yaml: `workflow.stages` must map stage names to {job_memory, job_time}")
    for name, entry in per_stage.items():
        if not isinstance(entry, dict) or set(entry) - {"job_memory", "job_time"}:
            raise LimitError(f"twinkles.yaml: workflow.stages.{name} must be a mapping with job_memory and/or "
                             f"job_time, got {entry!r}")
    base_mem = job_memory if job_memory is not None else wf.get("job_memory")
    base_time = job_time if job_time is not None else wf.get("job_time")
    out = {}
    for stage in stages:
        entry = per_stage.get(stage) or {}
        mem = entry.get("job_memory", base_mem)
        tim = entry.get("job_time", base_time)
        src_mem = f"twinkles.yaml workflow.stages.{stage}.job_memory" if "job_memory" in entry else "--job-memory"
        src_time = f"twinkles.yaml workflow.stages.{stage}.job_time" if "job_time" in entry else "--job-time"
        out[stage] = {"memory_bytes": parse_memory(mem, src_mem) if mem is not None else None,
                      "time_s": parse_duration(tim, src_time) if tim is not None else None}
    return out
