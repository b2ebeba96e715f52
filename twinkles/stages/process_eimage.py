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
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from ..algorithms.astrometry import AstrometryError, AstrometryResult, fit_astrometry
from ..algorithms.background import (BackgroundResult, NoUsablePixelsError, estimate_background,
                                     fit_background_model, grow_mask,
                                     move_residual_background)
from ..algorithms.cosmic_rays import find_cosmic_rays
from ..algorithms.detection import DetectionResult, binned_footprints, detect_sources, saturation_mask
from ..algorithms.masks import set_border_planes, set_mask_planes
from ..algorithms.photocal import (PhotoCalError, aperture_correction, fit_zero_point, reference_magnitudes,
                                   REFERENCE_BAND)
from ..algorithms.pixel_kernels import usable_pixels
from ..algorithms.psf_model import PsfFitError, fit_piff_psf, fit_pixel_psf, select_psf_stars
from ..image import Exposure, PhotoCalib, mask_bit, pixel_scale_arcsec, wcs_is_celestial
from ..measure import (MeasurementConfig, PsfStamps, apply_calibration, extendedness, measure_sources,
                       moments_to_fwhm)
from ..measure.flags import mask_test
from ..measure.moments import moments_from_stamps
from ..measure.photometry import deblended_aperture_fluxes
from ..psf import SIGMA_TO_FWHM, GaussianPSF
from . import ProcessingError
from .timing import StepTimer

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


#: source IDs: (visit * 1000 + detector) * 10^6 + index
MAX_DETECTORS = 1000
MAX_SOURCES = 1_000_000
MAX_VISIT = (np.iinfo(np.int64).max - (MAX_DETECTORS * MAX_SOURCES - 1)) // (MAX_DETECTORS * MAX_SOURCES)


def source_id(visit: int, detector: int, index) -> np.ndarray:
    """Unique source IDs: (visit * 1000 + detector) * 10^6 + index, as int64.

    Raises ValueError when a number does not fit its digits (detector >= 1000, index >= 10^6, or a visit so large
    that the ID overflows int64): IDs would otherwise collide silently.
    """
    index = np.asarray(index, np.int64)
    if not 0 <= int(detector) < MAX_DETECTORS:
        raise ValueError(f"source IDs: detector {detector} outside 0..{MAX_DETECTORS - 1}")
    if not 0 <= int(visit) <= MAX_VISIT:
        raise ValueError(f"source IDs: visit {visit} outside 0..{MAX_VISIT} (the ID would overflow int64)")
    if index.size and (index.min() < 0 or index.max() >= MAX_SOURCES):
        raise ValueError(f"source IDs: source index {int(index.max())} outside 0..{MAX_SOURCES - 1} (at most "
                         f"{MAX_SOURCES} sources per detector and visit)")
    return (np.int64(visit) * MAX_DETECTORS + np.int64(detector)) * MAX_SOURCES + index


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


def _column(table: Table, name: str):
    return np.asarray(table[name], float) if name in table.colnames else None


# ------------------------------------------------------------------------------------------- the steps
# Each step is one DM sub-task: it takes what earlier steps made, returns its product, and raises
# ProcessingError naming the visit and what to do. The planes of ``Frame`` are modified in place (4k x 4k
# float32 planes are not copied from step to step).
@dataclass
class Frame:
    """The exposure being processed: its planes (modified in place by the steps) and its constants."""

    where: str  # "visit V detector D", for messages
    image: np.ndarray  # float32, electrons; background-subtracted once subtract_background has run
    variance: np.ndarray  # float32, electrons^2
    mask: np.ndarray  # int32 mask planes
    no_data: np.ndarray  # bool: NO_DATA or BAD pixels
    saturated: np.ndarray  # bool: SAT pixels (saturated and bleed trails)
    saturation_e: float  # saturation level, electrons (inf: none)
    read_noise_e: float
    sigma0_px: float  # first-guess PSF sigma, pixels
    pixel_scale_arcsec: float
    variance_from_image: bool  # the eimage had no variance plane: made from its counts

    def fail(self, reason: str) -> ProcessingError:
        return ProcessingError(f"{self.where}: {reason}")

    @property
    def unusable(self) -> np.ndarray:
        """Pixels no sky estimate may use: saturated, no data, bad."""
        return self.saturated | self.no_data


