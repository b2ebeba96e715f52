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
                     read_noise: float = 5.0, grow_px: int = 1) -> CosmicRayResult:
    """Find cosmic rays on a background-subtracted ``image`` (electrons) and interpolate over them.

    ``sigclip``: Laplacian/noise threshold (sigma); ``objlim``: minimum contrast between the Laplacian and the
    fine-structure image, which protects star cores (L.A.Cosmic's f_lim); ``grow_px``: dilate the CR mask.
    """
    data = np.ascontiguousarray(image + background, dtype=np.float32)
    inmask = np.zeros(data.shape, bool) if bad_mask is None else np.ascontiguousarray(bad_mask, dtype=bool)
    var = np.ascontiguousarray(np.where(np.isfinite(variance) & (variance > 0), variance,
                                        np.nanmedian(variance)), dtype=np.float32)
    satlevel = float(saturation) if np.isfinite(saturation) else float(np.nanmax(data) * 10 + 1e6)
    crmask, cleaned = astroscrappy.detect_cosmics(
        data, inmask=inmask, inbkg=np.ascontiguousarray(background, dtype=np.float32), invar=var,
        sigclip=sigclip, sigfrac=sigfrac, objlim=objlim, gain=1.0, readnoise=read_noise, satlevel=satlevel,
        niter=niter, sepmed=True, cleantype="meanmask", fsmode="median")
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
    (widening the box where none is available)."""
    from scipy import ndimage
    out = data.copy()
    good = (~exclude).astype(np.float64)
    remaining = target.copy()
    size = box
    while remaining.any() and size <= 65:
        s = ndimage.uniform_filter(np.where(exclude, 0.0, data).astype(np.float64), size, mode="nearest")
        w = ndimage.uniform_filter(good, size, mode="nearest")
        ok = remaining & (w > 1e-6)
        out[ok] = (s[ok] / w[ok]).astype(np.float32)
        remaining &= ~ok
        size = size * 2 + 1
    return out
