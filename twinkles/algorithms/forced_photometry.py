"""Forced PSF photometry with simultaneous neighbour fitting (for forced_phot_ccd).

At fixed positions (x_i, y_i) on one image with PSF stamps P_i (from :class:`~twinkles.stamps.PsfStamps`,
normalised to 1 over the model stamp), the fluxes F minimise ``sum_pixels good * (I - sum_i F_i P_i)^2`` -- the
equal-weight least squares of :func:`twinkles.measure.photometry.psf_flux` (unbiased at every flux, optimal when
the sky dominates), extended to all sources at once. Normal equations ``A F = b`` with

    A_ij = sum good P_i P_j,   b_i = sum good P_i I,

and, the pixel noise being independent with the variance plane V, the covariance of F is
``C = A^-1 B A^-1`` with ``B_ij = sum good P_i P_j V``. A is sparse: A_ij is non-zero only where the two stamps
overlap. Sources are linked where neglecting their coupling would bias either flux by more than
``coupling_tolerance`` of its error (estimated from the independent fits), or their PSFs overlap by more than
``min_overlap`` (normalised ``A_ij / sqrt(A_ii A_jj)``); each connected group of linked sources is solved exactly
(all stamp overlaps inside the group included): groups of up to ``max_dense`` sources as stacked dense solves
(one ``numpy.linalg.solve`` per group size), larger ones with a sparse LU (scipy.sparse.linalg.splu), whose errors
come from the dense block of each source and its direct neighbours.

A single isolated source gets exactly :func:`~twinkles.measure.photometry.psf_flux`'s flux and error. The pixel
sums are numba kernels over the image planes (no image cut-outs are copied); only the PSF stamps are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..stamps import PsfStamps

__all__ = ["ForcedFit", "PhaseTable", "forced_psf_fluxes", "normal_equations", "solve_groups"]


@dataclass
class ForcedFit:
    """Per source: ``flux``/``flux_err`` of the simultaneous fit and ``flux_independent``/``_err`` of the
    single-source fit (image units); ``flag`` (fit failed, no usable pixels, or more than ``max_masked_frac`` of
    the PSF weight masked), ``no_good_pixels``, ``edge`` (the fit stamp runs off the image), ``masked_frac``,
    ``group`` (group label) and ``group_size``."""

    flux: np.ndarray
    flux_err: np.ndarray
    flux_independent: np.ndarray
    flux_independent_err: np.ndarray
    flag: np.ndarray
    no_good_pixels: np.ndarray
    edge: np.ndarray
    masked_frac: np.ndarray
    group: np.ndarray
    group_size: np.ndarray
    n_pairs: int


@njit(cache=True, nogil=True)
def _diag_sums(image, variance, good, psf, xc, yc):  # pragma: no cover - jit
    """b_i, A_ii, sum P^2 (all), B_ii and the off-image flag (pixels not ``good`` or not finite left out)."""
    n, s, _ = psf.shape
    h = s // 2
    ny, nx = image.shape
    b = np.zeros(n)
    a = np.zeros(n)
    a_all = np.zeros(n)
    bv = np.zeros(n)
    edge = np.zeros(n, np.bool_)
    for k in range(n):
        x0 = xc[k] - h
        y0 = yc[k] - h
        inside = x0 >= 0 and y0 >= 0 and x0 + s <= nx and y0 + s <= ny
        sb = 0.0
        sa = 0.0
        sall = 0.0
        sv = 0.0
        for j in range(s):
            yy = y0 + j
            if not inside and (yy < 0 or yy >= ny):
                for i in range(s):
                    p = np.float64(psf[k, j, i])
                    sall += p * p
                continue
            for i in range(s):
                p = np.float64(psf[k, j, i])
                pp = p * p
                sall += pp
                xx = x0 + i
                if not inside and (xx < 0 or xx >= nx):
                    continue
                im = np.float64(image[yy, xx])
                var = np.float64(variance[yy, xx])
                if good[yy, xx] and np.isfinite(im) and np.isfinite(var):
                    sa += pp
                    sb += p * im
                    sv += pp * var
        b[k] = sb
        a[k] = sa
        a_all[k] = sall
        bv[k] = sv
        edge[k] = not inside
    return b, a, a_all, bv, edge


@njit(cache=True, nogil=True)
def _pair_sums(image, variance, good, psf, xc, yc, pi, pj):  # pragma: no cover - jit
    """A_ij and B_ij over the overlap of the stamps of each pair (i, j)."""
    npair = len(pi)
    s = psf.shape[1]
    h = s // 2
    ny, nx = image.shape
    a = np.zeros(npair)
    bv = np.zeros(npair)
    for q in range(npair):
        i0 = pi[q]
        j0 = pj[q]
        dx = xc[j0] - xc[i0]
        dy = yc[j0] - yc[i0]
        sa = 0.0
        sv = 0.0
        # stamp i pixel (u, v) is image pixel (xc_i - h + u, yc_i - h + v) = stamp j pixel (u - dx, v - dy)
        for v in range(max(0, dy, h - yc[i0]), min(s, s + dy, ny - yc[i0] + h)):
            yy = yc[i0] - h + v
            for u in range(max(0, dx, h - xc[i0]), min(s, s + dx, nx - xc[i0] + h)):
                xx = xc[i0] - h + u
                im = np.float64(image[yy, xx])
                var = np.float64(variance[yy, xx])
                if good[yy, xx] and np.isfinite(im) and np.isfinite(var):
                    pp = np.float64(psf[i0, v, u]) * np.float64(psf[j0, v - dy, u - dx])
                    sa += pp
                    sv += pp * var
        a[q] = sa
        bv[q] = sv
    return a, bv


class PhaseTable:
    """PSF stamps by table look-up: each grid kernel of a :class:`PsfStamps` shifted (Fourier shift, as
    ``PsfStamps.stamps``) to ``n_phase + 1`` sub-pixel offsets from -0.5 to 0.5 px in x and in y, once; a
    source's stamp is then the blend, bilinear in detector position (the four grid kernels, as ``PsfStamps``) and
    bilinear in sub-pixel offset (the four tabulated offsets around the true one), of 16 table stamps. The offset
    interpolation errs by ~(1 / n_phase)^2 / 8 of the PSF's curvature (~1e-3 of the peak for n_phase 8, a PSF
    sigma of 1.5 px); the tests check the stamps and fluxes against ``PsfStamps``. Many times faster than a
    Fourier shift per source."""

    def __init__(self, psf_stamps: PsfStamps, n_phase: int = 8):
        from ..stamps import fourier_shift
        self.psf_stamps = psf_stamps
        self.n_phase = int(n_phase)
        grid = psf_stamps.grid
        gy, gx, s, _ = grid.shape
        ph = np.linspace(-0.5, 0.5, self.n_phase + 1)
        m = self.n_phase + 1
        table = np.empty((m, m, gy, gx, s, s), np.float32)
        flat = grid.reshape(-1, s, s)
        for a, dy in enumerate(ph):
            k = np.repeat(flat, m, axis=0)
            dx = np.tile(ph, len(flat))
            sh = fourier_shift(k, dx, np.full(len(k), dy))
            sh /= sh.sum(axis=(1, 2), keepdims=True)
            table[a] = sh.reshape(gy, gx, m, s, s).transpose(2, 0, 1, 3, 4)
        self.table = table

    def stamps(self, x, y, size: int | None = None) -> np.ndarray:
        from ..interpolation import grid_weights
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        ps = self.psf_stamps
        size = ps.model_size if size is None else min(ps.model_size, size + (1 - size % 2))
        i0, i1, tx = grid_weights(ps.xs, x)
        j0, j1, ty = grid_weights(ps.ys, y)
        qx = (x - np.rint(x) + 0.5) * self.n_phase
        qy = (y - np.rint(y) + 0.5) * self.n_phase
        px = np.clip(np.floor(qx).astype(np.int64), 0, self.n_phase - 1)
        py = np.clip(np.floor(qy).astype(np.int64), 0, self.n_phase - 1)
        return _blend(self.table, py, px, qy - py, qx - px, np.asarray(j0, np.int64), np.asarray(j1, np.int64),
                      np.asarray(i0, np.int64), np.asarray(i1, np.int64), np.asarray(tx, float),
                      np.asarray(ty, float), size)


@njit(cache=True, nogil=True)
def _blend(table, py, px, fy, fx, j0, j1, i0, i1, tx, ty, size):  # pragma: no cover - jit
    """Each source's stamp: bilinear in detector position (grid nodes) and in sub-pixel shift (table phases)."""
    n = len(py)
    s = table.shape[-1]
    o = (s - size) // 2
    out = np.zeros((n, size, size), np.float32)
    acc = np.zeros((size, size))
    for k in range(n):
        acc[:] = 0.0
        for c in range(16):
            a, bb, e, g = c & 1, (c >> 1) & 1, (c >> 2) & 1, (c >> 3) & 1
            w = (fy[k] if a else 1 - fy[k]) * (fx[k] if bb else 1 - fx[k]) * \
                (ty[k] if e else 1 - ty[k]) * (tx[k] if g else 1 - tx[k])
            if w == 0.0:
                continue
            t = table[py[k] + a, px[k] + bb, j1[k] if e else j0[k], i1[k] if g else i0[k]]
            for v in range(size):
                for u in range(size):
                    acc[v, u] += w * t[o + v, o + u]
        for v in range(size):
            for u in range(size):
                out[k, v, u] = acc[v, u]
    return out


