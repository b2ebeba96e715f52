"""Coaddition of warps with artifact rejection by comparing PSF-matched warps (DM's CompareWarp).

The pieces of DM's ``AssembleCoaddTask`` / ``CompareWarpAssembleCoaddTask`` (drp_tasks ``assemble_coadd``; the
new pipeline's ``assembleDeepCoadd``), written for warps read one at a time into accumulators. With warps
``I_i`` (nJy), variances ``V_i`` and a weight per warp ``w_i = 1 / <V_i>`` (mean over its usable pixels):

1. **static-sky model** (:func:`static_sky_model`, two streaming passes over the PSF-matched warps): a
   weighted mean with the highest and the lowest value of each pixel left out (pass 1: running sums plus the
   per-pixel extremes), then the weighted mean of the values within ``clip_sigma`` of it, in units of each
   warp's own noise (pass 2) -- a clipped mean needing one warp in memory, not all of them;
2. **artifact candidates** (:func:`outlier_footprints`): each PSF-matched warp minus the model, in units of its
   (empirically rescaled) noise, thresholded at ``threshold`` per pixel in both signs (DM: 5, unsmoothed), the
   footprints of at least ``min_pixels`` pixels grown by ``grow_px``; candidates mostly on bad pixels dropped
   (DM's prefilterArtifacts);
3. **epoch counts**: ``epoch_count`` = in how many warps each pixel is in a candidate, ``n_epochs`` = how many
   warps cover it;
4. **filter** (:func:`filter_artifacts`): a candidate is an artifact where more than ``spatial_threshold`` of its
   pixels deviate in at least one but at most ``N_max = int(min(0.4 N, 2 + 0.03 N))`` epochs (N: mean
   ``n_epochs`` over the candidate; DM's maxFractionEpochsLow, maxNumEpochs, maxFractionEpochsHigh), unless it
   lies wholly inside one source footprint detected on the model (DM's doPreserveContainedBySource: variable
   stars, supernovae on their hosts and imperfectly matched bright stars are real sky) that is bright enough to
   explain it (the model's flux over the candidate at least ``min_model_ratio`` of the candidate's residual
   flux; our addition, so that a transient on the faint wing of a source is still clipped);
5. **coadd** (:class:`CoaddAccumulator`): ``C = sum_i w_i I_i / sum_i w_i`` over the warps whose pixel is usable
   and not an artifact, ``Var(C) = sum_i w_i^2 V_i / (sum_i w_i)^2``, ``nImage`` = inputs used per pixel.

Memory does not grow with the number of warps: one warp (12 bytes per pixel) plus ~25 bytes per pixel of
accumulators and the per-warp temporaries; measured peak ~110 bytes per pixel of RSS over the start of a run for
8 and for 16 warps of 1600 x 1600 (so ~1.9 GB for a 4200 x 4200 patch, at any number of visits); the artifact
candidates are kept as pixel index lists.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..image import Exposure, mask_bit

__all__ = ["warp_weight", "usable", "max_outlier_epochs", "static_sky_model", "StaticSkyModel",
           "outlier_footprints", "model_source_labels", "filter_artifacts", "find_artifacts", "ArtifactResult",
           "CoaddAccumulator", "grow_streak", "coverage_polygon", "coverage_edge", "row_spans", "resampling_noise_factor", "points_in_polygon", "DEFAULT_BAD_PLANES"]

#: warp pixels with these planes are left out of the coadd (DM badMaskPlanes, plus SAT and CR)
DEFAULT_BAD_PLANES = ("NO_DATA", "BAD", "SAT", "CR")


def _load(item) -> Exposure | None:
    return item() if callable(item) else item


def usable(exposure: Exposure, bad_bits: int) -> np.ndarray:
    """Pixels of a warp that may enter a mean: finite, positive variance, none of ``bad_bits``."""
    return ((exposure.mask & bad_bits) == 0) & np.isfinite(exposure.image) & (exposure.variance > 0) \
        & np.isfinite(exposure.variance)


def warp_weight(variance: np.ndarray, good: np.ndarray) -> float:
    """The weight of a warp in the coadd: 1 / mean variance (nJy^-2) of its usable pixels (0 if it has none)."""
    if not good.any():
        return 0.0
    mean_var = float(np.mean(variance[good], dtype=np.float64))
    return 1.0 / mean_var if mean_var > 0 else 0.0


def max_outlier_epochs(n_epochs, max_fraction_low: float = 0.4, max_num: int = 2,
                       max_fraction_high: float = 0.03):
    """DM's effective maxNumEpochs: ``int(min(0.4 N, 2 + 0.03 N))`` for N covering epochs."""
    n = np.asarray(n_epochs, dtype=float)
    return np.floor(np.minimum(max_fraction_low * n, max_num + max_fraction_high * n)).astype(int)


