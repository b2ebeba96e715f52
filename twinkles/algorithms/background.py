"""Sky background: a mesh-based estimate with sources masked (sep, i.e. SExtractor's algorithm).

Each ``mesh_px`` x ``mesh_px`` cell gets a sigma-clipped mode estimate (2.5 median - 1.5 mean, or the median when
the distribution is skewed), the cell values are median-filtered over ``filter_size`` cells and interpolated with a
bicubic spline to every pixel (Bertin & Arnouts 1996). Masked pixels (detected sources grown, saturated, bad, no
data) do not enter the estimate; cells with too few unmasked pixels are filled from their neighbours by sep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

__all__ = ["BackgroundResult", "BackgroundModel", "NoUsablePixelsError", "estimate_background",
           "move_residual_background", "grow_mask", "fit_background_model", "background_image",
           "spline_weights"]


class NoUsablePixelsError(ValueError):
    """Every pixel is masked or non-finite: there is nothing to estimate a background from."""


@dataclass
class BackgroundResult:
    image: np.ndarray  # background at every pixel (same units as the input image), float32
    level: float  # global background level (mean over the mesh)
    global_rms: float  # global background RMS


def grow_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Dilate a boolean mask by ``radius_px`` pixels: a disc for small radii, a square (separable, fast on large
    images) beyond 2 pixels. Compiled single passes (:mod:`~twinkles.algorithms.pixel_kernels`)."""
    from .pixel_kernels import dilate_disc, dilate_square
    mask = np.asarray(mask, bool)
    if radius_px <= 0 or not mask.any():
        return mask
    r = int(radius_px)
    if r <= 2:
        return dilate_disc(np.ascontiguousarray(mask), r)
    return dilate_square(mask, r)


def mesh_size(shape: tuple[int, int], mesh_px: int) -> int:
    """The mesh size sep is given for an image of ``shape`` (at least 8 pixels, at most the image)."""
    return int(max(8, min(mesh_px, shape[0], shape[1])))


def _sep_background(image: np.ndarray, mask: np.ndarray | None, mesh_px: int, filter_size: int, fthresh: float):
    """sep's background model of ``image`` (float32, C-contiguous) with ``mask`` True and non-finite pixels
    excluded."""
    data = np.ascontiguousarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    bad = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if not finite.all():
        # sep's statistics skip masked pixels whatever their values; only non-finite values need replacing
        bad = ~finite if bad is None else bad | ~finite
        data = np.where(finite, data, np.float32(0.0))
    if bad is not None and bad.all():
        raise NoUsablePixelsError("background: every pixel is masked or non-finite; nothing to estimate from")
    mesh = mesh_size(data.shape, mesh_px)
    return sep.Background(data, mask=bad, bw=mesh, bh=mesh, fw=filter_size, fh=filter_size, fthresh=fthresh)


def estimate_background(image: np.ndarray, mask: np.ndarray | None = None, mesh_px: int = 128,
                        filter_size: int = 3, fthresh: float = 0.0) -> BackgroundResult:
    """Estimate the sky background of ``image`` with sources (``mask`` True) excluded.

    Parameters: ``mesh_px`` -- cell size (pixels; DM's binSize is 128); ``filter_size`` -- median filter over cells.
    Non-finite pixels are excluded automatically.
    """
    bkg = _sep_background(image, mask, mesh_px, filter_size, fthresh)
    return BackgroundResult(bkg.back(dtype=np.float32), float(bkg.globalback), float(bkg.globalrms))


def move_residual_background(subtracted: np.ndarray, total: np.ndarray, mask: np.ndarray | None = None,
                             mesh_px: int = 128, filter_size: int = 3,
                             fthresh: float = 0.0) -> tuple[float, float]:
    """Re-estimate the background left in a background-subtracted image (sources ``mask``-ed) and move it, in place,
    from ``subtracted`` to ``total`` (the background subtracted so far): ``subtracted -= residual``,
    ``total += residual``, without a full-size image of the residual. Both arrays float32, C-contiguous and of
    the same shape. Returns the residual's global level and RMS; raises NoUsablePixelsError if every pixel is
    masked (ValueError for arrays of the wrong type or shape).
    """
    for name, a in (("subtracted", subtracted), ("total", total)):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != subtracted.shape:
            raise ValueError(f"move_residual_background: {name} must be a C-contiguous float32 array of the "
                             f"image's shape, got {a.dtype} {a.shape}")
    bkg = _sep_background(subtracted, mask, mesh_px, filter_size, fthresh)
    bkg.subfrom(subtracted)
    np.negative(total, out=total)  # total + residual = -((-total) - residual): sep only subtracts
    bkg.subfrom(total)
    np.negative(total, out=total)
    return float(bkg.globalback), float(bkg.globalrms)


