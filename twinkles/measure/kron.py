"""Kron photometry: the first-moment (Kron 1980) radius in the source's moment ellipse and the flux in
``kron_factor`` (2.5, DM's ``ext_photometryKron_KronFlux`` default) times it.

The ellipse's axes and angle come from the adaptive moments (ixx, iyy, ixy); the radius and the elliptical sum are
sep's (SExtractor's FLUX_AUTO), with a floor ``min_radius_px`` on the Kron radius times sqrt(a b) (DM's
minimumRadius). Fluxes in the image's units; ``kronRad`` in pixels (the ellipse's geometric-mean radius).
"""

from __future__ import annotations

import numpy as np
import sep

from .photometry import _sep_plane

__all__ = ["kron_flux", "moment_ellipse"]


def moment_ellipse(ixx, iyy, ixy):
    """(a, b, theta) -- semi-axes (pixels, 1 sigma) and angle (radians, from +x) of second moments."""
    ixx, iyy, ixy = (np.asarray(v, float) for v in (ixx, iyy, ixy))
    tr = 0.5 * (ixx + iyy)
    d = np.sqrt(np.maximum(0.25 * (ixx - iyy) ** 2 + ixy ** 2, 0.0))
    a = np.sqrt(np.maximum(tr + d, 1e-6))
    b = np.sqrt(np.maximum(tr - d, 1e-6))
    theta = 0.5 * np.arctan2(2 * ixy, ixx - iyy)
    return a, b, theta


def kron_flux(image, variance, x, y, ixx, iyy, ixy, bad=None, kron_factor: float = 2.5, n_radius: float = 6.0,
              min_radius_px: float = 2.0, kron_radius=None):
    """Kron fluxes at (x, y): ``(flux, flux_err, kron_rad_px, flag)``. With ``kron_radius`` (pixels, the value a
    previous call returned, e.g. the reference band's) it is forced: same radius, no re-measurement."""
    data = _sep_plane(image)
    var = _sep_plane(variance)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    a, b, theta = moment_ellipse(ixx, iyy, ixy)
    bad_shape = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(theta))
    a = np.where(bad_shape, 2.0, a)
    b = np.where(bad_shape, 2.0, b)
    theta = np.where(bad_shape, 0.0, theta)
    mask = None if bad is None else np.ascontiguousarray(bad, dtype=bool)
    if kron_radius is None:
        kr, kflag = sep.kron_radius(data, x, y, a, b, theta, n_radius, mask=mask)
        kr = np.asarray(kr, float)
        rad = kr * np.sqrt(a * b)  # geometric-mean radius of the 1-Kron-radius ellipse
        bad_r = ~np.isfinite(rad) | (rad <= 0)
        rad = np.where(bad_r, min_radius_px, np.maximum(rad, min_radius_px))
        flag = (np.asarray(kflag) != 0) | bad_r | bad_shape
    else:
        rad = np.maximum(np.asarray(kron_radius, float), min_radius_px)
        rad = np.where(np.isfinite(rad), rad, min_radius_px)
        flag = bad_shape.copy()
    scale = kron_factor * rad / np.sqrt(a * b)
    f, e, fl = sep.sum_ellipse(data, x, y, a, b, theta, scale, var=var, mask=mask, subpix=1)
    return np.asarray(f), np.asarray(e), rad, flag | (np.asarray(fl) != 0)