def check_inputs(exposure: Exposure, config: Config, where: str) -> None:
    """Refuse an eimage the stage cannot process (no visit information, unknown band, no celestial WCS)."""
    if exposure.visit_info is None:
        raise ProcessingError(f"{where}: the eimage has no visit information (VISIT/BAND/MJD-AVG header keywords); "
                              "re-ingest it")
    if exposure.visit_info.band not in REFERENCE_BAND:
        raise ProcessingError(f"{where}: unknown band {exposure.visit_info.band!r}")
    if config.psf.algorithm not in ("pixel", "piff"):
        raise ProcessingError(f"{where}: psf.algorithm={config.psf.algorithm!r}: use pixel or piff")
    if not wcs_is_celestial(exposure.wcs):
        raise ProcessingError(f"{where}: the eimage has no celestial WCS in its header, so it cannot be matched to "
                              "the reference catalog; ingest it with an approximate WCS (CTYPE/CRVAL/CRPIX/CD)")


def prepare_frame(exposure: Exposure, config: Config, where: str, reuse_planes: bool) -> Frame:
    """The planes to process (float32, our own unless ``reuse_planes``): a variance plane from the counts where the
    eimage has none, non-finite pixels masked NO_DATA (and set to 0, their variance to the median), saturated
    pixels and bleed trails masked SAT."""
    raw = np.asarray(exposure.image, np.float32)
    var_in = np.asarray(exposure.variance, np.float32)
    read_noise = _meta_value(exposure, ("read_noise_e", "read_noise", "readnoise", "rdnoise"), 5.0)
    variance_from_image = False
    flat = var_in[::16, ::16]
    if flat.size and np.all(flat == flat.flat[0]) and np.all(var_in == var_in.flat[0]):
        # no variance plane (an ingested image): Poisson noise of the counts (electrons, sky included) plus read
        # noise, in electrons^2
        var_in = (np.clip(raw, 0, None) + read_noise ** 2).astype(np.float32)
        variance_from_image = True
    finite, n_finite = usable_pixels(np.ascontiguousarray(raw), np.ascontiguousarray(var_in))
    if n_finite == 0:
        raise ProcessingError(f"{where}: every pixel is NaN/infinite or has no positive variance; the eimage is "
                              "unusable")
    if n_finite < 0.05 * finite.size:
        raise ProcessingError(f"{where}: only {n_finite / finite.size:.1%} of the pixels are finite; the eimage is "
                              "unusable")
    mask = np.asarray(exposure.mask, np.int32) if reuse_planes else np.array(exposure.mask, np.int32)
    all_finite = n_finite == finite.size
    # float32 throughout: no float64 copies of 4k x 4k planes; image is our own (CR pixels are replaced)
    if all_finite:
        image = raw if reuse_planes else raw.copy()
        variance = var_in if (reuse_planes or variance_from_image) else np.array(var_in, np.float32)
    else:
        set_mask_planes(mask, ~finite, "NO_DATA")
        sample = var_in[::4, ::4][finite[::4, ::4]]
        median_var = float(np.median(sample if len(sample) else var_in[finite]))
        image = np.where(finite, raw, np.float32(0.0))
        variance = np.where(finite, var_in, np.float32(median_var))
    no_data = mask_test(mask, mask_bit("NO_DATA", "BAD"), True)
    info = exposure.visit_info
    pixel_scale = pixel_scale_arcsec(exposure.wcs)
    saturation = config.detection.saturation_e or _meta_value(
        exposure, ("saturation_e", "saturation", "satlevel", "saturate"), np.inf)
    seeing = config.detection.initial_fwhm_arcsec or (info.seeing_arcsec if math.isfinite(info.seeing_arcsec)
                                                      and info.seeing_arcsec > 0 else 0.8)
    sat = saturation_mask(raw, saturation)  # (before the image, perhaps ``raw`` itself, is changed)
    if not all_finite:
        sat &= finite
    set_mask_planes(mask, sat, "SAT")
    return Frame(where, image, variance, mask, no_data, sat, saturation, read_noise,
                 seeing / pixel_scale / SIGMA_TO_FWHM, pixel_scale, variance_from_image)


