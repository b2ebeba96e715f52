"""The one bilinear interpolation against scipy's RegularGridInterpolator (clamped at the grid's ends)."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from twinkles.interpolation import bilinear, grid_weights


def test_bilinear_matches_scipy_and_clamps_beyond_the_grid():
    rng = np.random.default_rng(5)
    xs, ys = np.array([10.0, 200.0, 390.0, 500.0]), np.array([0.0, 250.0, 511.0])
    values = rng.normal(size=(len(ys), len(xs)))
    x, y = rng.uniform(-50, 560, 300), rng.uniform(-50, 560, 300)
    ref = RegularGridInterpolator((ys, xs), values)(np.column_stack([np.clip(y, ys[0], ys[-1]),
                                                                     np.clip(x, xs[0], xs[-1])]))
    np.testing.assert_allclose(bilinear(values, xs, ys, x, y), ref, rtol=0, atol=1e-12)
    # nodes holding images: each pixel interpolated alike; a scalar position gives one image
    images = rng.normal(size=(len(ys), len(xs), 5, 5))
    out = bilinear(images, xs, ys, x[:3], y[:3])
    assert out.shape == (3, 5, 5)
    np.testing.assert_allclose(out[:, 2, 3], bilinear(images[:, :, 2, 3], xs, ys, x[:3], y[:3]), atol=1e-12)
    assert bilinear(images, xs, ys, 100.0, 100.0).shape == (5, 5)


def test_a_single_node_axis_gives_the_value_there():
    i0, i1, t = grid_weights([3.0], np.array([0.0, 9.0]))
    assert list(i0) == [0, 0] and list(i1) == [0, 0] and list(t) == [0, 0]
    values = np.array([[1.0, 3.0]])  # one row of nodes: interpolation along x only
    np.testing.assert_allclose(bilinear(values, [0.0, 10.0], [5.0], [0.0, 5.0, 10.0], [0.0, 7.0, 99.0]),
                               [1.0, 2.0, 3.0])
