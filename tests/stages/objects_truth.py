"""Truth matching for the Object-table tests (tests/stages/test_coadd_measurement.py)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

STAR_TYPES = ("star", "variable_star")


def tangent_xy(ra, dec, ra0, dec0):
    """Arcsec offsets on the tangent plane (small field)."""
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    x = (ra - ra0) * np.cos(np.radians(dec0)) * 3600.0
    y = (dec - dec0) * 3600.0
    return np.column_stack([x, y])


def read_objects(repo, runs, dataset_type: str = "objectTable") -> Table:
    return vstack([repo.read(r) for r in repo.query(dataset_type, runs=runs)])


def match(objects: Table, truth: Table, radius_arcsec: float):
    """For each truth row, the nearest object within radius (index or -1) and the distance (arcsec)."""
    ra0, dec0 = float(np.mean(truth["ra"])), float(np.mean(truth["dec"]))
    to = tangent_xy(objects["coord_ra"], objects["coord_dec"], ra0, dec0)
    tt = tangent_xy(truth["ra"], truth["dec"], ra0, dec0)
    d, i = cKDTree(to).query(tt, distance_upper_bound=radius_arcsec)
    i = np.where(np.isfinite(d), i, -1)
    return i, d


def covered(repo, runs, truth: Table, band: str, min_inputs: int = 3) -> np.ndarray:
    """Truth rows inside some patch's inner region where that patch's coadd has >= min_inputs inputs."""
    from twinkles.algorithms.skymap import SkyMap
    sky = SkyMap.from_dict(repo.get("skyMap", runs=runs))
    pt = np.array([sky.patch_of(a, d) for a, d in zip(truth["ra"], truth["dec"])])
    out = np.zeros(len(truth), bool)
    for p in set(pt[pt >= 0].tolist()):
        refs = repo.query("deepCoadd_nImage", {"tract": sky.tract, "patch": int(p), "band": band}, runs=runs)
        if not refs:
            continue
        nim = repo.read(refs[0])
        sel = np.flatnonzero(pt == p)
        x, y = sky.patch_wcs(int(p)).all_world2pix(truth["ra"][sel], truth["dec"][sel], 0)
        xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
        ok = (xi >= 0) & (yi >= 0) & (xi < nim.shape[1]) & (yi < nim.shape[0])
        c = np.zeros(len(sel), bool)
        c[ok] = nim[yi[ok], xi[ok]] >= min_inputs
        out[sel] = c
    return out


def isolated(truth: Table, band: str, radius_arcsec: float, flux_frac: float) -> np.ndarray:
    """Truth rows with no other truth object within radius brighter than flux_frac of their own flux."""
    ra0, dec0 = float(np.mean(truth["ra"])), float(np.mean(truth["dec"]))
    xy = tangent_xy(truth["ra"], truth["dec"], ra0, dec0)
    f = np.asarray(truth[f"{band}_flux"], float)
    tree = cKDTree(xy)
    out = np.ones(len(truth), bool)
    for i, nb in enumerate(tree.query_ball_point(xy, radius_arcsec)):
        others = [j for j in nb if j != i]
        if others and np.any(f[others] > flux_frac * f[i]):
            out[i] = False
    return out
