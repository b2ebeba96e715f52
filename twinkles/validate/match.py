"""Positional matching of catalogs on the sky (unit vectors in a k-d tree), one-to-one."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["match_sky", "unit_vectors"]


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    ra = np.radians(np.asarray(ra_deg, float))
    dec = np.radians(np.asarray(dec_deg, float))
    return np.c_[np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]


def match_sky(ra1, dec1, ra2, dec2, max_radius_arcsec: float = 1.0, mutual: bool = True):
    """Match catalog 1 to catalog 2 by position within ``max_radius_arcsec``.

    Returns ``(i1, i2, sep_arcsec)``: for each matched pair the indices in catalog 1 and 2 and the separation.
    With ``mutual`` (default) a pair is kept only if each is the other's nearest neighbour (one-to-one).
    """
    if len(ra1) == 0 or len(ra2) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    v1, v2 = unit_vectors(ra1, dec1), unit_vectors(ra2, dec2)
    chord = 2.0 * np.sin(np.radians(max_radius_arcsec / 3600.0) / 2.0)
    t2 = cKDTree(v2)
    d12, j = t2.query(v1, distance_upper_bound=chord)
    i1 = np.nonzero(np.isfinite(d12))[0]
    i2 = j[i1]
    if mutual and len(i1):
        t1 = cKDTree(v1)
        _, back = t1.query(v2[i2])
        ok = back == i1
        i1, i2 = i1[ok], i2[ok]
    sep = np.degrees(2.0 * np.arcsin(np.clip(np.linalg.norm(v1[i1] - v2[i2], axis=1) / 2.0, 0, 1))) * 3600.0
    return i1, i2, sep
