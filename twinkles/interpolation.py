"""Bilinear interpolation on a grid of nodes: the one implementation behind the PSF models sampled on a grid
of detector positions (:class:`~twinkles.psf.ImageGridPSF`, :class:`~twinkles.stamps.PsfStamps`) and the PSF
moments measured on that grid (:func:`twinkles.measure.measure_sources`)."""

from __future__ import annotations

import numpy as np

__all__ = ["grid_weights", "bilinear"]


def grid_weights(nodes, v):
    """For each value of ``v``: the bracketing node indices ``i0, i1`` on the increasing ``nodes`` and the fraction
    ``t`` of the way from ``nodes[i0]`` to ``nodes[i1]``; values beyond the end nodes are clamped to them. A
    single node gives ``i0 = i1 = 0``, ``t = 0`` (the value there)."""
    nodes = np.asarray(nodes, float)
    v = np.asarray(v, float)
    if len(nodes) == 1:
        zero = np.zeros(v.shape, int)
        return zero, zero, np.zeros(v.shape)
    v = np.clip(v, nodes[0], nodes[-1])
    i = np.clip(np.searchsorted(nodes, v) - 1, 0, len(nodes) - 2)
    return i, i + 1, (v - nodes[i]) / (nodes[i + 1] - nodes[i])


def bilinear(values: np.ndarray, xs, ys, x, y) -> np.ndarray:
    """``values[j, i, ...]`` given at the nodes ``(xs[i], ys[j])`` (both increasing), interpolated bilinearly at
    the points ``(x, y)`` (clamped to the grid): shape ``x.shape + values.shape[2:]`` -- numbers, or whole images
    when each node holds one:

        (1 - tx)(1 - ty) v[j0, i0] + tx (1 - ty) v[j0, i1] + (1 - tx) ty v[j1, i0] + tx ty v[j1, i1]
    """
    values = np.asarray(values)
    i0, i1, tx = grid_weights(xs, x)
    j0, j1, ty = grid_weights(ys, y)
    trailing = (...,) + (None,) * (values.ndim - 2)  # weights broadcast over what each node holds
    return (((1 - tx) * (1 - ty))[trailing] * values[j0, i0] + (tx * (1 - ty))[trailing] * values[j0, i1]
            + ((1 - tx) * ty)[trailing] * values[j1, i0] + (tx * ty)[trailing] * values[j1, i1])
