"""Astrometric calibration: match detections to the reference catalog from a rough header WCS, fit TAN-SIP.

1. Initial match, robust to offsets of many arcseconds and small rotations: the reference stars are projected to
   pixels with the header WCS; for each trial rotation about the detector centre (steps small enough to move the
   corners by < 1 pixel, within +-``max_rotation_deg``), every (detection - reference) pixel offset within
   ``max_offset_arcsec`` of the brightest detections and references is histogrammed; the rotation and offset
   whose histogram peak holds most pairs win (a Hough-style vote, as astrometry.net-free matchers do).
2. Pairs within ``match_radius_px`` of that transform are matched one-to-one (nearest neighbour, mutual).
3. A TAN WCS is fitted (``astropy.wcs.utils.fit_wcs_from_points``), then TAN-SIP of ``sip_degree`` when there are
   enough matches; each iteration re-matches within ``fit_match_radius_arcsec`` and rejects pairs more than
   ``clip_nsigma`` robust sigmas from the fit.
The result carries the fitted WCS, the matched pairs and the RMS of the residuals (mas).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import fit_wcs_from_points
from scipy.spatial import cKDTree

__all__ = ["AstrometryError", "AstrometryResult", "initial_match", "fit_astrometry", "mutual_nearest"]


class AstrometryError(RuntimeError):
    """The detections could not be matched to the reference catalog well enough to fit a WCS."""


@dataclass
class AstrometryResult:
    wcs: WCS
    det_index: np.ndarray  # indices into the detection arrays of the matched pairs used in the final fit
    ref_index: np.ndarray  # indices into the reference arrays
    rms_mas: float  # RMS of the total (2-d) residual of the final fit, milliarcsec
    median_offset_mas: float
    n_matches: int
    initial_shift_px: tuple[float, float]
    initial_rotation_deg: float
    sip_degree: int


def mutual_nearest(xa, ya, xb, yb, radius):
    """One-to-one pairs (ia, ib) that are each other's nearest neighbour within ``radius``."""
    if len(xa) == 0 or len(xb) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    ta, tb = cKDTree(np.c_[xa, ya]), cKDTree(np.c_[xb, yb])
    d_ab, i_ab = tb.query(np.c_[xa, ya], distance_upper_bound=radius)
    d_ba, i_ba = ta.query(np.c_[xb, yb], distance_upper_bound=radius)
    ia = np.nonzero(np.isfinite(d_ab))[0]
    ib = i_ab[ia]
    ok = i_ba[ib] == ia
    return ia[ok], ib[ok]


