"""Mask-plane helpers shared by the stages: set planes' bits where a condition holds, the border strips (EDGE).

In place on an int32 mask plane, without gather/scatter copies of full-size images.
"""

from __future__ import annotations

import numpy as np

from ..image import mask_bit

__all__ = ["set_mask_planes", "border_strips", "set_border_planes"]


def set_mask_planes(mask: np.ndarray, where: np.ndarray, *planes: str) -> None:
    """OR the planes' bits into ``mask`` where ``where`` is True, in place."""
    np.bitwise_or(mask, np.int32(mask_bit(*planes)), out=mask, where=where)


def border_strips(shape: tuple[int, int], width_px: int) -> list[tuple[slice, slice]]:
    """The four strips of pixels within ``width_px`` of the border (top, bottom, left, right; they overlap at the
    corners), as index tuples; none for ``width_px`` <= 0."""
    w = int(max(0, width_px))
    if not w:
        return []
    every = slice(None)
    return [(slice(None, w), every), (slice(-w, None), every), (every, slice(None, w)), (every, slice(-w, None))]


def set_border_planes(mask: np.ndarray, width_px: int, *planes: str) -> None:
    """OR the planes' bits into the pixels within ``width_px`` of the border of ``mask``, in place (EDGE: the
    pixels of :func:`twinkles.algorithms.detection.edge_mask`, strip by strip)."""
    bits = np.int32(mask_bit(*planes))
    for strip in border_strips(mask.shape, width_px):
        mask[strip] |= bits
