"""Compiled (numba) loops over pixels for the steps that numpy would do with many full-image temporaries.

Each kernel makes one pass over a 4k x 4k image (tens of milliseconds) instead of a dozen numpy operations that
each read and write 64 MB. They are compiled once and cached on disk (``cache=True``). Pure functions of arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["cr_candidate_tiles", "interpolate_from_neighbours", "dilate_square", "dilate_cross", "dilate_disc",
           "matched_filter_snr", "bin2x2", "bin2x2_any",
           "footprint_maxima", "usable_pixels"]


@njit(cache=True, nogil=True, error_model="numpy")
def cr_candidate_tiles(sub, bkg, var, bad, tile_px, prefilter_sigma, min_sharpness, reach):  # pragma: no cover
    """Tiles (``tile_px`` square, row-major) holding a cosmic-ray candidate pixel.

    A candidate is not ``bad`` and, on ``data = sub + bkg``, exceeds the mean of a pair of opposite neighbours
    (vertical or horizontal) by ``prefilter_sigma`` sqrt(var) and the sky (``sub``) by ``prefilter_sigma - 1``
    sqrt(var), and that excess is at least ``min_sharpness`` of its height above the sky (a star's core is
    smooth at the pixel scale: ~0.1-0.2 of its height for FWHM 3-5 pixels; a cosmic ray is ~0.5-1). The tiles
    within ``reach`` pixels of a candidate are marked too (a track crossing into the next tile).

    Each row's test is branch-free (so it vectorises: ~4x faster than testing pixel by pixel), then its few
    candidates mark their tiles.
    """
    ny, nx = sub.shape
    nty = (ny + tile_px - 1) // tile_px
    ntx = (nx + tile_px - 1) // tile_px
    out = np.zeros((nty, ntx), np.bool_)
    cand = np.zeros(nx, np.bool_)
    for y in range(1, ny - 1):
        for x in range(1, nx - 1):
            s = sub[y, x]
            v = var[y, x]
            noise = np.sqrt(v)  # NaN where v < 0: every comparison below is then False
            c = s + bkg[y, x]
            py = c - 0.5 * ((sub[y - 1, x] + bkg[y - 1, x]) + (sub[y + 1, x] + bkg[y + 1, x]))
            px = c - 0.5 * ((sub[y, x - 1] + bkg[y, x - 1]) + (sub[y, x + 1] + bkg[y, x + 1]))
            pair = max(py, px)
            cand[x] = ((s > 0.0) & (v > 0.0) & (s > (prefilter_sigma - 1.0) * noise)
                       & (pair > prefilter_sigma * noise) & (pair >= min_sharpness * s) & (not bad[y, x]))
        ty = y // tile_px
        for x in range(1, nx - 1):
            if cand[x]:
                out[ty, x // tile_px] = True
                if reach > 0:
                    ya, yb = max(0, y - reach) // tile_px, min(ny - 1, y + reach) // tile_px
                    xa, xb = max(0, x - reach) // tile_px, min(nx - 1, x + reach) // tile_px
                    out[ya, xa] = True
                    out[ya, xb] = True
                    out[yb, xa] = True
                    out[yb, xb] = True
    return out


@njit(cache=True, nogil=True)
def interpolate_from_neighbours(sub, bkg, exclude, ys, xs, box):  # pragma: no cover - jit
    """Values for the pixels (ys, xs): the mean of ``sub + bkg`` over the pixels not ``exclude``-d in a ``box``
    square around each (widened to 2 box + 1, then 4 box + 3, where it holds none), minus ``bkg`` at the pixel.
    Where even the widest box holds no usable pixel the pixel keeps its value."""
    ny, nx = sub.shape
    out = np.empty(len(ys), np.float32)
    for k in range(len(ys)):
        y, x = ys[k], xs[k]
        out[k] = sub[y, x]
        size = box
        for _ in range(3):
            h = size // 2
            acc = 0.0
            n = 0
            for yy in range(max(0, y - h), min(ny, y + h + 1)):
                for xx in range(max(0, x - h), min(nx, x + h + 1)):
                    if not exclude[yy, xx]:
                        acc += sub[yy, xx] + bkg[yy, xx]
                        n += 1
            if n > 0:
                out[k] = acc / n - bkg[y, x]
                break
            size = 2 * size + 1
    return out


@njit(cache=True, nogil=True)
def _dilate_rows(mask, r):  # pragma: no cover - jit
    ny, nx = mask.shape
    out = np.zeros((ny, nx), np.bool_)
    for y in range(ny):
        last = -(r + 1) * 4  # x of the last True seen, far away at the start
        for x in range(nx + r):
            if x < nx and mask[y, x]:
                last = x
            # pixel x - r is within r of a True pixel at <= x (to its right, up to r) or before (last)
            xo = x - r
            if xo >= 0 and x - last <= 2 * r:
                out[y, xo] = True
    return out


@njit(cache=True, nogil=True)
def _dilate_cols(mask, r):  # pragma: no cover - jit
    ny, nx = mask.shape
    out = np.zeros((ny, nx), np.bool_)
    last = np.full(nx, -(r + 1) * 4, np.int64)
    for y in range(ny + r):
        if y < ny:
            for x in range(nx):
                if mask[y, x]:
                    last[x] = y
        yo = y - r
        if yo >= 0:
            for x in range(nx):
                if y - last[x] <= 2 * r:
                    out[yo, x] = True
    return out


def dilate_square(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation by a (2 r + 1) square (separable: rows then columns), one pass each."""
    return _dilate_cols(_dilate_rows(np.ascontiguousarray(mask, np.bool_), int(radius_px)), int(radius_px))


