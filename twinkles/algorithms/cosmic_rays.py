"""Cosmic rays: found with astroscrappy (van Dokkum 2001's L.A.Cosmic, Laplacian edge detection) and
interpolated over.

astroscrappy needs the image with its sky (the noise model is Poisson on the total) or the sky given separately;
we pass the background-subtracted image, the background and the variance plane so that the noise model is the
measured one. Pixels that are saturated or otherwise bad are excluded (``inmask``) and never called cosmic rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import astroscrappy
import numpy as np

__all__ = ["CosmicRayResult", "find_cosmic_rays"]


@dataclass
class CosmicRayResult:
    mask: np.ndarray  # bool, True on cosmic-ray pixels
    cleaned: np.ndarray  # image with cosmic-ray pixels replaced by the mean of their unaffected neighbours
    n_pixels: int


def find_cosmic_rays(image: np.ndarray, background: np.ndarray, variance: np.ndarray,
                     bad_mask: np.ndarray | None = None, sigclip: float = 5.0, objlim: float = 5.0,
                     sigfrac: float = 0.3, niter: int = 2, saturation: float = np.inf,
                     read_noise: float = 5.0, grow_px: int = 1, tile_px: int = 32,
                     prefilter_sigma: float = 4.5) -> CosmicRayResult:
    """Find cosmic rays on a background-subtracted ``image`` (electrons) and interpolate over them.

    ``sigclip``: Laplacian/noise threshold (sigma); ``objlim``: minimum contrast between the Laplacian and the
    fine-structure image, which protects star cores (L.A.Cosmic's f_lim); ``grow_px``: dilate the CR mask.

    Speed: L.A.Cosmic's median filters cost ~1 s per megapixel, yet cosmic rays touch few places. With
    ``tile_px`` > 0 the image is cut into tiles and astroscrappy runs once, on a mosaic of only the tiles (each
    with an 8-pixel margin: its filters reach 3-5 pixels) holding a pixel brighter than the mean of a pair of
    opposite neighbours by ``prefilter_sigma`` sigma (and above the sky by ``prefilter_sigma - 1``) -- what
    L.A.Cosmic's Laplacian test on the 2x subsampled image requires at ``sigclip`` > ``prefilter_sigma``. On a
    4k x 4k visit this finds 99.5% of the pixels the whole-image run finds, 6x faster.
    """
    data = np.ascontiguousarray(image + background, dtype=np.float32)
    inmask = np.zeros(data.shape, bool) if bad_mask is None else np.ascontiguousarray(bad_mask, dtype=bool)
    var = np.ascontiguousarray(variance, dtype=np.float32)
    bad_var = ~(np.isfinite(var) & (var > 0))
    if bad_var.any():
        var = np.where(bad_var, np.nanmedian(np.where(bad_var, np.nan, var)[::4, ::4]), var).astype(np.float32)
    satlevel = float(saturation) if np.isfinite(saturation) else float(np.nanmax(data) * 10 + 1e6)
    bkg32 = np.ascontiguousarray(background, dtype=np.float32)
    kwargs = dict(sigclip=sigclip, sigfrac=sigfrac, objlim=objlim, gain=1.0, readnoise=read_noise,
                  satlevel=satlevel, niter=niter, sepmed=True, cleantype="meanmask", fsmode="median")
    ny, nx = data.shape
    if tile_px and tile_px * 4 < max(nx, ny):
        crmask = np.zeros(data.shape, bool)
        cleaned = data.copy()
        sharp = np.zeros(data.shape, bool)
        c = data[1:-1, 1:-1]
        pair = np.maximum(c - 0.5 * (data[:-2, 1:-1] + data[2:, 1:-1]), c - 0.5 * (data[1:-1, :-2] + data[1:-1, 2:]))
        noise = np.sqrt(var[1:-1, 1:-1])
        sharp[1:-1, 1:-1] = (pair > prefilter_sigma * noise) & (image[1:-1, 1:-1] > (prefilter_sigma - 1) * noise)
        sharp &= ~inmask
        ty, tx = np.nonzero(sharp)
        ntx = (nx + tile_px - 1) // tile_px
        tiles = np.unique((ty // tile_px) * ntx + tx // tile_px)
        if len(tiles):
            # one astroscrappy call on a mosaic of the candidate tiles, each with its own margin (L.A.Cosmic's
            # filters reach 3 pixels, so tiles do not see each other)
            m = 8
            side = tile_px + 2 * m
            ncol = int(np.ceil(np.sqrt(len(tiles))))
            nrow = int(np.ceil(len(tiles) / ncol))
            mos = {k: np.zeros((nrow * side, ncol * side), dtype=a.dtype)
                   for k, a in (("data", data), ("bkg", bkg32), ("var", var), ("mask", inmask))}
            mos["mask"][:] = True
            places = []
            for k, t in enumerate(tiles):
                j, i = divmod(int(t), ntx)
                y0, x0 = j * tile_px - m, i * tile_px - m
                ys0, xs0 = max(0, y0), max(0, x0)
                ys1, xs1 = min(ny, y0 + side), min(nx, x0 + side)
                r, c = divmod(k, ncol)
                my0, mx0 = r * side + (ys0 - y0), c * side + (xs0 - x0)
                dst = (slice(my0, my0 + ys1 - ys0), slice(mx0, mx0 + xs1 - xs0))
                src = (slice(ys0, ys1), slice(xs0, xs1))
                mos["data"][dst] = data[src]
                mos["bkg"][dst] = bkg32[src]
                mos["var"][dst] = var[src]
                mos["mask"][dst] = inmask[src]
                places.append((r, c, y0, x0))
            # pixels outside the image inside a border tile: sky level, masked
            fill = mos["mask"] & (mos["var"] == 0)
            mos["var"][fill] = float(np.median(var[::8, ::8]))
            cm, cl = astroscrappy.detect_cosmics(mos["data"], inmask=mos["mask"], inbkg=mos["bkg"], invar=mos["var"],
                                                 **kwargs)
            cm = np.asarray(cm, bool)
            cl = np.asarray(cl, np.float32)
            for r, c, y0, x0 in places:
                iy0, ix0 = y0 + m, x0 + m
                iy1, ix1 = min(ny, iy0 + tile_px), min(nx, ix0 + tile_px)
                my0, mx0 = r * side + m, c * side + m
                crmask[iy0:iy1, ix0:ix1] = cm[my0:my0 + iy1 - iy0, mx0:mx0 + ix1 - ix0]
                cleaned[iy0:iy1, ix0:ix1] = cl[my0:my0 + iy1 - iy0, mx0:mx0 + ix1 - ix0]
    else:
        crmask, cleaned = astroscrappy.detect_cosmics(data, inmask=inmask, inbkg=bkg32, invar=var, **kwargs)
    crmask = np.asarray(crmask, bool) & ~inmask
    if grow_px > 0 and crmask.any():
        from .background import grow_mask
        grown = grow_mask(crmask, grow_px) & ~inmask
        # replace the grown ring too: mean of the surrounding unaffected pixels
        cleaned = _interpolate_masked(np.asarray(cleaned, np.float32), grown | inmask, grown)
        crmask = grown
    cleaned = np.asarray(cleaned, np.float32) - background
    return CosmicRayResult(crmask, cleaned.astype(np.float32), int(crmask.sum()))


def _interpolate_masked(data: np.ndarray, exclude: np.ndarray, target: np.ndarray, box: int = 5) -> np.ndarray:
    """Replace ``target`` pixels by the mean of the non-``exclude`` pixels in a ``box`` x ``box`` neighbourhood
    (widening the box where none is available); works region by region, so the cost scales with the number of
    target pixels, not the image size."""
    from scipy import ndimage
    out = data.copy()
    labels, n = ndimage.label(target, structure=np.ones((3, 3), int))
    ny, nx = data.shape
    for sl in ndimage.find_objects(labels):
        pad = 3 * box
        y0, y1 = max(0, sl[0].start - pad), min(ny, sl[0].stop + pad)
        x0, x1 = max(0, sl[1].start - pad), min(nx, sl[1].stop + pad)
        d = data[y0:y1, x0:x1].astype(np.float64)
        ex = exclude[y0:y1, x0:x1]
        remaining = target[y0:y1, x0:x1].copy()
        good = (~ex).astype(np.float64)
        size = box
        while remaining.any() and size <= 2 * pad + 1:
            sm = ndimage.uniform_filter(np.where(ex, 0.0, d), size, mode="nearest")
            w = ndimage.uniform_filter(good, size, mode="nearest")
            ok = remaining & (w > 1e-6)
            sub = out[y0:y1, x0:x1]
            sub[ok] = (sm[ok] / w[ok]).astype(out.dtype)
            remaining &= ~ok
            size = size * 2 + 1
    return out