def subtract_background(frame: Frame, config: BackgroundConfig) -> BackgroundResult:
    """First background (saturated and no-data pixels excluded), subtracted from the frame's image in place."""
    bkg = estimate_background(frame.image, frame.unusable, config.mesh_px, config.filter_size)
    frame.image -= bkg.image
    return bkg


def repair_cosmic_rays(frame: Frame, bkg: BackgroundResult, config: DetectionConfig) -> int:
    """Cosmic rays found (L.A.Cosmic), masked CR and INTRP and interpolated in place; returns their pixel count."""
    if not config.cosmic_rays:
        return 0
    cr = find_cosmic_rays(frame.image, bkg.image, frame.variance, bad_mask=frame.unusable,
                          sigclip=config.cr_sigclip, objlim=config.cr_objlim, niter=config.cr_niter,
                          saturation=frame.saturation_e, read_noise=frame.read_noise_e, overwrite=True)
    frame.image = cr.cleaned  # the frame's image itself (overwrite)
    set_mask_planes(frame.mask, cr.mask, "CR", "INTRP")
    return cr.n_pixels


def detect(frame: Frame, bkg: BackgroundResult, config: Config) -> tuple[BackgroundResult, DetectionResult]:
    """Re-estimate the background with the sources masked (DM's SourceDetectionTask does the same), then detect:
    footprints and peaks (DETECTED), the border where the smoothing kernel runs off the image (EDGE)."""
    dcfg, bcfg = config.detection, config.background
    # first pass, for the background's source mask only: footprints on the 2x2-binned image (4x cheaper)
    src_mask = grow_mask(binned_footprints(frame.image, frame.variance, frame.no_data, frame.sigma0_px,
                                           dcfg.threshold), bcfg.mask_grow_px)
    src_mask |= frame.unusable
    try:
        level, rms = move_residual_background(frame.image, bkg.image, src_mask, bcfg.mesh_px, bcfg.filter_size)
        bkg = BackgroundResult(bkg.image, bkg.level + level, rms)
    except NoUsablePixelsError:
        pass  # everything is covered by sources: keep the first estimate
    del src_mask
    det = detect_sources(frame.image, frame.variance, frame.sigma0_px, dcfg.threshold, ignore=frame.no_data,
                         min_pixels=dcfg.min_pixels, min_prominence=dcfg.min_prominence, grow_sigma=dcfg.grow_sigma,
                         saturated=frame.saturated, wing_contrast=dcfg.wing_contrast,
                         wing_contrast_sigma=dcfg.wing_contrast_sigma)
    set_mask_planes(frame.mask, det.detected, "DETECTED")
    set_border_planes(frame.mask, int(math.ceil(3.0 * frame.sigma0_px)), "EDGE")
    if len(det.sources) == 0:
        raise frame.fail(f"no sources detected above {dcfg.threshold} sigma; the image may be empty or the "
                         "variance plane wrong")
    return bkg, det


@dataclass
class PsfCharacterization:
    """The PSF model and the stars it was made from (indices into the detected sources)."""

    psf: object  # ImageGridPSF or PiffPSF
    info: dict  # the fit's order and median chi^2
    used: np.ndarray  # bool per source: a star the model was fitted to (calib_psf_used)
    candidates: np.ndarray  # bool per source: selected as a PSF star candidate (calib_psf_candidate)
    n_candidates: int
    bright: np.ndarray  # indices of the sources measured with the provisional Gaussian PSF ...
    bright_x: np.ndarray  # ... and their recentred positions, the start of the final measurement
    bright_y: np.ndarray


