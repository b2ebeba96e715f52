"""Test stage downstream of wf_check, per visit and detector."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import wf_common  # noqa: F401

QUANTUM = ("visit", "detector")
INPUTS = ("wftest_stats",)
OUTPUTS = ("wftest_down",)


@dataclass
class Config:
    sleep_s: float = 0.0  # seconds
    fail_visits: tuple = ()  # visits on which the stage fails (a reader that fails)


def run_quantum(butler, data_id, config: Config) -> dict:
    stats = butler.get("wftest_stats", data_id)
    if str(data_id["visit"]) in {str(v) for v in config.fail_visits}:
        from twinkles.stages import ProcessingError
        raise ProcessingError(f"visit {data_id['visit']}: told to fail (fail_visits)")
    if config.sleep_s:
        time.sleep(config.sleep_s)
    out = {"visit": int(data_id["visit"]), "median_row_mean": float(np.median(stats["mean"]))}
    butler.put(out, "wftest_down", data_id)
    return out