def initial_match(x, y, xr, yr, shape, max_offset_px: float, max_rotation_deg: float = 0.3,
                  bin_px: float = 1.5, n_bright: int = 300):
    """Vote for the rotation (about the detector centre) and shift taking reference pixel positions (xr, yr)
    onto detections (x, y); both lists sorted brightest first. Returns (dx, dy, rotation_deg, votes)."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    xd, yd = np.asarray(x[:n_bright]), np.asarray(y[:n_bright])
    xr0, yr0 = np.asarray(xr[:n_bright]) - cx, np.asarray(yr[:n_bright]) - cy
    half = max(nx, ny) / 2.0
    step = math.degrees(0.7 / (half * math.sqrt(2)))
    n_rot = int(math.ceil(max_rotation_deg / step)) if max_rotation_deg > 0 else 0
    nb = int(math.ceil(2 * max_offset_px / bin_px)) + 1
    best = (0.0, 0.0, 0.0, -1)
    for k in range(-n_rot, n_rot + 1):
        th = math.radians(k * step)
        c, s = math.cos(th), math.sin(th)
        xrr = c * xr0 - s * yr0 + cx
        yrr = s * xr0 + c * yr0 + cy
        ddx = (xd[:, None] - xrr[None, :]).ravel()
        ddy = (yd[:, None] - yrr[None, :]).ravel()
        sel = (np.abs(ddx) < max_offset_px) & (np.abs(ddy) < max_offset_px)
        if not sel.any():
            continue
        h, xe, ye = np.histogram2d(ddx[sel], ddy[sel], bins=nb,
                                   range=[[-max_offset_px, max_offset_px], [-max_offset_px, max_offset_px]])
        # sum 2x2 neighbouring bins so that a peak on a bin edge is not split
        h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
        i, j = np.unravel_index(np.argmax(h2), h2.shape)
        votes = int(h2[i, j])
        if votes > best[3]:
            # refine: mean offset of the pairs in the winning 2x2 cell
            inx = (ddx[sel] >= xe[i]) & (ddx[sel] < xe[i + 2]) & (ddy[sel] >= ye[j]) & (ddy[sel] < ye[j + 2])
            best = (float(np.median(ddx[sel][inx])), float(np.median(ddy[sel][inx])), k * step, votes)
    return best


def _sky_offsets_mas(wcs: WCS, x, y, ra, dec):
    pr, pd = wcs.all_pix2world(x, y, 0)
    dra = (pr - ra) * np.cos(np.radians(dec))
    ddec = pd - dec
    return dra * 3.6e6, ddec * 3.6e6


def fit_astrometry(x, y, det_order, ref_ra, ref_dec, ref_order, header_wcs: WCS, shape,
                   max_offset_arcsec: float = 10.0, max_rotation_deg: float = 0.3, match_radius_px: float = 3.0,
                   fit_match_radius_arcsec: float = 0.5, sip_degree: int = 2, min_matches: int = 10,
                   min_matches_per_sip_term: float = 5.0, n_iter: int = 4, clip_nsigma: float = 3.0
                   ) -> AstrometryResult:
    """Fit the WCS of an image from detections (x, y; 0-based) and reference stars (ra, dec; deg).

    ``det_order``/``ref_order``: index arrays listing detections/references brightest first (the vote uses the
    brightest ``n_bright``). Raises :class:`AstrometryError` with the reason when too few pairs match.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ref_ra = np.asarray(ref_ra, float)
    ref_dec = np.asarray(ref_dec, float)
    ny, nx = shape
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(header_wcs.pixel_scale_matrix))) * 3600.0)
    max_offset_px = max_offset_arcsec / scale_arcsec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr, yr = header_wcs.all_world2pix(ref_ra, ref_dec, 0)
    margin = max_offset_px + 2
    on = (xr > -margin) & (xr < nx - 1 + margin) & (yr > -margin) & (yr < ny - 1 + margin)
    ref_order = np.asarray([i for i in ref_order if on[i]], int)
    det_order = np.asarray(det_order, int)
    if len(ref_order) < min_matches:
        raise AstrometryError(f"only {len(ref_order)} reference stars fall on the image through the header WCS "
                              f"(need >= {min_matches}); the header WCS may be far off or the reference catalog "
                              "does not cover this field")
    dx, dy, rot, votes = initial_match(x[det_order], y[det_order], xr[ref_order], yr[ref_order], shape,
                                       max_offset_px, max_rotation_deg)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    th = math.radians(rot)
    c, s = math.cos(th), math.sin(th)
    xr1 = c * (xr - cx) - s * (yr - cy) + cx + dx
    yr1 = s * (xr - cx) + c * (yr - cy) + cy + dy
    ia, ib = mutual_nearest(x[det_order], y[det_order], xr1[ref_order], yr1[ref_order], match_radius_px)
    di, ri = det_order[ia], ref_order[ib]
    if len(di) < min_matches:
        raise AstrometryError(f"{len(di)} reference matches (need >= {min_matches}) within {match_radius_px} px "
                              f"after the best shift ({dx:.1f}, {dy:.1f}) px and rotation {rot:.3f} deg "
                              f"({votes} votes); the header WCS may be off by more than "
                              f"astrometry.max_offset_arcsec={max_offset_arcsec}")
    degree = 0
    wcs = header_wcs
    rms = float("nan")
    med = float("nan")
    for it in range(n_iter + 1):
        n = len(di)
        want = sip_degree if it > 0 else 0
        while want > 0 and n < min_matches_per_sip_term * _n_sip_terms(want):
            want -= 1
        degree = want
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            world = SkyCoord(ref_ra[ri], ref_dec[ri], unit="deg")
            wcs = fit_wcs_from_points((x[di], y[di]), world, proj_point="center", projection="TAN",
                                      sip_degree=degree if degree >= 2 else None)
        dra, ddec = _sky_offsets_mas(wcs, x[di], y[di], ref_ra[ri], ref_dec[ri])
        r = np.hypot(dra, ddec)
        rms = float(np.sqrt(np.mean(r ** 2)))
        med = float(np.median(r))
        if it == n_iter:
            break
        # re-match everything with the new WCS, then clip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xr2, yr2 = wcs.all_world2pix(ref_ra, ref_dec, 0)
        ia, ib = mutual_nearest(x[det_order], y[det_order], xr2[ref_order], yr2[ref_order],
                                fit_match_radius_arcsec / scale_arcsec)
        di, ri = det_order[ia], ref_order[ib]
        dra, ddec = _sky_offsets_mas(wcs, x[di], y[di], ref_ra[ri], ref_dec[ri])
        r = np.hypot(dra, ddec)
        sig = 1.4826 * np.median(r) / 1.1774  # the median of a 2-d Gaussian radius is 1.1774 sigma
        keep = r < max(clip_nsigma * sig, 1e-6) * 1.0 + 0.0
        keep |= r < 1.0  # never clip below 1 mas
        di, ri = di[keep], ri[keep]
        if len(di) < min_matches:
            raise AstrometryError(f"{len(di)} reference matches after clipping (need >= {min_matches})")
    return AstrometryResult(wcs, di, ri, rms, med, len(di), (dx, dy), rot, degree)


def _n_sip_terms(degree: int) -> int:
    """Number of SIP coefficients in A and B together for orders 2..degree."""
    return 2 * sum(p + 1 for p in range(2, degree + 1)) if degree >= 2 else 0


_ = FITSFixedWarning
