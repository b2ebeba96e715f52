"""Shared pieces of the workflow tests' stages: test-only dataset types and a tiny-repository builder.

The stages (wf_check, wf_down, wf_agg, wf_flaky, wf_limits) know nothing of twinkles' science stages: they
validate an eimage the way process_eimage will (readable, finite pixels, a celestial WCS) and write small deterministic
products, so the engine can be tested alone. They are registered with TWINKLES_STAGE_MODULES (see conftest.py).
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from twinkles.image import Exposure, VisitInfo
from twinkles.repo import Repository
from twinkles.repo.datasets import DATASET_TYPES, register_dataset_type

for _name, _dims, _storage in [("wftest_stats", ("visit", "detector"), "Catalog"),
                               ("wftest_down", ("visit", "detector"), "StructuredData"),
                               ("wftest_summary", (), "StructuredData"),
                               ("wftest_flaky", ("visit", "detector"), "StructuredData"),
                               ("wftest_limits", ("visit", "detector"), "StructuredData"),
                               ("wftest_image", ("visit", "detector"), "Exposure")]:
    if _name not in DATASET_TYPES:
        register_dataset_type(_name, _dims, _storage)

STAGES = {"wf_check": "wf_check", "wf_down": "wf_down", "wf_agg": "wf_agg", "wf_flaky": "wf_flaky",
          "wf_limits": "wf_limits"}
ENV_VALUE = ",".join(f"{k}={v}" for k, v in STAGES.items())


def register_test_stages(mp) -> None:
    """Register the test stages, with ``mp`` (a pytest MonkeyPatch: undone after the test or fixture), in this
    process (the stage table) and in every process it starts (TWINKLES_STAGE_MODULES, PYTHONPATH)."""
    import os
    from pathlib import Path

    from twinkles.stages import STAGE_MODULES
    here = str(Path(__file__).resolve().parent)
    mp.setenv("TWINKLES_STAGE_MODULES", ENV_VALUE)
    mp.setenv("PYTHONPATH", os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p]))
    for name, module in STAGES.items():
        mp.setitem(STAGE_MODULES, name, module)


def make_wcs(shape=(64, 64)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0091, -27.4389]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = [[-0.2 / 3600, 0.0], [0.0, 0.2 / 3600]]
    return w


def make_eimage(visit: int, shape=(64, 64), nan: bool = False, wcs: bool = True, seed: int | None = None
                ) -> Exposure:
    rng = np.random.default_rng(visit if seed is None else seed)
    image = rng.normal(1000.0, 30.0, size=shape).astype(np.float32)
    if nan:
        image[5:9, 10:20] = np.nan
    info = VisitInfo(visit=visit, band="gri"[visit % 3], mjd_tai=60000.0 + visit * 0.01)
    return Exposure(image, variance=np.full(shape, 900.0, np.float32), wcs=make_wcs(shape) if wcs else None,
                    visit_info=info)


def make_repo(root, visits, bad: dict | None = None) -> Repository:
    """A repository with one eimage per visit (detector 0); ``bad``: {visit: "corrupt" | "nan" | "nowcs"}."""
    bad = bad or {}
    # uncompressed images: the tests compare the stages' numbers with the images' exactly, and files byte for byte
    repo = Repository.create(root, {"storage": {"compression": "none"}})
    for v in visits:
        kind = bad.get(v)
        ref = repo.put(make_eimage(v, nan=kind == "nan", wcs=kind != "nowcs"), "eimage", {"visit": v, "detector": 0})
        if kind == "corrupt":
            path = repo.root / ref.path
            data = path.read_bytes()
            path.write_bytes(data[:2880] + b"\x00garbage" * 50)  # a truncated FITS file
    return repo


def job_rows(repo, run="runs/l2") -> list[dict]:
    """The job records of a run, as dicts, by stage and visit."""
    with repo.read_only() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs WHERE run=? ORDER BY stage, visit", (run,))]


def whoami() -> dict:
    """A Parsl app body: which process ran it, its parent's command line and its Python."""
    import os
    import sys

    import psutil
    me = psutil.Process()
    return {"pid": os.getpid(), "pool": " ".join(me.parent().cmdline()), "executable": sys.executable}
