"""Test stage aggregating every wf_check output of the field into one summary (quantum: the field)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import wf_common  # noqa: F401

QUANTUM = ()
INPUTS = ("wftest_stats",)
OUTPUTS = ("wftest_summary",)


@dataclass
class Config:
    pass


def run_quantum(butler, data_id, config: Config) -> dict:
    visits = {}
    for ref in butler.query("wftest_stats"):
        visits[str(ref.data_id["visit"])] = float(np.mean(butler.read(ref)["mean"]))
    summary = {"visits": visits, "n": len(visits)}
    butler.put(summary, "wftest_summary", {})
    return {"n": len(visits)}
