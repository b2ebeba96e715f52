"""processEimage: turn an e-image into a calibrated exposure (calexp) and a Source catalog (src).

The DM stack's ProcessEimageTask (characterizeImage + calibrate) in one stage:

1. background: a mesh estimate (sep) with saturated and no-data pixels excluded and subtracted; the residual
   background of the subtracted image, with the detected footprints masked, estimated the same way, subtracted
   and added to the first (as DM's re-estimate); the total is written as ``calexp_background``;
2. cosmic rays (astroscrappy, L.A.Cosmic) masked CR and interpolated (INTRP); saturated pixels and bleed trails
   masked SAT; the border where the smoothing kernel runs off the image masked EDGE;
3. detection: the PSF-smoothed image thresholded at ``detection.threshold`` sigma; footprints, peaks (DETECTED);
4. PSF: stars from the size-magnitude locus, a pixel-basis PSF varying as a polynomial of position
   (:class:`~twinkles.psf.ImageGridPSF` stored with the calexp; or, with ``psf.algorithm=piff``, Piff's
   PixelGrid x BasisPolynomial stored as a :class:`~twinkles.psf.PiffPSF`); aperture correction to total flux;
5. measurement (:mod:`twinkles.measure`): centroid, PSF flux, aperture fluxes, adaptive moments, flags;
6. astrometry: match to ``ref_cat`` from the perturbed header WCS, fit TAN-SIP with outlier rejection;
7. photometric calibration: zero point from matched reference stars, fluxes in nJy.

Bad input (no WCS, all-NaN pixels, no usable stars, too few reference matches) raises
:class:`~twinkles.stages.ProcessingError` naming the visit and the reason; no calexp is written then.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from ..algorithms.astrometry import AstrometryError, fit_astrometry
from ..algorithms.background import BackgroundResult, estimate_background, grow_mask, move_residual_background
from ..algorithms.cosmic_rays import find_cosmic_rays
from ..algorithms.detection import detect_sources, saturation_mask
from ..algorithms.photocal import (PhotoCalError, aperture_correction, fit_zero_point, reference_magnitudes,
                                   REFERENCE_BAND)
from ..algorithms.pixel_kernels import bin2x2, bin2x2_any, usable_pixels
from ..algorithms.psf_model import PsfFitError, fit_piff_psf, fit_pixel_psf, select_psf_stars
from ..image import Exposure, PhotoCalib, mask_bit, wcs_is_celestial
from ..measure import (MeasurementConfig, PsfStamps, apply_calibration, extendedness, measure_sources,
                       moments_to_fwhm)
from ..measure.flags import mask_test
from ..measure.photometry import deblended_aperture_fluxes
from ..psf import SIGMA_TO_FWHM, GaussianPSF
from . import ProcessingError

__all__ = ["Config", "BackgroundConfig", "DetectionConfig", "PsfConfig", "AstrometryConfig", "PhotoCalConfig",
           "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "source_id"]

log = logging.getLogger(__name__)

QUANTUM = ("visit", "detector")
INPUTS = ["eimage", "ref_cat"]
OUTPUTS = ["calexp", "calexp_background", "src", "process_eimage_metadata"]


@dataclass
class BackgroundConfig:
    mesh_px: int = 128  # mesh (bin) size, pixels (DM binSize 128)
    filter_size: int = 3  # median filter over meshes
    mask_grow_px: int = 6  # detected footprints are grown by this many pixels before re-estimating


@dataclass
class DetectionConfig:
    threshold: float = 5.0  # sigma of the PSF-smoothed image (DM default 5)
    min_pixels: int = 3  # smallest footprint, pixels
    min_prominence: float = 2.0  # a secondary peak must rise this many sigma above the dip to its neighbour
    wing_contrast: bool = True  # faint peaks near much brighter ones must stand out of the bright one's wing ...
    wing_contrast_sigma: float = 3.0  # ... by this many sigma above the S/N on a ring around them
    grow_sigma: float = 2.4  # DETECTED plane = footprints grown by this many PSF sigmas (DM nSigmaToGrow)
    cosmic_rays: bool = True  # find and interpolate cosmic rays (astroscrappy)
    cr_sigclip: float = 5.0  # L.A.Cosmic Laplacian threshold, sigma
    cr_objlim: float = 5.0  # L.A.Cosmic contrast limit protecting star cores
    cr_niter: int = 1  # L.A.Cosmic iterations (a second one finds < 5% more CR pixels here, at twice the cost)
    saturation_e: float = 0.0  # saturation level, electrons; 0 = from the eimage metadata
    initial_fwhm_arcsec: float = 0.0  # first-guess seeing; 0 = the visit's reported seeing, else 0.8


@dataclass
class PsfConfig:
    algorithm: str = "pixel"  # pixel: our pixel-basis fit (fast); piff: Piff PixelGrid x BasisPolynomial
    piff_model_size: int = 21  # Piff model stamp, pixels (the fitted stars' stamps are 4 pixels larger)
    min_snr: float = 50.0  # PSF star candidates: S/N of the PSF flux
    max_stars: int = 300  # at most this many PSF stars (brightest, spread over the detector)
    min_stars: int = 5  # fewer usable stars -> ProcessingError
    stamp_size: int = 31  # model stamp, pixels (odd); PSF fluxes measure the flux inside it
    order: int = 2  # polynomial order of the spatial variation (lowered with few stars)
    min_stars_per_term: float = 10.0  # ... to keep at least this many stars per polynomial term
    n_grid: int = 5  # the model is stored sampled on n_grid x n_grid detector positions
    outlier_nsigma: float = 5.0  # reject stars whose chi^2 is this many robust sigmas above the median
    apcorr_r1_px: float = 12.0  # aperture correction: inner radius of the curve of growth (DM calibFlux 12 px)
    apcorr_r2_px: float = 18.0  # ... outer radius ("large aperture"; larger ones gather more neighbour light)
    apcorr_extrapolate: bool = True  # add the Kolmogorov tail beyond apcorr_r2_px (1 - EE ~ R^-5/3)
    apcorr_tail: str = "kolmogorov"  # kolmogorov: 0.10 (FWHM/R)^(5/3); growth: fitted from F(r1), F(r2)
    apcorr_estimator: str = "median"  # median | wmean (inverse-variance weighted mean) of the stars' ratios
    apcorr_local_background: bool = True  # remove the local background (annulus median) around PSF stars
    apcorr_mask_grow_px: int = 2  # other footprints are grown by this much and replaced by the star's model


@dataclass
class AstrometryConfig:
    max_offset_arcsec: float = 10.0  # header WCS may be off by up to this much
    max_rotation_deg: float = 0.3  # ... and rotated by up to this much
    match_radius_px: float = 3.0  # first match after the voted shift/rotation
    fit_match_radius_arcsec: float = 0.5  # re-match radius in the fit iterations
    sip_degree: int = 2  # SIP polynomial order (lowered when there are few matches)
    min_matches: int = 10  # fewer -> ProcessingError
    min_snr: float = 10.0  # detections used for matching
    n_iter: int = 4  # fit / re-match / clip iterations
    clip_nsigma: float = 3.0
    max_rms_mas: float = 200.0  # a fit worse than this is refused (ProcessingError), never written


@dataclass
class PhotoCalConfig:
    min_snr: float = 20.0  # stars used for the zero point
    min_stars: int = 5  # fewer -> ProcessingError
    colour_transform: str = "stellar_locus"  # u, z, y from g, r, i: stellar_locus (Covey et al. 2007) | none
    fit_colour_term: bool = False  # also fit a linear colour term where the band has no reference of its own
    colour_term: float = 0.0  # colour term used when not fitted (mag per mag of reference colour)
    clip_nsigma: float = 3.0
    max_rms_mag: float = 0.2  # a zero-point scatter worse than this is refused
    psf_stars_only: bool = True  # calibrate with the PSF stars (all matched stars if fewer than min_stars)


@dataclass
class Config:
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    psf: PsfConfig = field(default_factory=PsfConfig)
    astrometry: AstrometryConfig = field(default_factory=AstrometryConfig)
    photocal: PhotoCalConfig = field(default_factory=PhotoCalConfig)
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)


@dataclass
class Result:
    calexp: Exposure
    background: np.ndarray  # the subtracted background, electrons (float32)
    src: Table
    metadata: dict  # written as process_eimage_metadata: a function of the inputs only (no timings)
    timings: dict = field(default_factory=dict)  # seconds per step (wall) and "cpu_s"; not written


def source_id(visit: int, detector: int, index) -> np.ndarray:
    """Unique source IDs: (visit * 1000 + detector) * 10^6 + index (index < 10^6)."""
    return (np.int64(visit) * 1000 + np.int64(detector)) * 1_000_000 + np.asarray(index, np.int64)


def _meta_value(exposure: Exposure, names, default):
    for n in names:
        if n in exposure.metadata:
            try:
                v = float(exposure.metadata[n])
            except (TypeError, ValueError):
                continue
            if math.isfinite(v) and v > 0:
                return v
    return default


def _binned_footprints(image, variance, bad, sigma_px: float, threshold: float) -> np.ndarray:
    """Pixels of the sources detected on the 2x2-binned image (sums of image and variance), at full resolution."""
    ny, nx = image.shape
    ey, ex = ny - ny % 2, nx - nx % 2
    det = detect_sources(bin2x2(image), bin2x2(variance), sigma_px / 2.0, threshold,
                         ignore=bin2x2_any(np.ascontiguousarray(bad)), grow_sigma=0.0, find_peaks=False)
    full = np.zeros((ny, nx), bool)
    full[:ey, :ex] = np.repeat(np.repeat(det.detected, 2, axis=0), 2, axis=1)
    return full


def _set_bits(mask: np.ndarray, where: np.ndarray, *planes: str) -> None:
    """OR the planes' bits into ``mask`` where ``where`` is True, in place (no gather/scatter copies)."""
    np.bitwise_or(mask, np.int32(mask_bit(*planes)), out=mask, where=where)


