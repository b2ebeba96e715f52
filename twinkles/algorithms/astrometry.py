"""Astrometric calibration: match detections to the reference catalog from a rough header WCS, fit TAN-SIP.

1. Initial match, robust to offsets of many arcseconds and small rotations: the reference stars are projected to
   pixels with the header WCS; for each trial rotation about the detector centre (steps small enough to move the
   corners by < 1 pixel, within +-``max_rotation_deg``), every (detection - reference) pixel offset within
   ``max_offset_arcsec`` of the brightest detections and references is histogrammed; the rotation and offset
   whose histogram peak holds most pairs win (a Hough-style vote, as astrometry.net-free matchers do).
2. Pairs within ``match_radius_px`` of that transform are matched one-to-one (nearest neighbour, mutual).
3. A TAN WCS is fitted (weighted least squares, :func:`fit_tan_sip`), then TAN-SIP of ``sip_degree`` when there
   are enough matches; each iteration re-matches within ``fit_match_radius_arcsec`` and rejects pairs more than
   ``clip_nsigma`` robust sigmas from the fit.
The result carries the fitted WCS, the matched pairs and the RMS of the residuals (mas).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ..image import pixel_scale_arcsec, tan_deproject, tan_project

__all__ = ["AstrometryError", "AstrometryResult", "initial_match", "fit_astrometry", "fit_tan_sip",
           "mutual_nearest"]


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
                   min_matches_per_sip_term: float = 10.0, n_iter: int = 4, clip_nsigma: float = 3.0,
                   x_err=None, y_err=None, ref_ra_err=None, ref_dec_err=None) -> AstrometryResult:
    """Fit the WCS of an image from detections (x, y; 0-based) and reference stars (ra, dec; deg).

    ``det_order``/``ref_order``: index arrays listing detections/references brightest first (the vote uses the
    brightest ``n_bright``). ``x_err, y_err`` (pixels) and ``ref_ra_err, ref_dec_err`` (deg) weight the fit.
    Raises :class:`AstrometryError` with the reason when too few pairs match.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ref_ra = np.asarray(ref_ra, float)
    ref_dec = np.asarray(ref_dec, float)
    ny, nx = shape
    scale_arcsec = pixel_scale_arcsec(header_wcs)
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
        var_mas2 = (_err2(x_err, di, 0.02) + _err2(y_err, di, 0.02)) / 2 * scale_arcsec ** 2 * 1e6 + \
            (_err2(ref_ra_err, ri, 0.0) + _err2(ref_dec_err, ri, 0.0)) / 2 * 3.6e6 ** 2 + 1.0
        wcs = fit_tan_sip(x[di], y[di], ref_ra[ri], ref_dec[ri], 1.0 / var_mas2, sip_degree=degree,
                          crpix=((nx - 1) / 2.0, (ny - 1) / 2.0))
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
        var_mas2 = (_err2(x_err, di, 0.02) + _err2(y_err, di, 0.02)) / 2 * scale_arcsec ** 2 * 1e6 + \
            (_err2(ref_ra_err, ri, 0.0) + _err2(ref_dec_err, ri, 0.0)) / 2 * 3.6e6 ** 2 + 1.0
        chi = r / np.sqrt(2.0 * var_mas2)  # 2-d radius in units of the per-axis sigma, /sqrt(2)
        scale = max(1.0, float(np.median(chi)) / 0.8326)  # median of a unit 2-d radius / sqrt(2)
        keep = chi < clip_nsigma * scale
        di, ri = di[keep], ri[keep]
        if len(di) < min_matches:
            raise AstrometryError(f"{len(di)} reference matches after clipping (need >= {min_matches})")
    return AstrometryResult(wcs, di, ri, rms, med, len(di), (dx, dy), rot, degree)


