"""Test stage: validate one eimage (readable, finite, with a celestial WCS), optionally sleep / burn CPU /
allocate memory, and write a small deterministic catalog of its statistics."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

import wf_common  # noqa: F401 - registers the test dataset types
from twinkles.image import wcs_is_celestial
from twinkles.stages import ProcessingError

QUANTUM = ("visit", "detector")
INPUTS = ("eimage",)
OUTPUTS = ("wftest_stats", "wftest_image")


@dataclass
class Config:
    sleep_s: float = 0.0  # seconds asleep (no CPU)
    burn_s: float = 0.0  # seconds of CPU spent in a busy loop
    alloc_mb: int = 0  # MiB allocated and touched, then freed
    die_visits: tuple = ()  # visits on which the process dies at once (like a job killed by the OOM killer)


def run(exposure, data_id, config: Config) -> Table:
    vid = f"visit {data_id['visit']} detector {data_id['detector']}"
    bad = int(np.count_nonzero(~np.isfinite(exposure.image)))
    if bad:
        raise ProcessingError(f"{vid}: {bad} non-finite (NaN/inf) pixels in the eimage; re-simulate or mask them")
    if not wcs_is_celestial(exposure.wcs):
        raise ProcessingError(f"{vid}: the eimage has no celestial WCS; ingest it with a WCS")
    if config.sleep_s:
        time.sleep(config.sleep_s)
    if config.burn_s:
        # this thread's CPU: in the thread executor two jobs burning at once would each stop after half of it
        # by the process's clock (which is what the thread executor's records do not count)
        t0 = time.thread_time()
        x = 0
        while time.thread_time() - t0 < config.burn_s:
            x += 1
    if config.alloc_mb:
        block = np.ones(config.alloc_mb * 1024 * 1024 // 8)
        block[::512] += 1.0
        del block
    img = exposure.image.astype(np.float64)
    return Table({"row": np.arange(img.shape[0]), "mean": img.mean(axis=1), "std": img.std(axis=1)},
                 meta={"visit": int(data_id["visit"])})


def run_quantum(butler, data_id, config: Config) -> dict:
    if str(data_id["visit"]) in {str(v) for v in config.die_visits}:
        os._exit(137)
    exposure = butler.get("eimage", data_id)
    table = run(exposure, data_id, config)
    butler.put(table, "wftest_stats", data_id)
    exposure.image -= np.float32(np.median(exposure.image))  # a FITS product too (its bytes must not vary)
    butler.put(exposure, "wftest_image", data_id)
    return {"mean": float(np.mean(table["mean"]))}