def normal_equations(image, variance, good, psf_stamps, x, y, size: int | None = None,
                     chunk: int = 8192):
    """The pieces of the normal equations: ``(b, a_diag, a_all, bv_diag, edge, pairs, a_pair, bv_pair)``.

    ``good``: bool image of usable pixels (None: all); pairs (P, 2) int64 of every two sources whose stamps
    overlap (i < j), with their A_ij and B_ij; ``a_all`` the sum of P^2 over the whole stamp (for the masked
    fraction)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    n = len(x)
    model_size = (psf_stamps.psf_stamps if isinstance(psf_stamps, PhaseTable) else psf_stamps).model_size
    size = model_size if size is None else size + (1 - size % 2)
    if isinstance(psf_stamps, PhaseTable):
        psf = psf_stamps.stamps(x, y, size)
    else:
        psf = np.empty((n, size, size), np.float32)
        for s in range(0, n, chunk):
            psf[s:s + chunk] = psf_stamps.stamps(x[s:s + chunk], y[s:s + chunk], size)
    xc = np.rint(x).astype(np.int64)
    yc = np.rint(y).astype(np.int64)
    image = _plane(image)
    variance = _plane(variance)
    good = np.ones(image.shape, np.bool_) if good is None else np.asarray(good, dtype=np.bool_)
    b, a, a_all, bv, edge = _diag_sums(image, variance, good, psf, xc, yc)
    if n > 1:
        tree = cKDTree(np.column_stack([xc, yc]).astype(float))
        pairs = tree.query_pairs(size - 0.5, p=np.inf, output_type="ndarray").astype(np.int64)
    else:
        pairs = np.empty((0, 2), np.int64)
    if len(pairs):
        pairs.sort(axis=1)
        a_pair, bv_pair = _pair_sums(image, variance, good, psf, xc, yc, pairs[:, 0].copy(), pairs[:, 1].copy())
    else:
        a_pair = bv_pair = np.empty(0)
    return b, a, a_all, bv, edge, pairs, a_pair, bv_pair


def _plane(a):
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def solve_groups(b, a_diag, bv_diag, pairs, a_pair, bv_pair, linked, max_dense: int = 256):
    """Solve ``A F = b`` over each connected group of ``linked`` pairs (bool per pair) among the sources with
    ``a_diag > 0`` (the others get NaN). Returns ``(flux, flux_err, ok, group, group_size)``; every pair whose
    two sources are in the same group enters A and B, linked or not."""
    n = len(b)
    fit = a_diag > 0
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    use = linked & fit[pairs[:, 0]] & fit[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    graph = sparse.coo_matrix((np.ones(int(use.sum())), (pairs[use, 0], pairs[use, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    size = np.bincount(group, minlength=group.max() + 1 if n else 0)
    group_size = size[group]
    # every pair inside one group (both fitted) takes part
    inside = np.zeros(0, bool) if not len(pairs) else \
        (group[pairs[:, 0]] == group[pairs[:, 1]]) & fit[pairs[:, 0]] & fit[pairs[:, 1]]
    pi, pj, ap, bp = pairs[inside, 0], pairs[inside, 1], a_pair[inside], bv_pair[inside]
    # local index of each source within its group
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(size)[:-1]]) if n else np.zeros(0, int)
    local = np.empty(n, np.int64)
    local[order] = np.arange(n) - starts[group[order]]
    # singletons: the independent fit
    one = fit & (group_size == 1)
    flux[one] = b[one] / a_diag[one]
    err[one] = np.sqrt(bv_diag[one]) / a_diag[one]
    ok[one] = True
    pair_group = group[pi]
    for k in np.unique(group_size[fit & (group_size > 1)]):
        members = fit & (group_size == k)
        if k <= max_dense:
            _solve_dense(k, members, group, local, b, a_diag, bv_diag, pi, pj, ap, bp, pair_group, flux, err, ok)
        else:
            for g in np.unique(group[members]):
                _solve_sparse(np.flatnonzero(group == g), local, b, a_diag, bv_diag, pi, pj, ap, bp,
                              pair_group == g, flux, err, ok)
    ok &= np.isfinite(flux) & np.isfinite(err)
    return flux, err, ok, group, group_size


def _solve_dense(k, members, group, local, b, a_diag, bv_diag, pi, pj, ap, bp, pair_group, flux, err, ok):
    gids = np.unique(group[members])
    slot = np.full(group.max() + 1, -1, np.int64)
    slot[gids] = np.arange(len(gids))
    m = len(gids)
    A = np.zeros((m, k, k))
    B = np.zeros((m, k, k))
    rhs = np.zeros((m, k))
    idx = np.flatnonzero(members)
    s, li = slot[group[idx]], local[idx]
    A[s, li, li] = a_diag[idx]
    B[s, li, li] = bv_diag[idx]
    rhs[s, li] = b[idx]
    sel = slot[pair_group] >= 0
    ps, qi, qj = slot[pair_group[sel]], local[pi[sel]], local[pj[sel]]
    A[ps, qi, qj] = A[ps, qj, qi] = ap[sel]
    B[ps, qi, qj] = B[ps, qj, qi] = bp[sel]
    try:
        Ainv = np.linalg.inv(A)
        good = np.ones(m, bool)
    except np.linalg.LinAlgError:  # some group is singular: invert one by one, those failing stay NaN
        Ainv = np.full_like(A, np.nan)
        good = np.zeros(m, bool)
        for g in range(m):
            try:
                Ainv[g] = np.linalg.inv(A[g])
                good[g] = True
            except np.linalg.LinAlgError:
                pass
    # a near-singular group (two sources at one position) gives meaningless fluxes: call it failed
    cond_ok = np.all(np.isfinite(Ainv), axis=(1, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        cond_ok &= np.linalg.cond(np.where(np.isfinite(A), A, 0)) < 1e8
    f = np.einsum("gij,gj->gi", Ainv, rhs)
    cov = np.einsum("gij,gjk,glk->gil", Ainv, B, Ainv)
    var = np.einsum("gii->gi", cov)
    flux[idx] = f[s, li]
    with np.errstate(invalid="ignore"):
        err[idx] = np.sqrt(var[s, li])
    ok[idx] = (good & cond_ok)[s]


def _solve_sparse(idx, local, b, a_diag, bv_diag, pi, pj, ap, bp, sel, flux, err, ok):
    from scipy.sparse.linalg import splu
    k = len(idx)
    li, qi, qj = local[idx], local[pi[sel]], local[pj[sel]]
    rows = np.concatenate([li, qi, qj])
    cols = np.concatenate([li, qj, qi])
    A = sparse.csc_matrix((np.concatenate([a_diag[idx], ap[sel], ap[sel]]), (rows, cols)), shape=(k, k))
    Bm = sparse.csr_matrix((np.concatenate([bv_diag[idx], bp[sel], bp[sel]]), (rows, cols)), shape=(k, k))
    rhs = np.zeros(k)
    rhs[li] = b[idx]
    try:
        f = splu(A).solve(rhs)
    except RuntimeError:  # singular
        return
    flux[idx] = f[li]
    # errors: the dense block of each source and its direct neighbours
    Acsr = A.tocsr()
    e = np.full(k, np.nan)
    for r in range(k):
        nb = Acsr.indices[Acsr.indptr[r]:Acsr.indptr[r + 1]]
        nb = np.union1d(nb, [r])
        sub = Acsr[nb][:, nb].toarray()
        try:
            inv = np.linalg.inv(sub)
        except np.linalg.LinAlgError:
            continue
        c = inv @ Bm[nb][:, nb].toarray() @ inv.T
        e[r] = np.sqrt(c[np.searchsorted(nb, r), np.searchsorted(nb, r)])
    err[idx] = e[li]
    ok[idx] = True


def forced_psf_fluxes(image, variance, good, psf_stamps, x, y, size: int | None = None,
                      coupling_tolerance: float = 0.05, min_overlap: float = 0.02, max_masked_frac: float = 0.2,
                      max_dense: int = 256) -> ForcedFit:
    """Forced PSF fluxes at (x, y) (0-based pixels of ``image``), neighbours fitted simultaneously.

    ``psf_stamps``: a :class:`PsfStamps` (a Fourier shift per source) or a :class:`PhaseTable` (table look-up,
    the fast path); ``good``: bool image of usable pixels (None: all); ``size``: fit stamp (default the PSF model
    stamp). See the
    module docstring for the linking of neighbours (``coupling_tolerance`` in units of the flux error,
    ``min_overlap`` normalised PSF overlap) and the solve.
    """
    n = len(np.atleast_1d(x))
    if n == 0:
        e = np.empty(0)
        return ForcedFit(e, e, e, e, np.empty(0, bool), np.empty(0, bool), np.empty(0, bool), e,
                         np.empty(0, np.int64), np.empty(0, np.int64), 0)
    # sources in 32-pixel tiles, row by row: neighbouring stamps share cache lines of the image planes
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    tile = (np.rint(y).astype(np.int64) // 32) * (np.asarray(image).shape[1] // 32 + 2) + \
        np.rint(x).astype(np.int64) // 32
    perm = np.argsort(tile, kind="stable")
    fit = _forced_sorted(image, variance, good, psf_stamps, x[perm], y[perm], size, coupling_tolerance,
                         min_overlap, max_masked_frac, max_dense)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(n)
    for name in ("flux", "flux_err", "flux_independent", "flux_independent_err", "flag", "no_good_pixels", "edge",
                 "masked_frac", "group", "group_size"):
        setattr(fit, name, getattr(fit, name)[inv])
    return fit


def _forced_sorted(image, variance, good, psf_stamps, x, y, size, coupling_tolerance, min_overlap,
                   max_masked_frac, max_dense) -> ForcedFit:
    b, a, a_all, bv, edge, pairs, a_pair, bv_pair = normal_equations(image, variance, good, psf_stamps, x, y,
                                                                      size)
    fit = a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f0 = np.where(fit, b / a, np.nan)
        e0 = np.where(fit, np.sqrt(bv) / a, np.nan)
        masked = np.where(a_all > 0, 1.0 - a / a_all, 1.0)
    linked = np.zeros(len(pairs), bool)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            # bias of each one's independent flux from the other's light, in units of its error
            bias_i = np.abs(a_pair * f0[j]) / a[i] / e0[i]
            bias_j = np.abs(a_pair * f0[i]) / a[j] / e0[j]
            overlap = a_pair / np.sqrt(a[i] * a[j])
        linked = (np.nan_to_num(bias_i) > coupling_tolerance) | (np.nan_to_num(bias_j) > coupling_tolerance) | \
            (np.nan_to_num(overlap) > min_overlap)
    flux, err, ok, group, group_size = solve_groups(b, a, bv, pairs, a_pair, bv_pair, linked, max_dense)
    flag = ~ok | ~fit | (masked > max_masked_frac)
    return ForcedFit(flux, err, f0, e0, flag, ~fit, edge, masked, group, group_size, int(linked.sum()))