def characterize_psf(frame: Frame, det: DetectionResult, config: Config) -> PsfCharacterization:
    """PSF stars from the size-magnitude locus of a provisional measurement (Gaussian PSF of the guessed seeing),
    then the PSF model fitted to them (pixel basis, or Piff)."""
    sources, mcfg, pcfg = det.sources, config.measurement, config.psf
    gauss = GaussianPSF(frame.sigma0_px * SIGMA_TO_FWHM)
    # provisional measurement of the sources bright enough to be PSF stars
    b_idx = np.nonzero(sources["significance"] >= 0.5 * pcfg.min_snr)[0]
    first = measure_sources(frame.image, frame.variance, frame.mask, gauss, sources["x"][b_idx],
                            sources["y"][b_idx], config=mcfg, psf_stamps=PsfStamps(gauss, frame.image.shape, n_grid=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr1 = np.asarray(first["psfFlux"]) / np.asarray(first["psfFluxErr"])
    usable = (~np.asarray(first["pixelFlags_saturated"]) & ~np.asarray(first["pixelFlags_cr"])
              & ~np.asarray(first["pixelFlags_edge"]) & ~np.asarray(first["pixelFlags_interpolated"])
              & ~np.asarray(first["centroid_flag"]) & ~np.asarray(first["shape_flag"])
              & (sources["n_child"][b_idx] == 0) & ~np.asarray(first["psfFlux_flag"]))
    first_x, first_y = np.asarray(first["x"]), np.asarray(first["y"])
    selection = select_psf_stars(snr1, first["ixx"], first["iyy"], first["ixy"], usable, min_snr=pcfg.min_snr,
                                 max_stars=pcfg.max_stars, x=first_x, y=first_y)
    n_sel = int(selection.selected.sum())
    if n_sel < pcfg.min_stars:
        raise frame.fail(f"{n_sel} usable PSF stars (S/N >= {pcfg.min_snr}, unsaturated, isolated; need >= "
                         f"{pcfg.min_stars}); the image has no usable stars -- check the exposure, or lower "
                         "--config process_eimage.psf.min_snr")
    psel = np.nonzero(selection.selected)[0]
    good_pix = mask_test(frame.mask, mask_bit("NO_DATA", "BAD", "SAT", "CR"), False)
    own_labels = sources["parent_id"][b_idx[psel]]
    try:
        if pcfg.algorithm == "piff":
            psf, used_sel, psf_info = fit_piff_psf(
                frame.image, frame.variance, good_pix, first_x[psel], first_y[psel],
                stamp_size=pcfg.piff_model_size + 4, model_size=pcfg.piff_model_size, order=pcfg.order,
                min_stars=pcfg.min_stars, outlier_nsigma=pcfg.outlier_nsigma,
                min_stars_per_term=pcfg.min_stars_per_term, footprints=det.footprints, own_labels=own_labels)
        else:
            psf, used_sel, psf_info = fit_pixel_psf(
                frame.image, frame.variance, good_pix, first_x[psel], first_y[psel],
                stamp_size=pcfg.stamp_size, order=pcfg.order, min_stars=pcfg.min_stars,
                outlier_nsigma=pcfg.outlier_nsigma, n_grid=pcfg.n_grid, footprints=det.footprints,
                own_labels=own_labels, min_stars_per_term=pcfg.min_stars_per_term)
    except PsfFitError as exc:
        raise frame.fail(f"PSF model: {exc}; the image has no usable stars") from None
    used = np.zeros(len(sources), bool)
    used[b_idx[psel[used_sel]]] = True
    candidates = np.zeros(len(sources), bool)
    candidates[b_idx[psel]] = True
    return PsfCharacterization(psf, psf_info, used, candidates, n_sel, b_idx, first_x, first_y)


def measure(frame: Frame, det: DetectionResult, psf: PsfCharacterization, bkg: BackgroundResult,
            config: Config) -> tuple[Table, PsfStamps]:
    """Every source measured with the PSF model (:mod:`twinkles.measure`), in electrons; and the PSF stamps."""
    stamps = PsfStamps(psf.psf, frame.image.shape, n_grid=config.measurement.psf_grid,
                       model_size=config.psf.stamp_size)
    x_start, y_start = det.sources["x"].astype(float), det.sources["y"].astype(float)
    x_start[psf.bright], y_start[psf.bright] = psf.bright_x, psf.bright_y
    src = measure_sources(frame.image, frame.variance, frame.mask, psf.psf, x_start, y_start, background=bkg.image,
                          config=config.measurement, psf_stamps=stamps)
    return src, stamps


def correct_apertures(frame: Frame, det: DetectionResult, psf: PsfCharacterization, src: Table,
                      stamps: PsfStamps, config: PsfConfig):
    """The aperture correction (PSF flux -> total flux) from the PSF stars' curves of growth, applied to the PSF
    fluxes of ``src`` in place; returns it."""
    ps_idx = np.nonzero(psf.used)[0]
    annulus = (config.apcorr_r2_px + 2.0, config.apcorr_r2_px + 12.0) if config.apcorr_local_background else None
    big = deblended_aperture_fluxes(frame.image, frame.variance, det.footprints, det.sources["parent_id"][ps_idx],
                                    stamps, np.asarray(src["x"])[ps_idx], np.asarray(src["y"])[ps_idx],
                                    np.asarray(src["psfFlux"])[ps_idx], (config.apcorr_r1_px, config.apcorr_r2_px),
                                    grow_px=config.apcorr_mask_grow_px, annulus=annulus)
    try:
        apcorr = aperture_correction(np.asarray(src["psfFlux"])[psf.used], big[config.apcorr_r1_px][0],
                                     big[config.apcorr_r2_px][0], config.apcorr_r1_px, config.apcorr_r2_px,
                                     ap_flux_r2_err=big[config.apcorr_r2_px][1],
                                     extrapolate=config.apcorr_extrapolate, local_background=big.get("annulus"),
                                     annulus=annulus, estimator=config.apcorr_estimator,
                                     fwhm_px=float(psf.psf.fwhm()) if config.apcorr_tail == "kolmogorov" else None)
    except PhotoCalError as exc:
        raise frame.fail(f"aperture correction: {exc}") from None
    src["psfFlux"] = np.asarray(src["psfFlux"]) * apcorr.factor
    src["psfFluxErr"] = np.asarray(src["psfFluxErr"]) * apcorr.factor
    return apcorr


def signal_to_noise(src: Table) -> np.ndarray:
    """psfFlux / psfFluxErr per source (NaN or inf where the error is 0 or not finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(src["psfFlux"]) / np.asarray(src["psfFluxErr"])


def calibrate_astrometry(frame: Frame, src: Table, ref_cat: Table, header_wcs, band: str,
                         config: AstrometryConfig) -> AstrometryResult:
    """A TAN-SIP WCS fitted to ``ref_cat`` from the header WCS (clean sources with S/N >= min_snr, brightest
    first); refused if its RMS exceeds ``max_rms_mas``."""
    snr = signal_to_noise(src)
    clean = (~np.asarray(src["centroid_flag"]) & ~np.asarray(src["pixelFlags_saturatedCenter"])
             & ~np.asarray(src["pixelFlags_edge"]) & np.isfinite(snr))
    cand = np.nonzero(clean & (snr >= config.min_snr))[0]
    det_order = cand[np.argsort(-snr[cand])]
    ref_band = REFERENCE_BAND[band]
    ref_flux = np.asarray(ref_cat[f"{ref_band}_flux"], float) if f"{ref_band}_flux" in ref_cat.colnames else \
        np.zeros(len(ref_cat))
    ref_order = np.argsort(-np.nan_to_num(ref_flux, nan=-np.inf))
    try:
        astrom = fit_astrometry(np.asarray(src["x"]), np.asarray(src["y"]), det_order,
                                np.asarray(ref_cat["coord_ra"]), np.asarray(ref_cat["coord_dec"]), ref_order,
                                header_wcs, frame.image.shape, max_offset_arcsec=config.max_offset_arcsec,
                                max_rotation_deg=config.max_rotation_deg, match_radius_px=config.match_radius_px,
                                fit_match_radius_arcsec=config.fit_match_radius_arcsec,
                                sip_degree=config.sip_degree, min_matches=config.min_matches, n_iter=config.n_iter,
                                clip_nsigma=config.clip_nsigma, x_err=np.asarray(src["xErr"]),
                                y_err=np.asarray(src["yErr"]), ref_ra_err=_column(ref_cat, "coord_raErr"),
                                ref_dec_err=_column(ref_cat, "coord_decErr"))
    except AstrometryError as exc:
        raise frame.fail(f"astrometry: {exc}") from None
    if not astrom.rms_mas <= config.max_rms_mas:
        raise frame.fail(f"astrometry: fit RMS {astrom.rms_mas:.0f} mas over {astrom.n_matches} matches exceeds "
                         f"astrometry.max_rms_mas={config.max_rms_mas}; refusing to write a wrong WCS")
    return astrom


@dataclass
class PhotometricCalibration:
    zero_point: float  # AB magnitude of one electron
    zero_point_err: float  # includes the aperture correction's error
    photo_calib: PhotoCalib
    colour_term: float
    n_stars: int
    rms_mag: float
    used: np.ndarray  # indices of the sources the zero point was fitted to (calib_photometry_used)


def calibrate_photometry(frame: Frame, src: Table, det: DetectionResult, astrom: AstrometryResult, ref_cat: Table,
                         band: str, apcorr, psf_used: np.ndarray, config: PhotoCalConfig) -> PhotometricCalibration:
    """The zero point from the clean, unblended astrometric matches with S/N >= min_snr (only the PSF stars among
    them with ``psf_stars_only``, ``psf_used`` a bool per source); refused if its scatter exceeds ``max_rms_mag``."""
    snr = signal_to_noise(src)
    ref_mag, ref_mag_err, colour = reference_magnitudes(ref_cat, band, config.colour_transform)
    di, ri = astrom.det_index, astrom.ref_index
    ok = (~np.asarray(src["pixelFlags_saturated"])[di] & ~np.asarray(src["pixelFlags_cr"])[di]
          & (det.sources["n_child"][di] == 0) & ~np.asarray(src["psfFlux_flag"])[di] & (snr[di] >= config.min_snr))
    if config.psf_stars_only and (ok & psf_used[di]).sum() >= config.min_stars:
        # stars whose profile passed the PSF fit: an unresolved neighbour brightens a star by 1-4% and biased the
        # zero point by ~2 mmag when every matched star was used (the reference fluxes are the stars' own)
        ok &= psf_used[di]
    di, ri = di[ok], ri[ok]
    try:
        pcal = fit_zero_point(np.asarray(src["psfFlux"])[di], np.asarray(src["psfFluxErr"])[di], ref_mag[ri],
                              ref_mag_err[ri], colour[ri], colour_term=config.colour_term,
                              fit_colour_term=config.fit_colour_term and REFERENCE_BAND[band] != band,
                              min_stars=config.min_stars, clip_nsigma=config.clip_nsigma)
    except PhotoCalError as exc:
        raise frame.fail(f"photometric calibration: {exc} among {len(astrom.det_index)} astrometric matches") \
            from None
    if not pcal.rms_mag <= config.max_rms_mag:
        raise frame.fail(f"photometric calibration: zero-point scatter {pcal.rms_mag:.3f} mag over {pcal.n_stars} "
                         f"stars exceeds photocal.max_rms_mag={config.max_rms_mag}; refusing to write a wrong zero "
                         "point")
    # the zero point's error includes the aperture correction's (it scales every calibrated flux)
    zp_err = math.hypot(pcal.zero_point_err, 2.5 / math.log(10) * apcorr.factor_err / apcorr.factor)
    return PhotometricCalibration(pcal.zero_point, zp_err, PhotoCalib.from_zero_point(pcal.zero_point, zp_err),
                                  pcal.colour_term, pcal.n_stars, pcal.rms_mag, di[pcal.used])


def source_table(frame: Frame, src: Table, det: DetectionResult, psf: PsfCharacterization,
                 astrom: AstrometryResult, photocal: PhotometricCalibration, apcorr, visit: int, detector: int,
                 band: str, config: MeasurementConfig) -> Table:
    """The Source catalog (Rubin SDM columns), fluxes in nJy."""
    n = len(src)
    try:
        ids = source_id(visit, detector, np.arange(n))
    except ValueError as exc:
        raise frame.fail(f"{exc}; raise detection.threshold") from None
    ra, dec = astrom.wcs.all_pix2world(np.asarray(src["x"]), np.asarray(src["y"]), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c6 = np.nanmedian(np.asarray(src["psfFlux"])[psf.used] / np.asarray(src["apFlux_6_0"])[psf.used])
    ext = extendedness(src["psfFlux"], src["psfFluxErr"], np.asarray(src["apFlux_6_0"]) * c6,
                       np.asarray(src["apFlux_6_0Err"]) * c6, config.extendedness_ratio, config.extendedness_nsigma)
    sources = det.sources
    out = Table()
    out["sourceId"] = ids
    out["visit"] = np.full(n, visit, np.int64)
    out["detector"] = np.full(n, detector, np.int32)
    out["band"] = np.full(n, band)
    out["ra"], out["dec"] = np.asarray(ra, float) % 360.0, np.asarray(dec, float)
    out["ra"].unit = out["dec"].unit = "deg"
    for c in src.colnames:
        out[c] = src[c]
    out["snr"] = signal_to_noise(src)
    out["extendedness"] = ext
    out["footprintId"] = sources["parent_id"].astype(np.int64)  # detection footprint (shared by blends)
    out["deblend_nChild"] = sources["n_child"].astype(np.int32)
    out["blended"] = sources["n_child"] > 0
    out["detect_significance"] = sources["significance"]
    out["calib_psf_candidate"] = psf.candidates
    out["calib_psf_used"] = psf.used
    astrom_used = np.zeros(n, bool)
    astrom_used[astrom.det_index] = True
    out["calib_astrometry_used"] = astrom_used
    photo_used = np.zeros(n, bool)
    photo_used[photocal.used] = True
    out["calib_photometry_used"] = photo_used
    apply_calibration(out, photocal.photo_calib.njy_per_electron)
    for c in ("x", "y", "xErr", "yErr"):
        out[c].unit = "pix"
    for c in ("ixx", "iyy", "ixy", "ixxPSF", "iyyPSF", "ixyPSF"):
        out[c].unit = "pix2"
    # the subtracted background at the source (calexp_background), calibrated as DP1's sky: nJy (per pixel)
    out["sky"] = np.asarray(out["sky"], float) * photocal.photo_calib.njy_per_electron
    out["sky"].unit = "nJy"
    out.meta.update({"visit": visit, "detector": detector, "band": band, "zero_point": photocal.zero_point,
                     "njy_per_electron": photocal.photo_calib.njy_per_electron,
                     "aperture_correction": apcorr.factor})
    return out


def run_metadata(frame: Frame, bkg: BackgroundResult, psf: PsfCharacterization, astrom: AstrometryResult,
                 photocal: PhotometricCalibration, apcorr, n_sources: int, n_cr: int, visit: int, detector: int,
                 band: str) -> dict:
    """process_eimage_metadata: what the run found (a function of the inputs only: no timings)."""
    fwhm_px = float(psf.psf.fwhm())
    cx, cy = (frame.image.shape[1] - 1) / 2.0, (frame.image.shape[0] - 1) / 2.0
    m = moments_from_stamps(psf.psf.kernel_image(cx, cy)[None], None, fwhm_px / SIGMA_TO_FWHM)
    fwhm_mom = float(moments_to_fwhm(m["ixx"], m["iyy"], m["ixy"])[0])
    return {
        "visit": visit, "detector": detector, "band": band,
        "seeing_arcsec": fwhm_px * frame.pixel_scale_arcsec,  # PSF model FWHM at the centre (half-maximum area)
        "psf_fwhm_px": fwhm_px,
        "psf_fwhm_moments_arcsec": fwhm_mom * frame.pixel_scale_arcsec,
        "zero_point": photocal.zero_point, "zero_point_err": photocal.zero_point_err,
        "njy_per_electron": photocal.photo_calib.njy_per_electron, "colour_term": photocal.colour_term,
        "photocal_n_stars": photocal.n_stars, "photocal_rms_mag": photocal.rms_mag,
        "sky_level_e": bkg.level, "sky_rms_e": bkg.global_rms,
        "n_psf_stars": int(psf.used.sum()), "n_psf_candidates": int(psf.n_candidates),
        "psf_order": int(psf.info["order"]), "psf_median_chi2": psf.info["median_chi2"],
        "aperture_correction": apcorr.factor, "aperture_correction_tail": apcorr.tail_fraction,
        "astrom_rms_mas": astrom.rms_mas, "astrom_median_offset_mas": astrom.median_offset_mas,
        "astrom_n_matches": astrom.n_matches, "astrom_sip_degree": astrom.sip_degree,
        "astrom_initial_shift_px": list(astrom.initial_shift_px),
        "astrom_initial_rotation_deg": astrom.initial_rotation_deg,
        "n_sources": int(n_sources), "n_cr_pixels": int(n_cr), "n_saturated_pixels": int(frame.saturated.sum()),
        "n_no_data_pixels": int(frame.no_data.sum()), "variance_from_image": frame.variance_from_image,
    }


# ------------------------------------------------------------------------------------------- run
def run(exposure: Exposure, ref_cat: Table, config: Config | None = None, data_id: dict | None = None,
        reuse_planes: bool = False) -> Result:
    """Process one e-image (electrons, with sky) into a calexp, its background, a Source table and metadata.

    DM's characterizeImage (background, cosmic rays, detection, PSF, aperture correction) then calibrate
    (measurement, astrometry, photometric calibration), one function per step. With ``reuse_planes`` the
    eimage's image, mask and variance arrays become the calexp's and are modified in place (for a caller that
    read the eimage for this call only: three 4k x 4k copies fewer); by default the exposure is left as it was.
    """
    config = config or Config()
    timer = StepTimer()
    info = exposure.visit_info
    visit = int((data_id or {}).get("visit", info.visit if info else -1))
    detector = int((data_id or {}).get("detector", info.detector if info else 0))
    where = f"visit {visit} detector {detector}"  # for the messages
    with timer("setup"):
        check_inputs(exposure, config, where)
        frame = prepare_frame(exposure, config, where, reuse_planes)
    with timer("background1"):
        bkg = subtract_background(frame, config.background)
    with timer("cosmic_rays"):
        n_cr = repair_cosmic_rays(frame, bkg, config.detection)
    with timer("detection"):
        bkg, det = detect(frame, bkg, config)
    with timer("psf"):
        psf = characterize_psf(frame, det, config)
    with timer("measurement"):
        src, stamps = measure(frame, det, psf, bkg, config)
    with timer("aperture_correction"):
        apcorr = correct_apertures(frame, det, psf, src, stamps, config.psf)
    with timer("astrometry"):
        astrom = calibrate_astrometry(frame, src, ref_cat, exposure.wcs, info.band, config.astrometry)
    with timer("photocal"):
        photocal = calibrate_photometry(frame, src, det, astrom, ref_cat, info.band, apcorr, psf.used,
                                        config.photocal)
    with timer("tables"):
        table = source_table(frame, src, det, psf, astrom, photocal, apcorr, visit, detector, info.band,
                             config.measurement)
        meta = run_metadata(frame, bkg, psf, astrom, photocal, apcorr, len(src), n_cr, visit, detector, info.band)
    calexp_meta = {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}
    calexp = Exposure(frame.image, frame.mask, frame.variance, astrom.wcs, psf.psf, photocal.photo_calib, info,
                      calexp_meta)
    return Result(calexp, bkg.image, table, meta, timer.timings())


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the eimage and the reference catalog, run, write calexp, calexp_background, src and metadata."""
    exposure = butler.get("eimage", data_id)
    ref_cat = butler.get("ref_cat", {})
    result = run(exposure, ref_cat, config, data_id, reuse_planes=True)
    did = {"visit": data_id["visit"], "detector": data_id.get("detector", 0)}
    butler.put(result.calexp, "calexp", did)
    # the background as a model (its mesh and sep's interpolation), checked against the subtracted image
    sky_rms = result.metadata.get("sky_rms_e")
    tolerance = 1e-3 * sky_rms if sky_rms and math.isfinite(sky_rms) and sky_rms > 0 else None
    butler.put(fit_background_model(result.background, config.background.mesh_px, tolerance), "calexp_background",
               did)
    butler.put(result.src, "src", did)
    butler.put(result.metadata, "process_eimage_metadata", did)
    # the timings go to the job's record, not into the dataset: a re-run must write identical files
    log.info("visit %s detector %s timings (s): %s", did["visit"], did["detector"],
             json.dumps({k: round(v, 3) for k, v in result.timings.items()}))
    return dict(result.metadata, timings_s={k: v for k, v in result.timings.items() if k != "cpu_s"},
                cpu_s=result.timings.get("cpu_s"))
