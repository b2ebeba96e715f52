"""True and header (perturbed) WCS of a simulated visit, and gnomonic projection helpers.

The true WCS of a visit is a TAN projection centred on the detector centre (CRPIX = centre, 1-based in FITS), at
``trueCrval1, trueCrval2`` (deg) with the sky rotated by ``trueRotation`` (deg) and ``pixel_scale_arcsec``:

    CD = scale * [[-cos(rot), sin(rot)], [sin(rot), cos(rot)]]

(rot = 0: north up, east left). The header WCS written to the eimage is the same with CRVAL moved on the sky by
(``wcsOffsetRa``, ``wcsOffsetDec``) arcsec (east, north, in the tangent plane of the true CRVAL) and the rotation
changed by ``wcsRotOffset`` deg -- as PhoSim's headers were off, so astrometric calibration has work to do.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning

from ..image import tan_deproject, tan_project

__all__ = ["make_tan_wcs", "true_wcs", "header_wcs", "tan_project", "tan_deproject", "detector_center"]


def detector_center(width: int, height: int) -> tuple[float, float]:
    """0-based pixel coordinates of the detector centre."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def make_tan_wcs(crval_ra_deg: float, crval_dec_deg: float, width: int, height: int,
                 pixel_scale_arcsec: float, rotation_deg: float = 0.0) -> WCS:
    """A TAN WCS with CRPIX at the detector centre."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        w = WCS(naxis=2)
    cx, cy = detector_center(width, height)
    s = pixel_scale_arcsec / 3600.0
    c, sn = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [crval_ra_deg % 360.0, crval_dec_deg]
    w.wcs.crpix = [cx + 1.0, cy + 1.0]
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (width, height)
    return w


def _geometry(repo_config: dict) -> tuple[int, int, float]:
    width = int(repo_config.get("width", repo_config.get("size")))
    height = int(repo_config.get("height", repo_config.get("size")))
    return width, height, float(repo_config["pixel_scale_arcsec"])


def true_wcs(visit_row: dict, repo_config: dict) -> WCS:
    """The true WCS of a visit (what the renderer used to place every object)."""
    width, height, scale = _geometry(repo_config)
    return make_tan_wcs(float(visit_row["trueCrval1"]), float(visit_row["trueCrval2"]), width, height, scale,
                        float(visit_row["trueRotation"]))


def header_wcs(visit_row: dict, repo_config: dict) -> WCS:
    """The perturbed WCS written in the eimage header."""
    width, height, scale = _geometry(repo_config)
    ra, dec = tan_deproject(float(visit_row["wcsOffsetRa"]) / 3600.0, float(visit_row["wcsOffsetDec"]) / 3600.0,
                            float(visit_row["trueCrval1"]), float(visit_row["trueCrval2"]))
    return make_tan_wcs(float(ra), float(dec), width, height, scale,
                        float(visit_row["trueRotation"]) + float(visit_row["wcsRotOffset"]))
