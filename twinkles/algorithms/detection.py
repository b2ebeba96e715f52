"""Detection: footprints and peaks above a threshold on the PSF-smoothed (matched-filter) image.

The image is correlated with a Gaussian approximation of the PSF and compared with the noise of the smoothed
image, ``S/N = (K * (I/V)) / sqrt(K^2 * (1/V))`` (the matched filter with the variance plane V; DM's
SourceDetectionTask smooths with the PSF the same way). Pixels above ``threshold`` sigma form footprints; their
peaks are the local maxima of the S/N image, culled by prominence; footprints with several peaks are blends.
Saturated pixels and bleed trails are masked from the pixel values and the saturation level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .background import grow_mask
from .masks import border_strips

__all__ = ["DetectionResult", "significance_image", "detect_sources", "binned_footprints", "saturation_mask",
           "edge_mask"]

#: structured-array columns of DetectionResult.sources
SOURCE_DTYPE = [("id", "i8"), ("x", "f8"), ("y", "f8"), ("x_peak", "i4"), ("y_peak", "i4"),
                ("significance", "f8"), ("npix", "i4"), ("parent_id", "i8"), ("n_child", "i4")]


@dataclass
class DetectionResult:
    sources: np.ndarray  # structured array, SOURCE_DTYPE (one row per peak / deblended child)
    footprints: np.ndarray  # int32 map: 0 = no source, k = footprint (parent) k
    detected: np.ndarray  # bool map: pixels in any footprint (the DETECTED mask plane)
    threshold: float


def significance_image(image: np.ndarray, variance: np.ndarray, psf_sigma_px: float,
                       bad: np.ndarray | None = None, truncate: float = 3.0,
                       smooth_variance: bool = False) -> np.ndarray:
    """Matched-filter S/N of a point source at every pixel, for a Gaussian PSF of width ``psf_sigma_px``.

    ``S/N = (K * (I/V)) / sqrt(K^2 * (1/V))`` with K the normalised Gaussian; K^2 is a Gaussian of width
    sigma/sqrt(2) times 1/(4 pi sigma^2), so both terms are separable Gaussian filters (truncated at
    ``truncate`` sigma). Without ``smooth_variance`` the denominator uses the pixel's own 1/V (exact where the
    variance varies slowly over the PSF, i.e. everywhere but on bright sources, which are far above threshold
    anyway; one filter pass fewer). Pixels that are ``bad``, non-finite or without positive variance get zero
    weight.
    """
    image = np.ascontiguousarray(image, np.float32)
    variance = np.ascontiguousarray(variance, np.float32)
    if not smooth_variance:
        # one compiled pass (the same formula, double-precision sums)
        from .pixel_kernels import matched_filter_snr
        radius = int(truncate * psf_sigma_px + 0.5)
        r = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (r / psf_sigma_px) ** 2)
        kernel /= kernel.sum()
        bad_map = np.zeros(image.shape, bool) if bad is None else np.ascontiguousarray(bad, bool)
        return matched_filter_snr(image, variance, bad_map, kernel, 1.0 / (4.0 * math.pi * psf_sigma_px ** 2))
    inv = np.zeros(image.shape, np.float32)
    np.divide(1.0, variance, out=inv, where=variance > 0)
    weighted = image * inv
    bad_any = ~np.isfinite(weighted)
    if bad is not None:
        bad_any |= bad
    if bad_any.any():
        inv[bad_any] = 0.0
        weighted[bad_any] = 0.0
    num = ndimage.gaussian_filter(weighted, psf_sigma_px, mode="constant", truncate=truncate)
    if smooth_variance:
        den = ndimage.gaussian_filter(inv, psf_sigma_px / math.sqrt(2.0), mode="constant", truncate=truncate)
    else:
        den = inv
    den = den * np.float32(1.0 / (4.0 * math.pi * psf_sigma_px ** 2))
    snr = np.zeros(image.shape, np.float32)
    np.divide(num, np.sqrt(den), out=snr, where=den > 0)
    return snr


def detect_sources(image: np.ndarray, variance: np.ndarray, psf_sigma_px: float, threshold: float = 5.0,
                   ignore: np.ndarray | None = None, min_pixels: int = 3, min_prominence: float = 3.0,
                   min_prominence_frac: float = 0.0, grow_sigma: float = 2.4,
                   saturated: np.ndarray | None = None, find_peaks: bool = True,
                   wing_contrast: bool = True, wing_contrast_sigma: float = 3.0) -> DetectionResult:
    """Detect sources on a background-subtracted ``image`` with per-pixel ``variance``.

    ``psf_sigma_px``: Gaussian sigma of the smoothing kernel (the PSF's, pixels); ``threshold``: in sigma of the
    smoothed image; ``ignore``: pixels not to use (no data, bad). Footprints are the connected (8-neighbour)
    regions above threshold with at least ``min_pixels`` pixels; their peaks are the local maxima of the S/N
    image. A secondary peak is kept (the footprint is then a blend) when it rises above the lowest point on the
    straight path to the nearest brighter kept peak by at least ``min_prominence`` sigma and
    ``min_prominence_frac`` of its height. The DETECTED plane is the footprints grown by ``grow_sigma`` PSF
    sigmas (DM's nSigmaToGrow). ``saturated``: bool map of saturated pixels and bleed trails; all peaks on one
    connected saturated region (grown by 2 pixels) become a single source placed at the region's centroid (a
    saturated star's plateau and trail have many flat local maxima). With ``find_peaks=False`` only the
    footprints are made (e.g. to mask sources for a background estimate). With ``wing_contrast``, a faint peak
    near a much brighter one must rise ``wing_contrast_sigma`` above the median S/N on a ring around it (radius
    6 sigma): noise bumps on the smooth wing of a bright star are dropped, most real sources there are kept.
    """
    image = np.asarray(image, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    bad = None if ignore is None else np.asarray(ignore, bool)
    snr = significance_image(image, variance, psf_sigma_px, bad)
    above = snr > threshold
    labels, nlab = ndimage.label(above, structure=np.ones((3, 3), int))
    labels = labels.astype(np.int32, copy=False)
    npix = None
    if nlab:
        # footprint pixels are a few per cent of the image: work on their flat indices
        flat = labels.ravel()
        on = np.flatnonzero(above.ravel())
        npix = np.bincount(flat[on], minlength=nlab + 1)
        small = npix < min_pixels
        small[0] = False
        if small.any():
            flat[on[small[flat[on]]]] = 0
            npix[small] = 0
    if not find_peaks:
        return DetectionResult(np.zeros(0, dtype=SOURCE_DTYPE), labels, labels > 0, float(threshold))
    # peaks: local maxima (3x3) of the S/N image on footprint pixels (one compiled pass)
    from .pixel_kernels import footprint_maxima
    yp, xp = footprint_maxima(snr, labels)
    val = snr[yp, xp]
    foot = labels[yp, xp]
    order = np.lexsort((-val, foot))
    yp, xp, val, foot = yp[order], xp[order], val[order], foot[order]
    keep = np.ones(len(val), bool)
    # prominence test inside footprints with several peaks
    if len(foot):
        starts = np.flatnonzero(np.r_[True, foot[1:] != foot[:-1]])
        ends = np.r_[starts[1:], len(foot)]
        t = np.linspace(0.0, 1.0, 24)
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            kept = [s]
            for j in range(s + 1, e):
                kx, ky = xp[kept], yp[kept]
                d2 = (kx - xp[j]) ** 2 + (ky - yp[j]) ** 2
                k = int(np.argmin(d2))
                lx = np.rint(xp[j] + t * (kx[k] - xp[j])).astype(int)
                ly = np.rint(yp[j] + t * (ky[k] - yp[j])).astype(int)
                dip = float(snr[ly, lx].min())
                prom = val[j] - dip
                if prom >= max(min_prominence, min_prominence_frac * val[j]):
                    kept.append(j)
                else:
                    keep[j] = False
    yp, xp, val, foot = yp[keep], xp[keep], val[keep], foot[keep]
    sat_x = sat_y = None
    if saturated is not None and np.any(saturated) and len(val):
        # saturated regions (grown by 2 pixels) labelled inside their bounding box only
        grown = grow_mask(np.asarray(saturated, bool), 2)
        gy, gx = np.nonzero(grown)
        y0, x0 = int(gy.min()), int(gx.min())
        box = (slice(y0, int(gy.max()) + 1), slice(x0, int(gx.max()) + 1))
        sat_lab, n_sat = ndimage.label(grown[box], structure=np.ones((3, 3), int))
        in_box = (yp >= y0) & (yp < box[0].stop) & (xp >= x0) & (xp < box[1].stop)
        on = np.zeros(len(yp), np.int64)
        on[in_box] = sat_lab[yp[in_box] - y0, xp[in_box] - x0]
        keep = np.ones(len(val), bool)
        sat_x = np.full(len(val), np.nan)
        sat_y = np.full(len(val), np.nan)
        if n_sat:
            sat_b = np.asarray(saturated, bool)[box]
            cx_, cy_ = np.zeros(n_sat), np.zeros(n_sat)
            for k, sl in enumerate(ndimage.find_objects(sat_lab)):
                if sl is None:
                    continue
                yy, xx = np.nonzero((sat_lab[sl] == k + 1) & sat_b[sl])
                if len(yy):
                    cy_[k], cx_[k] = yy.mean() + sl[0].start + y0, xx.mean() + sl[1].start + x0
            for k in np.unique(on[on > 0]):
                members = np.nonzero(on == k)[0]
                best = members[np.argmax(val[members])]
                keep[members] = False
                keep[best] = True
                sat_x[best], sat_y[best] = cx_[k - 1], cy_[k - 1]
        yp, xp, val, foot = yp[keep], xp[keep], val[keep], foot[keep]
        sat_x, sat_y = sat_x[keep], sat_y[keep]
    if wing_contrast and len(val) > 1:
        keep = _wing_bumps_kept(snr, xp, yp, val, psf_sigma_px, wing_contrast_sigma)
        yp, xp, val, foot = yp[keep], xp[keep], val[keep], foot[keep]
        if sat_x is not None:
            sat_x, sat_y = sat_x[keep], sat_y[keep]
    # sub-pixel peak position from a parabola through the 3x3 S/N values
    ny, nx = snr.shape
    xm, xpl = np.clip(xp - 1, 0, nx - 1), np.clip(xp + 1, 0, nx - 1)
    ym, ypl = np.clip(yp - 1, 0, ny - 1), np.clip(yp + 1, 0, ny - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cx = snr[yp, xm] - 2 * val + snr[yp, xpl]
        cy = snr[ym, xp] - 2 * val + snr[ypl, xp]
        dx = np.where(cx < 0, 0.5 * (snr[yp, xm] - snr[yp, xpl]) / cx, 0.0)
        dy = np.where(cy < 0, 0.5 * (snr[ym, xp] - snr[ypl, xp]) / cy, 0.0)
    dx, dy = np.clip(np.nan_to_num(dx), -0.5, 0.5), np.clip(np.nan_to_num(dy), -0.5, 0.5)
    n = len(val)
    sources = np.zeros(n, dtype=SOURCE_DTYPE)
    sources["id"] = np.arange(1, n + 1)
    sources["x"], sources["y"] = xp + dx, yp + dy
    if sat_x is not None:
        on_sat = np.isfinite(sat_x)
        sources["x"][on_sat], sources["y"][on_sat] = sat_x[on_sat], sat_y[on_sat]
    sources["x_peak"], sources["y_peak"] = xp, yp
    sources["significance"] = val
    if n:
        sources["npix"] = npix[foot]
        counts = np.bincount(foot, minlength=int(foot.max()) + 1)
        sources["parent_id"] = foot
        sources["n_child"] = np.where(counts[foot] > 1, counts[foot], 0)
    detected = labels > 0
    if grow_sigma > 0 and detected.any():
        detected = grow_mask(detected, int(math.ceil(grow_sigma * psf_sigma_px)))
    return DetectionResult(sources, labels, detected, float(threshold))


def _wing_bumps_kept(snr, xp, yp, val, sigma, threshold, bright_ratio: float = 5.0, max_dist_sigma: float = 25.0,
                     faint: float = 25.0):
    """Keep mask for peaks: a faint peak (S/N < ``faint``) within ``max_dist_sigma`` sigmas of a peak
    ``bright_ratio`` times brighter must exceed the median S/N of a ring of radius 6 sigma around it by
    ``threshold``."""
    from scipy.spatial import cKDTree
    keep = np.ones(len(val), bool)
    cand = np.nonzero(val < faint)[0]
    if not len(cand):
        return keep
    bright = np.nonzero(val >= bright_ratio * threshold)[0]
    if not len(bright):
        return keep
    tree = cKDTree(np.c_[xp[bright], yp[bright]])
    ny, nx = snr.shape
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rad = 6.0 * sigma
    for i in cand:
        near = tree.query_ball_point([xp[i], yp[i]], max_dist_sigma * sigma)
        if not any(val[bright[j]] >= bright_ratio * val[i] for j in near):
            continue
        rx = np.clip(np.rint(xp[i] + rad * np.cos(ang)).astype(int), 0, nx - 1)
        ry = np.clip(np.rint(yp[i] + rad * np.sin(ang)).astype(int), 0, ny - 1)
        if val[i] - float(np.median(snr[ry, rx])) < threshold:
            keep[i] = False
    return keep


def saturation_mask(image_with_sky: np.ndarray, saturation: float, grow_px: int = 1) -> np.ndarray:
    """Saturated pixels and bleed trails: pixels at or above ``saturation`` (electrons), grown by ``grow_px``."""
    if not np.isfinite(saturation):
        return np.zeros(image_with_sky.shape, bool)
    sat = np.asarray(image_with_sky) >= saturation * 0.999
    if sat.any() and grow_px > 0:
        sat = grow_mask(sat, grow_px)
    return sat


def edge_mask(shape: tuple[int, int], width_px: int) -> np.ndarray:
    """Pixels within ``width_px`` of the border, where the smoothing kernel runs off the image (EDGE); a stage
    sets the plane strip by strip with :func:`twinkles.algorithms.masks.set_border_planes`."""
    m = np.zeros(shape, bool)
    for strip in border_strips(shape, width_px):
        m[strip] = True
    return m


def binned_footprints(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, psf_sigma_px: float,
                      threshold: float) -> np.ndarray:
    """Pixels of the sources detected on the 2x2-binned image (sums of image and variance), at full resolution
    (4x cheaper than :func:`detect_sources`; for masking sources out of a background estimate). The last row
    and column of an odd-sized image are never in a footprint."""
    from .pixel_kernels import bin2x2, bin2x2_any
    ny, nx = image.shape
    ey, ex = ny - ny % 2, nx - nx % 2
    det = detect_sources(bin2x2(image), bin2x2(variance), psf_sigma_px / 2.0, threshold,
                         ignore=bin2x2_any(np.ascontiguousarray(bad)), grow_sigma=0.0, find_peaks=False)
    full = np.zeros((ny, nx), bool)
    full[:ey, :ex] = np.repeat(np.repeat(det.detected, 2, axis=0), 2, axis=1)
    return full
