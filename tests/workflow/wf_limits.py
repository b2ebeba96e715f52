"""Test stage for the per-job limits: on ``hog_visit`` it allocates memory without bound (touching every page),
on ``sleep_visit`` it sleeps; on the other visits it writes a small product at once."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import wf_common  # noqa: F401

QUANTUM = ("visit", "detector")
INPUTS = ("eimage",)
OUTPUTS = ("wftest_limits",)


@dataclass
class Config:
    hog_visit: int = -1  # this visit allocates 50 MB more every 10 ms until stopped
    sleep_visit: int = -1  # this visit sleeps sleep_s
    sleep_s: float = 120.0  # s
    #: safety net on a shared machine: the hog stops by itself here (GB), failing its test, if nothing stopped it
    hog_cap_gb: float = 3.0


def run_quantum(butler, data_id, config: Config) -> dict:
    visit = int(data_id["visit"])
    if visit == config.hog_visit:
        chunks = []
        while len(chunks) * 50 < config.hog_cap_gb * 1024:
            chunks.append(np.ones(50 * 2**20 // 8))  # written: resident, not only reserved
            time.sleep(0.01)
        raise RuntimeError(f"visit {visit}: allocated {config.hog_cap_gb} GB and was not stopped")
    if visit == config.sleep_visit:
        time.sleep(config.sleep_s)
        raise RuntimeError(f"visit {visit}: slept {config.sleep_s} s and was not stopped")
    butler.put({"visit": visit}, "wftest_limits", data_id)
    return {"visit": visit}