# ----------------------------------------------------------------------------------------- static-sky model
@dataclass
class StaticSkyModel:
    """The clipped mean of the PSF-matched warps: ``image`` and ``variance`` (nJy, nJy^2), ``n`` (uint16: warps
    used per pixel); ``valid`` where any warp covers; ``weights``: the weight of each warp (0 for missing)."""

    image: np.ndarray
    variance: np.ndarray
    n: np.ndarray
    weights: list

    @property
    def valid(self) -> np.ndarray:
        return self.n > 0


def static_sky_model(warps: Sequence, bad_bits: int | None = None, clip_sigma: float = 3.0) -> StaticSkyModel:
    """The static-sky model from PSF-matched warps (Exposures or zero-argument loaders; None for missing),
    read twice, one at a time. See the module docstring, step 1."""
    if bad_bits is None:
        bad_bits = mask_bit("NO_DATA")
    shape = None
    weights: list[float] = []
    # pass 1: weighted sums and the extremes of each pixel (with the index of the warp they came from)
    for i, item in enumerate(warps):
        exp = _load(item)
        if exp is None:
            weights.append(0.0)
            continue
        if shape is None:
            shape = exp.shape
            s_w = np.zeros(shape, np.float32)
            s_wx = np.zeros(shape, np.float32)
            n = np.zeros(shape, np.uint16)
            vmax = np.full(shape, -np.inf, np.float32)
            vmin = np.full(shape, np.inf, np.float32)
            imax = np.zeros(shape, np.uint16)
            imin = np.zeros(shape, np.uint16)
        elif exp.shape != shape:
            raise ValueError(f"PSF-matched warp {i} has shape {exp.shape}, the others {shape}: warps of one patch "
                             "share the patch grid")
        good = usable(exp, bad_bits)
        w = warp_weight(exp.variance, good)
        weights.append(w)
        if w == 0:
            continue
        x = np.where(good, exp.image, np.float32(0))
        np.add(s_w, np.float32(w), out=s_w, where=good)
        s_wx += np.float32(w) * x
        n += good
        hi = good & (x > vmax)
        vmax[hi], imax[hi] = x[hi], i
        lo = good & (x < vmin)
        vmin[lo], imin[lo] = x[lo], i
        del exp, x, good
    if shape is None:
        raise ValueError("static_sky_model: no PSF-matched warp to build a model from")
    wts = np.asarray(weights, np.float32)
    trim = n >= 3
    with np.errstate(invalid="ignore", divide="ignore"):
        # the trimmed sums, in place (float32: a 4k patch's temporaries stay at 4 bytes per pixel)
        w_hi = wts[imax]
        vmax *= w_hi
        np.subtract(s_wx, vmax, out=s_wx, where=trim)
        np.subtract(s_w, w_hi, out=s_w, where=trim)
        del vmax, w_hi
        w_lo = wts[imin]
        vmin *= w_lo
        np.subtract(s_wx, vmin, out=s_wx, where=trim)
        np.subtract(s_w, w_lo, out=s_w, where=trim)
        del vmin, w_lo, imax, imin
        center = np.zeros(shape, np.float32)
        np.divide(s_wx, s_w, out=center, where=s_w > 0)
    n_kept = np.where(trim, n.astype(np.float32) - 2, n.astype(np.float32))
    inflate = np.sqrt(1.0 + 1.0 / np.maximum(n_kept, 1.0)).astype(np.float32)
    del s_wx, n_kept, trim
    # pass 2: the weighted mean of the values within clip_sigma of the trimmed mean (each warp's own noise)
    s_w[:] = 0
    s_wx = np.zeros(shape, np.float32)
    s_w2v = np.zeros(shape, np.float32)
    n_used = np.zeros(shape, np.uint16)
    for i, item in enumerate(warps):
        if weights[i] == 0:
            continue
        exp = _load(item)
        keep = usable(exp, bad_bits)
        with np.errstate(invalid="ignore"):
            dev = np.abs(exp.image - center)
            dev /= np.sqrt(exp.variance)
            dev /= inflate
            keep &= dev <= clip_sigma
        del dev
        w = np.float32(weights[i])
        np.add(s_w, w, out=s_w, where=keep)
        np.add(s_wx, w * exp.image, out=s_wx, where=keep)
        np.add(s_w2v, (w * w) * exp.variance, out=s_w2v, where=keep)
        n_used += keep
        del exp, keep
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(s_w > 0, s_wx / s_w, center).astype(np.float32)
        variance = np.where(s_w > 0, s_w2v / (s_w * s_w), np.inf).astype(np.float32)
    image[n == 0] = 0.0
    return StaticSkyModel(image, variance, np.maximum(n_used, np.minimum(n, 1)).astype(np.uint16), weights)


