"""Pixel flags of sources: which mask planes touch the source's centre or its PSF footprint (DM's PixelFlags)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ..image import mask_bit
from ..stamps import extract_stamps

__all__ = ["pixel_flags", "mask_test"]


def pixel_flags(mask: np.ndarray, x, y, center_radius_px: float = 1.5, any_radius_px: float = 3.0,
                edge_px: int = 0) -> dict:
    """Boolean flags per source from the mask plane.

    ``pixelFlags_edge``: the source is within ``edge_px`` of the border or touches EDGE/NO_DATA pixels within
    ``any_radius_px``; ``pixelFlags_saturated``/``_interpolated``/``_cr``: SAT/INTRP/CR pixels within
    ``any_radius_px`` of the centre; ``pixelFlags_saturatedCenter``/``_interpolatedCenter``/``_crCenter``: within
    ``center_radius_px``; ``pixelFlags_bad``: BAD pixels within ``any_radius_px``.
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    size = 2 * int(np.ceil(any_radius_px)) + 1
    stamps, inside = extract_stamps(np.asarray(mask), x, y, size, fill=mask_bit("NO_DATA"))
    h = size // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    r2 = (xx[None] + np.rint(x)[:, None, None] - x[:, None, None]) ** 2 + \
         (yy[None] + np.rint(y)[:, None, None] - y[:, None, None]) ** 2
    near = r2 <= any_radius_px ** 2
    centre = r2 <= center_radius_px ** 2

    def any_in(bits, region):
        return ((stamps & bits) != 0).__and__(region).any(axis=(1, 2))

    ny, nx = mask.shape
    out = {
        "pixelFlags_edge": any_in(mask_bit("EDGE", "NO_DATA"), near) | (x < edge_px) | (y < edge_px)
        | (x > nx - 1 - edge_px) | (y > ny - 1 - edge_px),
        "pixelFlags_saturated": any_in(mask_bit("SAT"), near),
        "pixelFlags_saturatedCenter": any_in(mask_bit("SAT"), centre),
        "pixelFlags_interpolated": any_in(mask_bit("INTRP"), near),
        "pixelFlags_interpolatedCenter": any_in(mask_bit("INTRP"), centre),
        "pixelFlags_cr": any_in(mask_bit("CR"), near),
        "pixelFlags_crCenter": any_in(mask_bit("CR"), centre),
        "pixelFlags_bad": any_in(mask_bit("BAD"), near),
    }
    return out


@njit(cache=True, nogil=True)
def mask_test(mask, bits, has):  # pragma: no cover - jit
    """``(mask & bits) != 0`` if ``has`` else ``(mask & bits) == 0``, in one pass (no integer temporary)."""
    ny, nx = mask.shape
    out = np.empty((ny, nx), np.bool_)
    for y in range(ny):
        for x in range(nx):
            out[y, x] = ((mask[y, x] & bits) != 0) == has
    return out