def fit_tan_sip(x, y, ra, dec, weights=None, sip_degree: int = 2, crpix=None, tangent_point=None,
                n_iter: int = 3) -> WCS:
    """Weighted least-squares TAN-SIP WCS from pixel positions (0-based) and sky positions (deg).

    The sky positions are projected gnomonically about a tangent point (standard coordinates xi, eta); with
    pixel offsets (u, v) from ``crpix`` the model is ``(xi, eta) = CD (u + f(u, v), v + g(u, v))`` with f, g the
    SIP polynomials of orders 2..``sip_degree`` (Shupe et al. 2005). Both xi and eta are polynomials of (u, v)
    linear in their coefficients, fitted with weights (1 / sigma^2); the constant terms move the tangent point,
    which is iterated until it sits at ``crpix`` (exact TAN at the reference pixel). The inverse SIP (AP, BP)
    is fitted on a grid so that world -> pixel is fast and exact to << 1 mas.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, float)
    if crpix is None:
        crpix = (float(np.mean(x)), float(np.mean(y)))
    ra0, dec0 = tangent_point if tangent_point is not None else (float(np.median(ra)), float(np.median(dec)))
    u, v = x - crpix[0], y - crpix[1]
    norm = max(float(np.max(np.abs(np.r_[u, v]))), 1.0)
    terms = [(p, q) for p in range(sip_degree + 1) for q in range(sip_degree + 1 - p)] if sip_degree >= 2 else \
        [(0, 0), (1, 0), (0, 1)]
    design = np.stack([(u / norm) ** p * (v / norm) ** q for p, q in terms], axis=1)
    sw = np.sqrt(w)
    for _ in range(n_iter):
        xi, eta = tan_project(ra, dec, ra0, dec0)
        cx = np.linalg.lstsq(design * sw[:, None], xi * sw, rcond=None)[0]
        ce = np.linalg.lstsq(design * sw[:, None], eta * sw, rcond=None)[0]
        i0 = terms.index((0, 0))
        ra0, dec0 = tan_deproject(cx[i0], ce[i0], ra0, dec0)
    xi, eta = tan_project(ra, dec, ra0, dec0)
    cx = np.linalg.lstsq(design * sw[:, None], xi * sw, rcond=None)[0]
    ce = np.linalg.lstsq(design * sw[:, None], eta * sw, rcond=None)[0]
    i10, i01 = terms.index((1, 0)), terms.index((0, 1))
    cd = np.array([[cx[i10], cx[i01]], [ce[i10], ce[i01]]]) / norm
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    wcs.wcs.crval = [ra0 % 360.0, dec0]
    wcs.wcs.cd = cd
    wcs.wcs.radesys = "ICRS"
    high = [(k, pq) for k, pq in enumerate(terms) if sum(pq) >= 2]
    if not high:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.set()
        return wcs
    from astropy.wcs import Sip
    cdinv = np.linalg.inv(cd)
    a = np.zeros((sip_degree + 1, sip_degree + 1))
    b = np.zeros((sip_degree + 1, sip_degree + 1))
    for k, (p, q) in high:
        scale = norm ** (p + q)
        f, g = cdinv @ np.array([cx[k], ce[k]])
        a[p, q], b[p, q] = f / scale, g / scale
    # inverse SIP on a grid covering the fitted region
    gu, gv = np.meshgrid(np.linspace(u.min(), u.max(), 30), np.linspace(v.min(), v.max(), 30))
    gu, gv = gu.ravel(), gv.ravel()
    fu = gu + sum(a[p, q] * gu ** p * gv ** q for _, (p, q) in high)
    fv = gv + sum(b[p, q] * gu ** p * gv ** q for _, (p, q) in high)
    inv_deg = sip_degree + 1
    inv_terms = [(p, q) for p in range(inv_deg + 1) for q in range(inv_deg + 1 - p) if p + q >= 1]
    dm = np.stack([(fu / norm) ** p * (fv / norm) ** q for p, q in inv_terms], axis=1)
    cu = np.linalg.lstsq(dm, gu - fu, rcond=None)[0]
    cv = np.linalg.lstsq(dm, gv - fv, rcond=None)[0]
    ap = np.zeros((inv_deg + 1, inv_deg + 1))
    bp = np.zeros((inv_deg + 1, inv_deg + 1))
    for k, (p, q) in enumerate(inv_terms):
        ap[p, q], bp[p, q] = cu[k] / norm ** (p + q), cv[k] / norm ** (p + q)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


def _err2(err, idx, default):
    if err is None:
        return np.full(len(idx), default ** 2)
    e = np.asarray(err, float)[idx]
    return np.where(np.isfinite(e), e, default) ** 2


def _n_sip_terms(degree: int) -> int:
    """Number of SIP coefficients in A and B together for orders 2..degree."""
    return 2 * sum(p + 1 for p in range(2, degree + 1)) if degree >= 2 else 0