# ------------------------------------------------------------------------------------------ background model
@dataclass
class BackgroundModel:
    """A background as mesh node values and sep's interpolation (see the module docstring).

    ``mesh`` -- node values, shape ``(ceil(height / mesh_px), ceil(width / mesh_px))``, in the image's units
    (electrons); ``mesh_px`` -- the mesh size, pixels; ``shape`` -- ``(height, width)`` of the image it models.
    ``model.image()`` (or ``np.asarray(model)``) is the full-resolution background; ``model.at(x, y)`` its value
    at 0-based pixels.
    """

    mesh: np.ndarray
    mesh_px: int
    shape: tuple[int, int]

    def __post_init__(self):
        self.mesh = np.asarray(self.mesh, dtype=np.float64)
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.mesh_px = int(self.mesh_px)
        want = tuple((n - 1) // self.mesh_px + 1 for n in self.shape)
        if self.mesh.shape != want:
            raise ValueError(f"BackgroundModel: mesh of shape {self.mesh.shape} for an image of {self.shape} with "
                             f"{self.mesh_px}-pixel meshes; expected {want}")

    ndim = 2
    dtype = np.dtype(np.float32)

    def image(self, dtype=np.float32) -> np.ndarray:
        return background_image(self, dtype)

    def __array__(self, dtype=None, copy=None):
        return self.image(dtype or np.float32)

    def at(self, x, y) -> np.ndarray:
        """The background at 0-based integer pixels ``(x, y)`` (arrays of the same shape)."""
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        if x.shape != y.shape:
            raise ValueError(f"BackgroundModel.at: x {x.shape} and y {y.shape} differ in shape")
        h, w = self.shape
        if ((x < 0) | (x >= w) | (y < 0) | (y >= h)).any():
            raise ValueError(f"BackgroundModel.at: pixels outside the {w} x {h} image")
        wy = spline_weights(h, self.mesh_px, "y")[y.ravel()]
        wx = spline_weights(w, self.mesh_px, "x")[x.ravel()]
        return np.einsum("pi,ij,pj->p", wy, self.mesh, wx).reshape(x.shape)


def _second_derivative_operator(n: int) -> np.ndarray:
    """S (n x n) with ``S @ values`` = SExtractor's scaled second derivatives of the spline through ``values``
    (its tridiagonal recursion, with "natural" ends and the division by 6 at each back-substitution step)."""
    s = np.zeros((n, n))
    if n < 3:
        return s
    d = np.zeros(n)
    u = np.zeros((n, n))  # u[k] as a linear function of the values
    eye = np.eye(n)
    for k in range(1, n - 1):
        d[k] = -1.0 / (d[k - 1] + 4.0)
        u[k] = d[k] * (u[k - 1] - 6.0 * (eye[k + 1] + eye[k - 1] - 2.0 * eye[k]))
    for k in range(n - 2, 0, -1):
        s[k] = (d[k] * s[k + 1] + u[k]) / 6.0
    return s


_WEIGHTS: dict = {}


def spline_weights(n_pixels: int, mesh_px: int, axis: str) -> np.ndarray:
    """Weights W (n_pixels x n_nodes) of sep's interpolation along one axis (``"x"`` or ``"y"``): the background
    along that axis is ``W @ node_values``. Node ``i`` is at pixel ``(i + 1/2) mesh - 1/2`` along x and
    ``(i + 1/2) mesh`` along y (as in sep); pixel positions and steps are computed in float32, as sep does."""
    key = (int(n_pixels), int(mesh_px), axis)
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    n_nodes = (n_pixels - 1) // mesh_px + 1
    w = np.zeros((n_pixels, n_nodes))
    if n_nodes == 1:
        w[:, 0] = 1.0
    else:
        s = _second_derivative_operator(n_nodes)
        if axis == "y":
            pos = np.arange(n_pixels, dtype=np.float32) / np.float32(mesh_px) - np.float32(0.5)
            lo = np.trunc(pos).astype(np.int64)
            frac = (pos - lo).astype(np.float64)
            last = lo >= n_nodes - 1
            lo[last] = n_nodes - 2
            frac[last] += 1.0
        elif axis == "x":
            lo = np.empty(n_pixels, dtype=np.int64)
            frac = np.empty(n_pixels, dtype=np.float64)
            f32 = np.float32
            step = f32(1.0 / mesh_px)
            change = mesh_px // 2
            dx = f32((step - f32(1)) / f32(2))
            dx0 = f32(((mesh_px + 1) % 2) * step / f32(2))
            seg = i = node = 0
            for j in range(n_pixels):
                if i == change and 0 < node < n_nodes - 1:
                    seg += 1
                    dx = dx0
                lo[j], frac[j] = seg, dx
                if i == mesh_px:
                    node += 1
                    i = 0
                i += 1
                dx = f32(dx + step)
        else:
            raise ValueError(f"spline_weights: axis must be 'x' or 'y', not {axis!r}")
        c = 1.0 - frac
        rows = np.arange(n_pixels)
        w[rows, lo] += c
        w[rows, lo + 1] += frac
        w += (c * (c * c - 1.0))[:, None] * s[lo] + (frac * (frac * frac - 1.0))[:, None] * s[lo + 1]
    w.setflags(write=False)
    if len(_WEIGHTS) > 16:
        _WEIGHTS.clear()
    _WEIGHTS[key] = w
    return w


def background_image(model: BackgroundModel, dtype=np.float32) -> np.ndarray:
    """Rebuild the full-resolution background of a :class:`BackgroundModel`: ``W_y M W_x^T``."""
    h, w = model.shape
    wy = spline_weights(h, model.mesh_px, "y")
    wx = spline_weights(w, model.mesh_px, "x")
    # the node sums in float64, the full-size product in the output's precision (float32: ~6x faster, and the
    # rounding, ~1e-7 of the level, is far below any noise)
    work = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    out = (wy @ model.mesh).astype(work) @ np.ascontiguousarray(wx.T, dtype=work)
    return np.ascontiguousarray(out, dtype=dtype)


def fit_background_model(background: np.ndarray, mesh_px: int, tolerance: float | None = None,
                         sample_stride: int = 4) -> BackgroundModel:
    """The :class:`BackgroundModel` of a background image made by :func:`estimate_background` (plus
    :func:`move_residual_background`) with the same ``mesh_px``: its mesh by least squares on every
    ``sample_stride``-th row and column (the model is exact, so a subsample determines it).

    ``tolerance`` (image units): raise ValueError if the model differs from the image by more than this at any
    sampled pixel (the image was not made by sep's interpolation on this mesh)."""
    b = np.asarray(background)
    if b.ndim != 2:
        raise ValueError(f"fit_background_model: expected a 2-d image, got shape {b.shape}")
    mesh = mesh_size(b.shape, mesh_px)
    h, w = b.shape
    rows = np.unique(np.r_[np.arange(0, h, sample_stride), h - 1])
    cols = np.unique(np.r_[np.arange(0, w, sample_stride), w - 1])
    sub = b[np.ix_(rows, cols)].astype(np.float64)
    if not np.isfinite(sub).all():
        raise ValueError("fit_background_model: the background image has non-finite values")
    wy = spline_weights(h, mesh, "y")[rows]
    wx = spline_weights(w, mesh, "x")[cols]
    m = np.linalg.pinv(wy) @ sub @ np.linalg.pinv(wx).T  # least squares along y, then along x
    model = BackgroundModel(m, mesh, b.shape)
    if tolerance is not None:
        worst = float(np.abs(wy @ m @ wx.T - sub).max())
        if not worst <= tolerance:
            raise ValueError(f"fit_background_model: the {mesh}-pixel mesh model differs from the background image "
                             f"by up to {worst:.3g} (tolerance {tolerance:.3g}); was it made with mesh_px={mesh_px}?")
    return model