@njit(cache=True, nogil=True)
def dilate_cross(mask):  # pragma: no cover - jit
    """Binary dilation by the 3 x 3 cross (the disc of radius 1)."""
    ny, nx = mask.shape
    out = mask.copy()
    for y in range(ny):
        for x in range(nx):
            if mask[y, x]:
                if y > 0:
                    out[y - 1, x] = True
                if y < ny - 1:
                    out[y + 1, x] = True
                if x > 0:
                    out[y, x - 1] = True
                if x < nx - 1:
                    out[y, x + 1] = True
    return out


@njit(cache=True, nogil=True)
def dilate_disc(mask, r):  # pragma: no cover - jit
    """Binary dilation by the disc x^2 + y^2 <= r^2 (cost: one pass plus the disc at each True pixel; for sparse
    masks)."""
    ny, nx = mask.shape
    out = mask.copy()
    for y in range(ny):
        for x in range(nx):
            if mask[y, x]:
                for dy in range(-r, r + 1):
                    yy = y + dy
                    if yy < 0 or yy >= ny:
                        continue
                    for dx in range(-r, r + 1):
                        xx = x + dx
                        if 0 <= xx < nx and dx * dx + dy * dy <= r * r:
                            out[yy, xx] = True
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _weights_row(image, variance, bad, y, h, wpad):  # pragma: no cover - jit
    """``wpad[h:h + nx]`` = row ``y`` of the weighted image ``I/V``, zero where unusable (branch-free, so the loop
    vectorises); the ``h`` cells at each end stay zero."""
    nx = image.shape[1]
    one = np.float32(1.0)
    for x in range(nx):
        v = variance[y, x]
        wi = image[y, x] * (one / v)
        ok = (v > 0) & (not bad[y, x]) & np.isfinite(wi)
        wpad[x + h] = wi if ok else np.float32(0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _filter_row(image, variance, bad, kernel, y, wpad, out):  # pragma: no cover - jit
    """``out`` = row ``y`` of the weighted image ``I/V`` (zero where unusable) convolved with ``kernel`` (float32).
    The weights sit in the zero-padded ``wpad`` (length nx + len(kernel) - 1), so every tap is one loop over the
    whole row with no bounds to test: SIMD, ~7x faster than clipping each tap's range."""
    nx = image.shape[1]
    h = len(kernel) // 2
    _weights_row(image, variance, bad, y, h, wpad)
    for x in range(nx):
        out[x] = np.float32(0.0)
    for k in range(2 * h + 1):
        c = kernel[k]
        for x in range(nx):
            out[x] += c * wpad[x + k]


@njit(cache=True, nogil=True, error_model="numpy")
def matched_filter_snr(image, variance, bad, kernel, den_scale):  # pragma: no cover - jit
    """``S/N = (K * (I/V)) / sqrt(den_scale / V)`` with K the separable kernel ``outer(kernel, kernel)`` (zero
    outside the image); pixels that are ``bad``, non-finite or without positive variance get zero weight (and
    S/N 0). Rows (weights made on the fly, kept in a ring of ``len(kernel)`` rows) then columns, in float32 (a
    sum of ~10-20 taps: ~1e-6 relative), each loop branch-free over a whole row so that it vectorises."""
    ny, nx = image.shape
    h = len(kernel) // 2
    m = 2 * h + 1
    kern = kernel.astype(np.float32)
    ring = np.empty((m, nx), np.float32)  # row-filtered rows y - h .. y + h, row r at r % m
    wpad = np.zeros(nx + 2 * h, np.float32)
    acc = np.empty(nx, np.float32)
    for r in range(min(h, ny)):
        _filter_row(image, variance, bad, kern, r, wpad, ring[r % m])
    snr = np.empty((ny, nx), np.float32)
    one = np.float32(1.0)
    ds = np.float32(den_scale)
    for y in range(ny):
        if y + h < ny:
            _filter_row(image, variance, bad, kern, y + h, wpad, ring[(y + h) % m])
        for x in range(nx):
            acc[x] = np.float32(0.0)
        for k in range(max(-h, -y), min(h, ny - 1 - y) + 1):
            c = kern[k + h]
            src = ring[(y + k) % m]
            for x in range(nx):
                acc[x] += c * src[x]
        for x in range(nx):
            v = variance[y, x]
            inv = one / v
            ok = (v > 0) & (not bad[y, x]) & np.isfinite(image[y, x] * inv)
            s = acc[x] / np.sqrt(inv * ds)
            snr[y, x] = s if ok else np.float32(0.0)
    return snr


@njit(cache=True, nogil=True)
def bin2x2(a):  # pragma: no cover - jit
    """Sums over 2 x 2 blocks (an odd last row or column is dropped), as float32."""
    ny, nx = a.shape[0] // 2, a.shape[1] // 2
    out = np.empty((ny, nx), np.float32)
    for y in range(ny):
        for x in range(nx):
            out[y, x] = (np.float64(a[2 * y, 2 * x]) + a[2 * y, 2 * x + 1]) + (np.float64(a[2 * y + 1, 2 * x])
                                                                             + a[2 * y + 1, 2 * x + 1])
    return out


@njit(cache=True, nogil=True)
def bin2x2_any(a):  # pragma: no cover - jit
    """True where any pixel of a 2 x 2 block is (an odd last row or column is dropped)."""
    ny, nx = a.shape[0] // 2, a.shape[1] // 2
    out = np.zeros((ny, nx), np.bool_)
    for y in range(ny):
        for x in range(nx):
            out[y, x] = a[2 * y, 2 * x] or a[2 * y, 2 * x + 1] or a[2 * y + 1, 2 * x] or a[2 * y + 1, 2 * x + 1]
    return out


@njit(cache=True, nogil=True)
def footprint_maxima(snr, labels):  # pragma: no cover - jit
    """(y, x) of the pixels with a label > 0 whose value is >= each of its 8 neighbours' (row-major order)."""
    ny, nx = snr.shape
    n = 0
    ys = np.empty(1024, np.int64)
    xs = np.empty(1024, np.int64)
    for y in range(ny):
        for x in range(nx):
            if labels[y, x] <= 0:
                continue
            v = snr[y, x]
            ok = True
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if (dy != 0 or dx != 0) and 0 <= xx < nx and not v >= snr[yy, xx]:
                        ok = False
            if ok:
                if n == len(ys):
                    ys = np.concatenate((ys, np.empty(n, np.int64)))
                    xs = np.concatenate((xs, np.empty(n, np.int64)))
                ys[n] = y
                xs[n] = x
                n += 1
    return ys[:n], xs[:n]


@njit(cache=True, nogil=True)
def usable_pixels(image, variance):  # pragma: no cover - jit
    """Bool map of pixels with a finite value and a finite, positive variance, and their number (one pass)."""
    ny, nx = image.shape
    out = np.empty((ny, nx), np.bool_)
    n = 0
    for y in range(ny):
        for x in range(nx):
            v = variance[y, x]
            ok = np.isfinite(image[y, x]) & np.isfinite(v) & (v > 0)  # branch-free: the loop vectorises
            out[y, x] = ok
            n += ok
    return out, n
