"""deblendCoaddSources (DM pipe_tasks ``DeblendCoaddSourcesTask``; newer pipelines ``deblendCoaddFootprints``
with scarlet_lite): multi-band deblending of each patch's merged detections -- deepCoadd_deblendedFlux, one
catalog per band of the same parents and children.

Steps: ``subtract_background`` (each band, as detect_coadd), ``deblend`` (footprints: any band's S/N above the
threshold; peaks assigned; Lupton-style symmetric templates on a multi-band detection image, fluxes apportioned
so that children share overlapping pixels and sum to their parent exactly: see
:mod:`twinkles.algorithms.deblend`, which says why not scarlet), ``object_rows`` (one row per isolated object,
per blend parent (``peak`` -1, ``deblend_nChild`` children) and per child (``parent_id``)), ``fluxes`` (per band:
the footprint flux of parents/isolated objects, the apportioned flux of children).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .coadd_common import BackgroundConfig, build_deblend, read_patch_coadds, subtract_background
from .timing import StepTimer

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "object_rows"]

QUANTUM = ("tract", "patch")
INPUTS = ["deepCoadd_mergeDet", "deepCoadd", "skyMap"]
OUTPUTS = ["deepCoadd_deblendedFlux"]


@dataclass
class Config:
    threshold: float = 5.0  # sigma: footprint threshold, as detect_coadd's (DM thresholdValue 5)
    max_children: int = 50  # a footprint with more peaks is not deblended (DM maxNumberOfPeaks 0 = none)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class Result:
    catalogs: dict  # band -> Table
    deblend: object
    metadata: dict


def object_rows(peaks: Table, deb) -> Table:
    """Isolated objects, blend parents and children of a deblend (band-independent columns)."""
    sig = np.asarray(peaks["significance"], float)
    inner = np.asarray(peaks["detect_isPatchInner"], bool) if "detect_isPatchInner" in peaks.colnames else \
        np.ones(len(peaks), bool)
    blended = {}
    for b in deb.blends:
        blended.update({int(m): b for m in b.children})
    rows = []  # id, parent_id, nChild, peak, footprint, x, y, inner, tooManyPeaks
    next_id = 1
    done_blends = set()
    for i in range(len(peaks)):
        b = blended.get(i)
        if b is None:
            many = deb.peak_label[i] != 0 and np.count_nonzero(deb.peak_label == deb.peak_label[i]) > 1
            rows.append((next_id, 0, 0, i, int(deb.peak_label[i]), peaks["x"][i], peaks["y"][i], inner[i], many))
            next_id += 1
            continue
        if b.label in done_blends:
            continue
        done_blends.add(b.label)
        top = int(b.children[np.argmax(sig[b.children])])
        pid = next_id
        rows.append((pid, 0, len(b.children), -1, b.label, peaks["x"][top], peaks["y"][top], inner[top], False))
        next_id += 1
        for m in b.children:
            rows.append((next_id, pid, 0, int(m), b.label, peaks["x"][m], peaks["y"][m], inner[m], False))
            next_id += 1
    names = ["id", "parent_id", "deblend_nChild", "peak", "footprint", "x", "y", "detect_isPatchInner",
             "deblend_tooManyPeaks"]
    dtypes = ["i8", "i8", "i4", "i8", "i8", "f8", "f8", "?", "?"]
    t = Table(rows=rows, names=names, dtype=dtypes) if rows else Table(names=names, dtype=dtypes)
    t["x"].unit = t["y"].unit = "pix"
    return t


def fluxes(rows: Table, deb, image: np.ndarray) -> np.ndarray:
    """Per row: footprint flux (isolated objects, parents) or apportioned flux (children), image units."""
    child = deb.child_fluxes(image)
    out = np.full(len(rows), np.nan)
    labels = deb.labels
    fp_flux = np.bincount(labels.ravel(), weights=np.nan_to_num(image).ravel().astype(np.float64),
                          minlength=int(labels.max()) + 1)
    for i, r in enumerate(rows):
        if r["parent_id"] != 0:
            out[i] = child[int(r["peak"])]
        elif r["footprint"] > 0 and not r["deblend_tooManyPeaks"]:
            out[i] = fp_flux[int(r["footprint"])]
    return out


def run(coadds: dict, peaks: Table, config: Config | None = None) -> Result:
    config = config or Config()
    timer = StepTimer()
    with timer("subtract_background"):
        images = {b: subtract_background(c, config.background)[0] for b, c in coadds.items()}
    with timer("deblend"):
        deb = build_deblend(coadds, images, peaks["x"], peaks["y"], config.threshold, config.max_children)
    with timer("object_rows"):
        rows = object_rows(peaks, deb)
    catalogs = {}
    with timer("fluxes"):
        for b, im in images.items():
            t = rows.copy()
            t["deblend_flux"] = fluxes(rows, deb, im)
            t["deblend_flux"].unit = "nJy"
            t["band"] = np.array([b] * len(t), dtype="U1")
            catalogs[b] = t
    meta = {"n_objects": int(len(rows)), "n_parents_blended": int(np.sum(rows["deblend_nChild"] > 0)),
            "n_children": int(np.sum(rows["parent_id"] != 0)), "bands": list(coadds), "timing": timer.timings()}
    return Result(catalogs, deb, meta)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    tract, patch = data_id["tract"], data_id["patch"]
    coadds = read_patch_coadds(butler, tract, patch)
    peaks = butler.get("deepCoadd_mergeDet", {"tract": tract, "patch": patch})
    result = run(coadds, peaks, config)
    for b, t in result.catalogs.items():
        butler.put(t, "deepCoadd_deblendedFlux", {"tract": tract, "patch": patch, "band": b})
    return result.metadata