def _column(table: Table, name: str):
    return np.asarray(table[name], float) if name in table.colnames else None


def run(exposure: Exposure, ref_cat: Table, config: Config | None = None, data_id: dict | None = None,
        reuse_planes: bool = False) -> Result:
    """Process one e-image (electrons, with sky) into a calexp, its background, a Source table and metadata.

    With ``reuse_planes`` the eimage's image, mask and variance arrays become the calexp's and are modified in
    place (for a caller that read the eimage for this call only: three 4k x 4k copies fewer); by default the
    exposure is left as it was.
    """
    config = config or Config()
    t_start = time.process_time()
    t_wall = time.perf_counter()
    timings: dict[str, float] = {}
    info = exposure.visit_info
    visit = int((data_id or {}).get("visit", info.visit if info else -1))
    detector = int((data_id or {}).get("detector", info.detector if info else 0))
    where = f"visit {visit} detector {detector}"

    def fail(reason: str) -> ProcessingError:
        return ProcessingError(f"{where}: {reason}")

    if info is None:
        raise fail("the eimage has no visit information (VISIT/BAND/MJD-AVG header keywords); re-ingest it")
    band = info.band
    if band not in REFERENCE_BAND:
        raise fail(f"unknown band {band!r}")
    if config.psf.algorithm not in ("pixel", "piff"):
        raise fail(f"psf.algorithm={config.psf.algorithm!r}: use pixel or piff")
    if not wcs_is_celestial(exposure.wcs):
        raise fail("the eimage has no celestial WCS in its header, so it cannot be matched to the reference "
                   "catalog; ingest it with an approximate WCS (CTYPE/CRVAL/CRPIX/CD)")
    raw = np.asarray(exposure.image, np.float32)
    var_in = np.asarray(exposure.variance, np.float32)
    gain = _meta_value(exposure, ("gain",), 1.0)
    read_noise = _meta_value(exposure, ("read_noise_e", "read_noise", "readnoise", "rdnoise"), 5.0)
    variance_from_image = False
    flat = var_in[::16, ::16]
    if flat.size and np.all(flat == flat.flat[0]) and np.all(var_in == var_in.flat[0]):
        # no variance plane (an ingested image): Poisson noise of the counts (sky included) plus read noise
        var_in = (np.clip(raw, 0, None) / gain + read_noise ** 2).astype(np.float32)
        variance_from_image = True
    finite, n_finite = usable_pixels(np.ascontiguousarray(raw), np.ascontiguousarray(var_in))
    if n_finite == 0:
        raise fail("every pixel is NaN/infinite or has no positive variance; the eimage is unusable")
    if n_finite < 0.05 * finite.size:
        raise fail(f"only {n_finite / finite.size:.1%} of the pixels are finite; the eimage is unusable")
    mask = np.asarray(exposure.mask, np.int32) if reuse_planes else np.array(exposure.mask, np.int32)
    all_finite = n_finite == finite.size
    # float32 throughout: no float64 copies of 4k x 4k planes; image is our own (CR pixels are replaced)
    if all_finite:
        image = raw if reuse_planes else raw.copy()
        variance = var_in if (reuse_planes or variance_from_image) else np.array(var_in, np.float32)
    else:
        _set_bits(mask, ~finite, "NO_DATA")
        sample = var_in[::4, ::4][finite[::4, ::4]]
        median_var = float(np.median(sample if len(sample) else var_in[finite]))
        image = np.where(finite, raw, np.float32(0.0))
        variance = np.where(finite, var_in, np.float32(median_var))
    no_data = mask_test(mask, mask_bit("NO_DATA", "BAD"), True)
    pixel_scale = float(np.sqrt(abs(np.linalg.det(exposure.wcs.pixel_scale_matrix))) * 3600.0)

    saturation = config.detection.saturation_e or _meta_value(
        exposure, ("saturation_e", "saturation", "satlevel", "saturate"), np.inf)
    seeing = config.detection.initial_fwhm_arcsec or (info.seeing_arcsec if math.isfinite(info.seeing_arcsec)
                                                      and info.seeing_arcsec > 0 else 0.8)
    sigma0 = seeing / pixel_scale / SIGMA_TO_FWHM

    timings["setup"] = time.perf_counter() - t_wall
    # ------------------------------------------------------------------ masks and first background
    t0 = time.perf_counter()
    sat = saturation_mask(raw, saturation)
    if not all_finite:
        sat &= finite
    del finite, raw, var_in  # (4k x 4k planes are dropped as soon as they are not needed: peak memory)
    _set_bits(mask, sat, "SAT")
    sat_or_no_data = sat | no_data
    bkg = estimate_background(image, sat_or_no_data, config.background.mesh_px, config.background.filter_size)
    # from here on the image is background-subtracted in place (``image`` is our own array): the calexp's pixels
    sub = image
    sub -= bkg.image
    del image
    timings["background1"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ cosmic rays
    t0 = time.perf_counter()
    n_cr = 0
    if config.detection.cosmic_rays:
        cr = find_cosmic_rays(sub, bkg.image, variance, bad_mask=sat_or_no_data, sigclip=config.detection.cr_sigclip,
                              objlim=config.detection.cr_objlim, niter=config.detection.cr_niter,
                              saturation=saturation, read_noise=read_noise, overwrite=True)
        sub = cr.cleaned  # ``sub`` itself (overwrite)
        _set_bits(mask, cr.mask, "CR", "INTRP")
        n_cr = cr.n_pixels
        del cr
    timings["cosmic_rays"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ detection, background iteration
    t0 = time.perf_counter()
    dcfg = config.detection
    # first pass, for the background's source mask only: footprints on the 2x2-binned image (4x cheaper)
    src_mask = grow_mask(_binned_footprints(sub, variance, no_data, sigma0, dcfg.threshold),
                         config.background.mask_grow_px)
    src_mask |= sat_or_no_data
    del sat_or_no_data
    # the residual background of the subtracted image with the sources masked, added to the first estimate
    # (DM's SourceDetectionTask re-estimates the background the same way)
    try:
        level, rms = move_residual_background(sub, bkg.image, src_mask, config.background.mesh_px,
                                              config.background.filter_size)
        bkg = BackgroundResult(bkg.image, bkg.level + level, rms)
    except ValueError:
        pass  # everything is covered by sources: keep the first estimate
    del src_mask
    det = detect_sources(sub, variance, sigma0, dcfg.threshold, ignore=no_data, min_pixels=dcfg.min_pixels,
                         min_prominence=dcfg.min_prominence, grow_sigma=dcfg.grow_sigma, saturated=sat,
                         wing_contrast=dcfg.wing_contrast, wing_contrast_sigma=dcfg.wing_contrast_sigma)
    _set_bits(mask, det.detected, "DETECTED")
    edge_width = int(math.ceil(3.0 * sigma0))
    if edge_width > 0:  # the EDGE plane (edge_mask's pixels), set strip by strip
        edge = np.int32(mask_bit("EDGE"))
        for strip in (mask[:edge_width], mask[-edge_width:], mask[:, :edge_width], mask[:, -edge_width:]):
            strip |= edge
    timings["detection"] = time.perf_counter() - t0
    sources = det.sources
    if len(sources) == 0:
        raise fail(f"no sources detected above {dcfg.threshold} sigma; the image may be empty or the variance "
                   "plane wrong")

    # ------------------------------------------------------------------ PSF
    t0 = time.perf_counter()
    mcfg = config.measurement
    gauss = GaussianPSF(sigma0 * SIGMA_TO_FWHM)
    # provisional measurement (Gaussian PSF of the guessed seeing) of the sources bright enough to be PSF stars
    b_idx = np.nonzero(sources["significance"] >= 0.5 * config.psf.min_snr)[0]
    first = measure_sources(sub, variance, mask, gauss, sources["x"][b_idx], sources["y"][b_idx], config=mcfg,
                            psf_stamps=PsfStamps(gauss, sub.shape, n_grid=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr1 = np.asarray(first["psfFlux"]) / np.asarray(first["psfFluxErr"])
    usable = (~np.asarray(first["pixelFlags_saturated"]) & ~np.asarray(first["pixelFlags_cr"])
              & ~np.asarray(first["pixelFlags_edge"]) & ~np.asarray(first["pixelFlags_interpolated"])
              & ~np.asarray(first["centroid_flag"]) & ~np.asarray(first["shape_flag"])
              & (sources["n_child"][b_idx] == 0) & ~np.asarray(first["psfFlux_flag"]))
    pcfg = config.psf
    selection = select_psf_stars(snr1, first["ixx"], first["iyy"], first["ixy"], usable, min_snr=pcfg.min_snr,
                                 max_stars=pcfg.max_stars, x=np.asarray(first["x"]), y=np.asarray(first["y"]))
    n_sel = int(selection.selected.sum())
    if n_sel < pcfg.min_stars:
        raise fail(f"{n_sel} usable PSF stars (S/N >= {pcfg.min_snr}, unsaturated, isolated; need >= "
                   f"{pcfg.min_stars}); the image has no usable stars -- check the exposure, or lower "
                   "--config process_eimage.psf.min_snr")
    psel = np.nonzero(selection.selected)[0]
    good_pix = mask_test(mask, mask_bit("NO_DATA", "BAD", "SAT", "CR"), False)
    try:
        if pcfg.algorithm == "piff":
            psf, used_sel, psf_info = fit_piff_psf(
                sub, variance, good_pix, np.asarray(first["x"])[psel], np.asarray(first["y"])[psel],
                stamp_size=pcfg.piff_model_size + 4, model_size=pcfg.piff_model_size, order=pcfg.order,
                min_stars=pcfg.min_stars, outlier_nsigma=pcfg.outlier_nsigma,
                min_stars_per_term=pcfg.min_stars_per_term, footprints=det.footprints,
                own_labels=sources["parent_id"][b_idx[psel]])
        else:
            psf, used_sel, psf_info = fit_pixel_psf(
                sub, variance, good_pix, np.asarray(first["x"])[psel], np.asarray(first["y"])[psel],
                stamp_size=pcfg.stamp_size, order=pcfg.order, min_stars=pcfg.min_stars,
                outlier_nsigma=pcfg.outlier_nsigma, n_grid=pcfg.n_grid, footprints=det.footprints,
                own_labels=sources["parent_id"][b_idx[psel]], min_stars_per_term=pcfg.min_stars_per_term)
    except PsfFitError as exc:
        raise fail(f"PSF model: {exc}; the image has no usable stars") from None
    psf_star = np.zeros(len(sources), bool)
    psf_star[b_idx[psel[used_sel]]] = True
    candidates = np.zeros(len(sources), bool)
    candidates[b_idx[psel]] = True
    timings["psf"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ measurement with the PSF model
    t0 = time.perf_counter()
    stamps = PsfStamps(psf, sub.shape, n_grid=mcfg.psf_grid, model_size=pcfg.stamp_size)
    x_start, y_start = sources["x"].astype(float), sources["y"].astype(float)
    x_start[b_idx], y_start[b_idx] = np.asarray(first["x"]), np.asarray(first["y"])
    src = measure_sources(sub, variance, mask, psf, x_start, y_start, background=bkg.image, config=mcfg,
                          psf_stamps=stamps)
    timings["measurement"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ aperture correction
    t0 = time.perf_counter()
    ps_idx = np.nonzero(psf_star)[0]
    annulus = (pcfg.apcorr_r2_px + 2.0, pcfg.apcorr_r2_px + 12.0) if pcfg.apcorr_local_background else None
    big = deblended_aperture_fluxes(sub, variance, det.footprints, sources["parent_id"][ps_idx], stamps,
                                    np.asarray(src["x"])[ps_idx], np.asarray(src["y"])[ps_idx],
                                    np.asarray(src["psfFlux"])[ps_idx], (pcfg.apcorr_r1_px, pcfg.apcorr_r2_px),
                                    grow_px=pcfg.apcorr_mask_grow_px, annulus=annulus)
    try:
        apcorr = aperture_correction(np.asarray(src["psfFlux"])[psf_star], big[pcfg.apcorr_r1_px][0],
                                     big[pcfg.apcorr_r2_px][0], pcfg.apcorr_r1_px, pcfg.apcorr_r2_px,
                                     ap_flux_r2_err=big[pcfg.apcorr_r2_px][1], extrapolate=pcfg.apcorr_extrapolate,
                                     local_background=big.get("annulus"), annulus=annulus,
                                     estimator=pcfg.apcorr_estimator,
                                     fwhm_px=float(psf.fwhm()) if pcfg.apcorr_tail == "kolmogorov" else None)
    except PhotoCalError as exc:
        raise fail(f"aperture correction: {exc}") from None
    src["psfFlux"] = np.asarray(src["psfFlux"]) * apcorr.factor
    src["psfFluxErr"] = np.asarray(src["psfFluxErr"]) * apcorr.factor

    timings["aperture_correction"] = time.perf_counter() - t0
    # ------------------------------------------------------------------ astrometry
    t0 = time.perf_counter()
    acfg = config.astrometry
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.asarray(src["psfFlux"]) / np.asarray(src["psfFluxErr"])
    clean = (~np.asarray(src["centroid_flag"]) & ~np.asarray(src["pixelFlags_saturatedCenter"])
             & ~np.asarray(src["pixelFlags_edge"]) & np.isfinite(snr))
    cand = np.nonzero(clean & (snr >= acfg.min_snr))[0]
    det_order = cand[np.argsort(-snr[cand])]
    ref_band = REFERENCE_BAND[band]
    ref_flux = np.asarray(ref_cat[f"{ref_band}_flux"], float) if f"{ref_band}_flux" in ref_cat.colnames else \
        np.zeros(len(ref_cat))
    ref_order = np.argsort(-np.nan_to_num(ref_flux, nan=-np.inf))
    try:
        astrom = fit_astrometry(np.asarray(src["x"]), np.asarray(src["y"]), det_order,
                                np.asarray(ref_cat["coord_ra"]), np.asarray(ref_cat["coord_dec"]), ref_order,
                                exposure.wcs, sub.shape, max_offset_arcsec=acfg.max_offset_arcsec,
                                max_rotation_deg=acfg.max_rotation_deg, match_radius_px=acfg.match_radius_px,
                                fit_match_radius_arcsec=acfg.fit_match_radius_arcsec, sip_degree=acfg.sip_degree,
                                min_matches=acfg.min_matches, n_iter=acfg.n_iter, clip_nsigma=acfg.clip_nsigma,
                                x_err=np.asarray(src["xErr"]), y_err=np.asarray(src["yErr"]),
                                ref_ra_err=_column(ref_cat, "coord_raErr"),
                                ref_dec_err=_column(ref_cat, "coord_decErr"))
    except AstrometryError as exc:
        raise fail(f"astrometry: {exc}") from None
    if not astrom.rms_mas <= acfg.max_rms_mas:
        raise fail(f"astrometry: fit RMS {astrom.rms_mas:.0f} mas over {astrom.n_matches} matches exceeds "
                   f"astrometry.max_rms_mas={acfg.max_rms_mas}; refusing to write a wrong WCS")
    ra, dec = astrom.wcs.all_pix2world(np.asarray(src["x"]), np.asarray(src["y"]), 0)
    timings["astrometry"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ photometric calibration
    t0 = time.perf_counter()
    ccfg = config.photocal
    ref_mag, ref_mag_err, colour = reference_magnitudes(ref_cat, band, ccfg.colour_transform)
    di, ri = astrom.det_index, astrom.ref_index
    pc_ok = (~np.asarray(src["pixelFlags_saturated"])[di] & ~np.asarray(src["pixelFlags_cr"])[di]
             & (sources["n_child"][di] == 0) & ~np.asarray(src["psfFlux_flag"])[di] & (snr[di] >= ccfg.min_snr))
    if ccfg.psf_stars_only and (pc_ok & psf_star[di]).sum() >= ccfg.min_stars:
        # stars whose profile passed the PSF fit: an unresolved neighbour brightens a star by 1-4% and biased the
        # zero point by ~2 mmag when every matched star was used (the reference fluxes are the stars' own)
        pc_ok &= psf_star[di]
    di, ri = di[pc_ok], ri[pc_ok]
    try:
        pcal = fit_zero_point(np.asarray(src["psfFlux"])[di], np.asarray(src["psfFluxErr"])[di], ref_mag[ri],
                              ref_mag_err[ri], colour[ri], colour_term=ccfg.colour_term,
                              fit_colour_term=ccfg.fit_colour_term and REFERENCE_BAND[band] != band,
                              min_stars=ccfg.min_stars, clip_nsigma=ccfg.clip_nsigma)
    except PhotoCalError as exc:
        raise fail(f"photometric calibration: {exc} among {len(astrom.det_index)} astrometric matches") from None
    if not pcal.rms_mag <= ccfg.max_rms_mag:
        raise fail(f"photometric calibration: zero-point scatter {pcal.rms_mag:.3f} mag over {pcal.n_stars} stars "
                   f"exceeds photocal.max_rms_mag={ccfg.max_rms_mag}; refusing to write a wrong zero point")
    # the zero point's error includes the aperture correction's (it scales every calibrated flux)
    zp_err = math.hypot(pcal.zero_point_err, 2.5 / math.log(10) * apcorr.factor_err / apcorr.factor)
    photo_calib = PhotoCalib.from_zero_point(pcal.zero_point, zp_err)
    timings["photocal"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ the Source table
    t0 = time.perf_counter()
    n = len(src)
    with np.errstate(divide="ignore", invalid="ignore"):
        c6 = np.nanmedian(np.asarray(src["psfFlux"])[psf_star] / np.asarray(src["apFlux_6_0"])[psf_star])
    ext = extendedness(src["psfFlux"], src["psfFluxErr"], np.asarray(src["apFlux_6_0"]) * c6,
                       np.asarray(src["apFlux_6_0Err"]) * c6, mcfg.extendedness_ratio, mcfg.extendedness_nsigma)
    out = Table()
    out["sourceId"] = source_id(visit, detector, np.arange(n))
    out["visit"] = np.full(n, visit, np.int64)
    out["detector"] = np.full(n, detector, np.int32)
    out["band"] = np.full(n, band)
    out["ra"], out["dec"] = np.asarray(ra, float) % 360.0, np.asarray(dec, float)
    out["ra"].unit = out["dec"].unit = "deg"
    for c in src.colnames:
        out[c] = src[c]
    out["snr"] = snr
    out["extendedness"] = ext
    out["footprintId"] = sources["parent_id"].astype(np.int64)  # detection footprint (shared by blends)
    out["deblend_nChild"] = sources["n_child"].astype(np.int32)
    out["blended"] = sources["n_child"] > 0
    out["detect_significance"] = sources["significance"]
    out["calib_psf_candidate"] = candidates
    out["calib_psf_used"] = psf_star
    astrom_used = np.zeros(n, bool)
    astrom_used[astrom.det_index] = True
    out["calib_astrometry_used"] = astrom_used
    photo_used = np.zeros(n, bool)
    photo_used[di[pcal.used]] = True
    out["calib_photometry_used"] = photo_used
    apply_calibration(out, photo_calib.njy_per_electron)
    for c in ("x", "y", "xErr", "yErr"):
        out[c].unit = "pix"
    for c in ("ixx", "iyy", "ixy", "ixxPSF", "iyyPSF", "ixyPSF"):
        out[c].unit = "pix2"
    out["sky"].unit = "electron/pix"  # the subtracted background at the source (calexp_background)
    out.meta.update({"visit": visit, "detector": detector, "band": band, "zero_point": pcal.zero_point,
                     "njy_per_electron": photo_calib.njy_per_electron, "aperture_correction": apcorr.factor})

    # ------------------------------------------------------------------ calexp and metadata
    fwhm_px = float(psf.fwhm())
    cx, cy = (sub.shape[1] - 1) / 2.0, (sub.shape[0] - 1) / 2.0
    kc = psf.kernel_image(cx, cy)
    from ..measure.moments import moments_from_stamps
    m = moments_from_stamps(kc[None], None, fwhm_px / SIGMA_TO_FWHM)
    fwhm_mom = float(moments_to_fwhm(m["ixx"], m["iyy"], m["ixy"])[0])
    meta = {
        "visit": visit, "detector": detector, "band": band,
        "seeing_arcsec": fwhm_px * pixel_scale,  # PSF model FWHM at the detector centre (half-maximum area)
        "psf_fwhm_px": fwhm_px,
        "psf_fwhm_moments_arcsec": fwhm_mom * pixel_scale,
        "zero_point": pcal.zero_point, "zero_point_err": zp_err,
        "njy_per_electron": photo_calib.njy_per_electron, "colour_term": pcal.colour_term,
        "photocal_n_stars": pcal.n_stars, "photocal_rms_mag": pcal.rms_mag,
        "sky_level_e": bkg.level, "sky_rms_e": bkg.global_rms,
        "n_psf_stars": int(psf_star.sum()), "n_psf_candidates": int(n_sel),
        "psf_order": int(psf_info["order"]), "psf_median_chi2": psf_info["median_chi2"],
        "aperture_correction": apcorr.factor, "aperture_correction_tail": apcorr.tail_fraction,
        "astrom_rms_mas": astrom.rms_mas, "astrom_median_offset_mas": astrom.median_offset_mas,
        "astrom_n_matches": astrom.n_matches, "astrom_sip_degree": astrom.sip_degree,
        "astrom_initial_shift_px": list(astrom.initial_shift_px),
        "astrom_initial_rotation_deg": astrom.initial_rotation_deg,
        "n_sources": int(n), "n_cr_pixels": int(n_cr), "n_saturated_pixels": int(sat.sum()),
        "n_no_data_pixels": int(no_data.sum()), "variance_from_image": variance_from_image,
    }
    timings["tables"] = time.perf_counter() - t0
    timings["cpu_s"] = time.process_time() - t_start
    calexp_meta = {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}
    calexp = Exposure(sub, mask, variance, astrom.wcs, psf, photo_calib, info, calexp_meta)
    return Result(calexp, bkg.image, out, meta, timings)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the eimage and the reference catalog, run, write calexp, calexp_background, src and metadata."""
    exposure = butler.get("eimage", data_id)
    ref_cat = butler.get("ref_cat", {})
    result = run(exposure, ref_cat, config, data_id, reuse_planes=True)
    did = {"visit": data_id["visit"], "detector": data_id.get("detector", 0)}
    butler.put(result.calexp, "calexp", did)
    butler.put(result.background, "calexp_background", did)
    butler.put(result.src, "src", did)
    butler.put(result.metadata, "process_eimage_metadata", did)
    # the timings go to the job's record, not into the dataset: a re-run must write identical files
    log.info("visit %s detector %s timings (s): %s", did["visit"], did["detector"],
             json.dumps({k: round(v, 3) for k, v in result.timings.items()}))
    return dict(result.metadata, timings_s={k: v for k, v in result.timings.items() if k != "cpu_s"},
                cpu_s=result.timings.get("cpu_s"))