# ------------------------------------------------------------------------------------- artifact candidates
def _robust_sigma(values: np.ndarray) -> float:
    if values.size < 50:
        return 1.0
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def outlier_footprints(diff: np.ndarray, variance: np.ndarray, valid: np.ndarray, threshold: float = 5.0,
                       min_pixels: int = 4, grow_px: int = 1, rescale_noise: bool = True) -> list[np.ndarray]:
    """Footprints (flat pixel-index arrays, int64) where ``diff / sqrt(variance)`` is beyond ``threshold`` in
    either sign on ``valid`` pixels: 8-connected groups of at least ``min_pixels`` pixels, each grown by a disc
    of ``grow_px`` (grown footprints that touch are merged, as DM merges positive and negative ones).

    ``rescale_noise``: divide by the robust (MAD) width of the chi image first, so that a mis-estimated variance
    does not turn noise into candidates (DM: threshold type pixel_stdev, and scaleWarpVariance).
    """
    from .pixel_kernels import dilate_disc
    chi = np.zeros(diff.shape, np.float32)
    ok = valid & np.isfinite(diff) & (variance > 0) & np.isfinite(variance)
    np.divide(diff, np.sqrt(variance), out=chi, where=ok)
    if rescale_noise:
        sample = chi[ok][:: max(1, int(ok.sum()) // 200000)]
        s = _robust_sigma(sample)
        if s > 0:
            chi /= s
    hot = ok & (np.abs(chi) > threshold)
    if not hot.any():
        return []
    structure = np.ones((3, 3), bool)
    lab, nlab = ndimage.label(hot, structure)
    sizes = np.bincount(lab.ravel(), minlength=nlab + 1)
    small = sizes < min_pixels
    small[0] = True
    hot = ~small[lab]
    if not hot.any():
        return []
    if grow_px > 0:
        hot = dilate_disc(np.ascontiguousarray(hot), int(grow_px)) & ok
    lab, nlab = ndimage.label(hot, structure)
    return _label_indices(lab, nlab)


def _label_indices(lab: np.ndarray, nlab: int) -> list[np.ndarray]:
    flat = lab.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return []
    order = np.argsort(flat[idx], kind="stable")
    idx = idx[order]
    counts = np.bincount(flat[idx], minlength=nlab + 1)[1:]
    return [a for a in np.split(idx, np.cumsum(counts)[:-1]) if a.size]


def model_source_labels(model: StaticSkyModel, psf_sigma_px: float, threshold: float = 5.0,
                        grow_sigma: float = 2.4) -> np.ndarray:
    """Source footprints on the static-sky model (int32 labels, 0 = none): the PSF-smoothed S/N (in units of
    its robust width) above ``threshold``, grown by ``grow_sigma`` PSF sigmas (DM's detectTemplate, nSigmaToGrow 2.4)."""
    from .background import grow_mask
    from .detection import significance_image
    var = np.where(model.valid & np.isfinite(model.variance), model.variance, np.inf).astype(np.float32)
    snr = significance_image(model.image, var, psf_sigma_px, bad=~model.valid)
    # the model's noise is correlated (PSF-matched, and resampled): scale the S/N by its measured width, as DM's
    # detection thresholds the smoothed image in units of its own standard deviation
    sample = snr[model.valid][:: max(1, int(model.valid.sum()) // 200000)]
    s = _robust_sigma(sample)
    if s > 0:
        snr = snr / s
    det = snr > threshold
    det = grow_mask(det, int(round(grow_sigma * psf_sigma_px)))
    lab, _ = ndimage.label(det, np.ones((3, 3), bool))
    return lab.astype(np.int32)


def filter_artifacts(candidates: list[np.ndarray], epoch_count: np.ndarray, n_epochs: np.ndarray,
                     source_labels: np.ndarray | None = None, spatial_threshold: float = 0.5,
                     max_fraction_low: float = 0.4, max_num: int = 2, max_fraction_high: float = 0.03,
                     residual_flux=None, model_image: np.ndarray | None = None, min_model_ratio: float = 0.5,
                     split_shape: tuple | None = None, split_min_pixels: int = 16) -> list[np.ndarray]:
    """The candidates of one warp that are artifacts (see the module docstring, step 4).

    With ``residual_flux`` (per candidate, the sum of |warp - model| over it) and ``model_image``, a candidate
    inside a model source is kept only where that source is bright compared with the candidate: the model's
    flux over the candidate at least ``min_model_ratio`` times the residual flux (a variable star, a bright
    star's PSF-matching residual), so that a transient or a cosmic ray on the faint wing of a source is still
    clipped (in a crowded field the grown model footprints cover most of the sky).

    ``split_shape`` (the image shape): a candidate that fails the temporal test as a whole is split into the
    connected parts of its transient pixels (at least ``split_min_pixels``), each judged alone, so that a
    transient whose grown footprint merged with a persistent residual (a bright star's) is still clipped."""
    out = []
    ec = epoch_count.ravel()
    ne = n_epochs.ravel()
    lab = None if source_labels is None else source_labels.ravel()
    model = None if model_image is None else model_image.ravel()

    def preserved(idx, flux):
        if lab is None:
            return False
        owners = lab[idx]
        if not (owners[0] > 0 and np.all(owners == owners[0])):
            return False
        if flux is None or model is None:
            return True  # wholly inside one source of the model: real sky
        return float(np.sum(model[idx], dtype=np.float64)) >= min_model_ratio * flux  # ... bright enough

    for k, idx in enumerate(candidates):
        outlier_n = ec[idx]
        n_max = int(max_outlier_epochs(ne[idx].mean(), max_fraction_low, max_num, max_fraction_high))
        transient = (outlier_n > 0) & (outlier_n <= n_max)
        flux = None if residual_flux is None else float(residual_flux[k])
        if np.count_nonzero(transient) / idx.size > spatial_threshold:
            if not preserved(idx, flux):
                out.append(idx)
            continue
        # mostly persistent (e.g. a transient whose grown footprint touched a bright star's residual): its
        # transient parts, each judged alone
        if split_shape is None or np.count_nonzero(transient) < 4:
            continue
        sub = np.zeros(split_shape, bool).ravel()
        sub[idx[transient]] = True
        sl, nsl = ndimage.label(sub.reshape(split_shape), np.ones((3, 3), bool))
        for part in _label_indices(sl, nsl):
            if part.size < split_min_pixels:
                continue
            pflux = None if flux is None else flux * part.size / idx.size
            if not preserved(part, pflux):
                out.append(part)
    return out


def grow_streak(idx: np.ndarray, shape, grow_px: int, min_length_px: float = 30.0, min_elongation: float = 6.0):
    """An artifact's pixels grown by ``grow_px`` when it is a streak (a satellite trail: longer than
    ``min_length_px`` and ``min_elongation`` times longer than wide, from its pixels' second moments), so that its
    faint wings, below the detection threshold pixel by pixel but coherent along the trail, are clipped too (DM's
    maskStreaks grows streaks by growStreakFp = 5 PSF radii); other artifacts are returned as they are."""
    from .pixel_kernels import dilate_disc
    y, x = np.unravel_index(idx, shape)
    if idx.size < 20:
        return idx
    c = np.cov(np.vstack([x, y]).astype(float))
    lo, hi = np.sqrt(np.clip(np.linalg.eigvalsh(c), 1e-6, None))
    if hi * math.sqrt(12) < min_length_px or hi / lo < min_elongation:
        return idx
    y0, y1 = max(0, y.min() - grow_px), min(shape[0], y.max() + grow_px + 1)
    x0, x1 = max(0, x.min() - grow_px), min(shape[1], x.max() + grow_px + 1)
    box = np.zeros((y1 - y0, x1 - x0), bool)
    box[y - y0, x - x0] = True
    grown = dilate_disc(box, int(grow_px))
    gy, gx = np.nonzero(grown)
    return np.ravel_multi_index((gy + y0, gx + x0), shape)


@dataclass
class ArtifactResult:
    """Per warp (in input order) the flat pixel indices of its artifacts (empty array: none; None: the warp has
    no PSF-matched warp, so none of its pixels could be checked); plus the maps used to decide."""

    artifacts: list
    epoch_count: np.ndarray
    n_epochs: np.ndarray
    n_candidates: list = field(default_factory=list)
    #: per warp, the PSF-matched warp's coverage as row spans (first, last column with data; -1: none), or None
    checkable: list = field(default_factory=list)

    def n_pixels(self, i: int) -> int:
        a = self.artifacts[i]
        return 0 if a is None else int(a.size)

    def checkable_mask(self, i: int, shape) -> np.ndarray:
        """Pixels of warp i that its PSF-matched warp covers, so that artifacts there could be found (DM masks
        the direct warp's pixels outside: PSF matching moves the edge inwards)."""
        first, last = self.checkable[i]
        cols = np.arange(shape[1])[None, :]
        return (cols >= first[:, None]) & (cols <= last[:, None]) & (first[:, None] >= 0)


def row_spans(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) column of each row's valid pixels (int32; -1 for rows with none)."""
    anyv = valid.any(axis=1)
    first = np.where(anyv, valid.argmax(axis=1), -1).astype(np.int32)
    last = np.where(anyv, valid.shape[1] - 1 - valid[:, ::-1].argmax(axis=1), -1).astype(np.int32)
    return first, last


def find_artifacts(warps: Sequence, model: StaticSkyModel, psf_sigma_px: float, threshold: float = 5.0,
                   min_pixels: int = 4, grow_px: int = 1, prefilter_bits: int | None = None,
                   prefilter_ratio: float = 0.05, bad_bits: int | None = None, preserve_sources: bool = True,
                   source_threshold: float = 5.0, spatial_threshold: float = 0.5, max_fraction_low: float = 0.4,
                   max_num: int = 2, max_fraction_high: float = 0.03, min_model_ratio: float = 0.5,
                   streak_grow_px: int = 0) -> ArtifactResult:
    """Steps 2-4 of the module docstring: one more pass over the PSF-matched warps (loaders; None: missing)."""
    if prefilter_bits is None:
        prefilter_bits = mask_bit("NO_DATA", "BAD", "SAT", "SUSPECT")
    if bad_bits is None:
        bad_bits = mask_bit("NO_DATA")
    shape = model.image.shape
    epoch_count = np.zeros(shape, np.uint16)
    n_epochs = np.zeros(shape, np.uint16)
    per_warp: list = []
    spans: list = []
    fluxes: list = []
    for i, item in enumerate(warps):
        exp = _load(item)
        if exp is None:
            per_warp.append(None)
            spans.append(None)
            fluxes.append(None)
            continue
        valid = usable(exp, bad_bits) & model.valid
        spans.append(row_spans(valid))
        n_epochs += valid
        diff = exp.image - model.image
        cands = outlier_footprints(diff, exp.variance, valid, threshold, min_pixels, grow_px)
        if cands:
            goodpix = ((exp.mask & prefilter_bits) == 0).ravel()
            cands = [c for c in cands if np.count_nonzero(goodpix[c]) / c.size > prefilter_ratio]
        dflat = diff.ravel()
        fluxes.append([float(np.abs(dflat[c]).sum(dtype=np.float64)) for c in cands])
        slate = np.zeros(shape, bool).ravel()
        for c in cands:
            slate[c] = True
        epoch_count += slate.reshape(shape)
        per_warp.append(cands)
        del exp, diff, valid
    labels = model_source_labels(model, psf_sigma_px, source_threshold) if preserve_sources else None
    artifacts = []
    for cands, flux in zip(per_warp, fluxes):
        if cands is None:
            artifacts.append(None)
            continue
        kept = filter_artifacts(cands, epoch_count, n_epochs, labels, spatial_threshold, max_fraction_low,
                                max_num, max_fraction_high, flux, model.image, min_model_ratio, shape)
        if streak_grow_px > 0:
            kept = [grow_streak(a, shape, streak_grow_px) for a in kept]
        artifacts.append(np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64))
    return ArtifactResult(artifacts, epoch_count, n_epochs, [0 if c is None else len(c) for c in per_warp], spans)


# ------------------------------------------------------------------------------------------------- the coadd
class CoaddAccumulator:
    """Running sums of the weighted mean of direct warps (one warp at a time).

    ``add(exposure, good, weight, inexact=None)``: ``good`` the pixels that enter; ``inexact`` the pixels where
    the warp has data but was left out (artifacts, bad pixels), where the coadd PSF, a sum over every input
    covering the position, is then not exact. ``finish()`` returns image, variance, mask and nImage;
    pixels no input covers are NO_DATA (image and variance NaN); the mask ORs the used inputs' planes
    (``propagate_bits``) and sets INEXACT_PSF.
    """

    def __init__(self, shape: tuple[int, int], propagate_bits: int | None = None):
        self.shape = tuple(shape)
        self.s_w = np.zeros(shape, np.float32)
        self.s_wx = np.zeros(shape, np.float32)
        self.s_w2v = np.zeros(shape, np.float32)
        self.n = np.zeros(shape, np.uint16)
        self.mask = np.zeros(shape, np.int32)
        self.inexact = np.zeros(shape, bool)
        if propagate_bits is None:
            propagate_bits = mask_bit("INTRP", "SUSPECT", "STREAK", "DETECTED", "EDGE")
        self.propagate_bits = propagate_bits

    def add(self, exposure: Exposure, good: np.ndarray, weight: float, inexact: np.ndarray | None = None):
        if exposure.shape != self.shape:
            raise ValueError(f"warp shape {exposure.shape} != coadd shape {self.shape}: warps of one patch share "
                             "the patch grid")
        w = np.float32(weight)
        np.add(self.s_w, w, out=self.s_w, where=good)
        np.add(self.s_wx, w * exposure.image, out=self.s_wx, where=good)
        np.add(self.s_w2v, (w * w) * exposure.variance, out=self.s_w2v, where=good)
        self.n += good
        np.bitwise_or(self.mask, exposure.mask & self.propagate_bits, out=self.mask, where=good)
        if inexact is not None:
            self.inexact |= inexact

    def finish(self):
        """(image nJy, variance nJy^2, mask int32, n_image float32)."""
        covered = self.s_w > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            # NaN where nothing covers, as in the warps (DM's NO_DATA pixels; and tile compression quantizes
            # NaN losslessly, while an infinite value has no quantized form)
            image = np.where(covered, self.s_wx / self.s_w, np.nan).astype(np.float32)
            variance = np.where(covered, self.s_w2v / (self.s_w * self.s_w), np.nan).astype(np.float32)
        mask = self.mask.copy()
        mask[~covered] |= mask_bit("NO_DATA")
        mask[self.inexact & covered] |= mask_bit("INEXACT_PSF")
        return image, variance, mask, self.n.astype(np.float32)


# ------------------------------------------------------------------------------------------ noise correlation
def resampling_noise_factor(psf_kernel: np.ndarray, n_phase: int = 8) -> float:
    """By how much the variance plane underestimates PSF-flux errors on Lanczos-3 resampled white noise.

    A warp pixel is ``sum_j w_j(f) n_j`` (the 6 x 6 Lanczos weights at sub-pixel phase f): its variance plane
    says ``sigma^2 sum w^2`` per pixel, but neighbouring pixels share input pixels, so a PSF-weighted sum
    ``F = sum P I / sum P^2`` has variance ``sigma^2 sum (P * w)^2`` (P correlated with the kernel) instead of
    ``sigma^2 sum w^2 sum P^2``. Returns ``sqrt`` of their ratio averaged over phases (1 for no resampling,
    ~1.1 for a 4-pixel FWHM PSF); the coadd of independent warps has the same factor.
    """
    from scipy.signal import fftconvolve
    from .resample import lanczos3
    p = np.asarray(psf_kernel, float)
    p = p / p.sum()
    f = (np.arange(n_phase) + 0.5) / n_phase
    taps = np.arange(-2, 4)
    w = lanczos3(f[:, None] - taps[None, :])
    w /= w.sum(axis=1, keepdims=True)
    true = prop = 0.0
    for wy in w:
        for wx in w:
            k = np.outer(wy, wx)
            true += float((fftconvolve(p, k[::-1, ::-1], mode="full") ** 2).sum())
            prop += float((k**2).sum() * (p**2).sum())
    return math.sqrt(true / prop)


# ------------------------------------------------------------------------------------------ input coverage
def coverage_edge(data: np.ndarray, radius_px: float) -> np.ndarray:
    """Pixels within ``radius_px`` of the edge of an input's data inside the image (not the image's own border):
    where a source's pixels mix this input's presence and absence (INEXACT_PSF)."""
    from .background import grow_mask
    if not np.isfinite(radius_px) or radius_px <= 0:
        radius_px = 1
    d = np.asarray(data, bool)
    edge = np.zeros(d.shape, bool)
    edge[:, 1:] |= d[:, 1:] != d[:, :-1]
    edge[1:, :] |= d[1:, :] != d[:-1, :]
    if not edge.any():
        return edge
    return grow_mask(edge, int(math.ceil(radius_px)))


def coverage_polygon(valid: np.ndarray) -> np.ndarray:
    """The convex hull (vertices (K, 2) as x, y, counter-clockwise, pixel edges at +-0.5) of a warp's pixels
    with data -- DM's per-input ValidPolygon of a CoaddPsf. Empty (0, 2) when nothing is valid."""
    rows = np.flatnonzero(valid.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2))
    sub = valid[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    pts = np.concatenate([np.column_stack([first - 0.5, rows - 0.5]), np.column_stack([first - 0.5, rows + 0.5]),
                          np.column_stack([last + 0.5, rows - 0.5]), np.column_stack([last + 0.5, rows + 0.5])])
    return _convex_hull(pts)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise (x right, y up), collinear points dropped."""
    pts = np.unique(np.asarray(pts, float), axis=0)
    if len(pts) <= 2:
        return pts
    def half(points):
        chain = []
        for p in points:
            while len(chain) >= 2:
                (x1, y1), (x2, y2) = chain[-2], chain[-1]
                if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                    chain.pop()
                else:
                    break
            chain.append((p[0], p[1]))
        return chain
    lower = half(pts)
    upper = half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def points_in_polygon(vertices: np.ndarray, x, y) -> np.ndarray:
    """True where (x, y) is inside (or on) the convex counter-clockwise polygon ``vertices`` (K, 2)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    v = np.asarray(vertices, float)
    if len(v) < 3:
        return np.zeros(x.shape, bool)
    inside = np.ones(x.shape, bool)
    for k in range(len(v)):
        x1, y1 = v[k]
        x2, y2 = v[(k + 1) % len(v)]
        inside &= (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= -1e-9
    return inside

