"""imageDifference / subtractImages: the template subtracted from one calexp, and the DIASources found on it.

The DM stack's AP pipeline steps ``GetTemplateTask`` (ip_diffim ``getTemplate``: the goodSeeingCoadd of every
patch overlapping the visit, resampled onto its frame), ``AlardLuptonSubtractTask`` (ip_diffim
``subtractImages``, formerly pipe_tasks ``imageDifference``: PSF matching with the Alard-Lupton kernel, subtraction,
decorrelation by ``DecorrelateALKernelTask``) and ``DetectAndMeasureDiaSourcesTask`` (ip_diffim
``detectAndMeasure``). One job per (visit, detector):

1. ``get_template``: each overlapping patch's template warped onto the calexp's pixel grid with
   :func:`twinkles.algorithms.resample.warp_exposure` (Lanczos-3, the warp stage's code), filled patch by patch;
   its PSF the template's CoaddPsf transformed to the visit's frame. A visit the templates cover less than
   ``min_template_coverage`` of fails (ProcessingError).
2. ``match_psfs``: the science image in nJy; the sharper of the two images is convolved to match the other
   (DM ``mode="auto"``: convolveTemplate where the template is sharper, as it is meant to be, else
   convolveScience), with the Alard-Lupton kernel fitted on stamps around bright, isolated, unsaturated sources
   spread over the detector (:mod:`twinkles.algorithms.alard_lupton`), and a differential background.
3. ``subtract``: ``difference = science - K * template - B`` (or ``K * science + B - template``), variance
   ``var_sci + K^2 * var_tmpl`` (or the reverse).
4. ``decorrelate``: the difference's noise whitened (:mod:`twinkles.algorithms.decorrelation`), variance plane
   ``var_T + (sum K)^2 var_R`` per pixel, the difference's PSF ``phi * PSF`` of the unconvolved image.
5. ``detect_dia_sources``: positive and negative sources above ``threshold`` sigma of the PSF-matched filter on
   the difference (:func:`twinkles.algorithms.detection.detect_sources` on it and on its negative).
6. ``measure_dia_sources``: :func:`twinkles.measure.measure_sources` on the difference (centroid, PSF flux,
   apertures, shape, pixel flags), the science image's PSF flux at the same place (``scienceFlux``), a dipole
   flag (a positive and a negative source within ``dipole_radius_fwhm`` FWHM of comparable flux), the
   ``diaSourceTable`` with DP1 column names, fluxes in nJy (plus ``isNegative`` and ``nearSaturated``: within
   ``near_saturated_fwhm`` FWHM of a saturated pixel, where a bright star's residuals make false sources).

Not done here: pre-convolution of the science image when the template is broader (DM's
``preconvolve``), ZOGY, a dipole model fit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from scipy import ndimage, signal

from ..algorithms.alard_lupton import AlardLuptonConfig, MatchingError, convolve_variance, fit_kernel
from ..algorithms.decorrelation import decorrelate, decorrelation_kernel
from ..algorithms.detection import detect_sources
from ..algorithms.resample import warp_exposure
from ..algorithms.skymap import SkyMap
from ..image import Exposure, PhotoCalib, mask_bit, wcs_is_celestial
from ..measure import MeasurementConfig, forced_psf_flux, measure_sources
from ..psf import SIGMA_TO_FWHM, ImageGridPSF
from . import ProcessingError

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "get_template",
           "DIA_COLUMNS"]

log = logging.getLogger(__name__)

QUANTUM = ("visit", "detector")
INPUTS = ["calexp", "goodSeeingCoadd", "skyMap"]
OUTPUTS = ["differenceExp", "diaSourceTable"]

DIA_COLUMNS = ["diaSourceId", "diaObjectId", "visit", "detector", "band", "midpointMjdTai", "ra", "dec", "raErr",
               "decErr", "x", "y", "xErr", "yErr", "psfFlux", "psfFluxErr", "psfFlux_flag", "apFlux", "apFluxErr",
               "apFlux_flag", "scienceFlux", "scienceFluxErr", "snr", "isNegative", "isDipole", "ixx", "iyy",
               "ixy", "shape_flag", "centroid_flag", "nearSaturated"]


@dataclass
class Config:
    min_template_coverage: float = 0.5  # fraction of the calexp the templates must cover, else the job fails
    kernel: AlardLuptonConfig = field(default_factory=AlardLuptonConfig)
    stamp_min_snr: float = 20.0  # kernel stamps: sources of at least this detection S/N (DM minSnr ~ 10-ish)
    stamp_cells: int = 4  # spread over stamp_cells x stamp_cells cells of the detector
    stamp_bad_planes: list = field(default_factory=lambda: ["NO_DATA", "SAT", "BAD", "CR", "INTRP", "EDGE"])
    decorrelate: bool = True  # DM doDecorrelation True
    template_noise_correlation: bool = True  # scale the template's variance for its two Lanczos resamplings
    threshold: float = 5.0  # DIASource detection, sigma (DM detection.thresholdValue 5.0)
    detect_ignore_planes: list = field(default_factory=lambda: ["NO_DATA", "SAT", "BAD"])
    dipole_radius_fwhm: float = 1.5  # positive and negative peaks this close (FWHMs) make a dipole
    ap_radius_px: float = 12.0  # apFlux aperture radius, px (DP1: 12 px)
    near_saturated_fwhm: float = 3.0  # nearSaturated: within this many FWHM of a SAT pixel (residual wings)


@dataclass
class Result:
    difference: Exposure
    dia_sources: Table
    metadata: dict
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- steps
def get_template(calexp: Exposure, templates: dict[int, Exposure], border: int = 0) -> Exposure | None:
    """The patches' templates warped onto the calexp's frame grown by ``border`` pixels on every side (so the
    matching kernel has template pixels beyond the calexp's edges, as DM's GetTemplateTask grows its bbox) and
    merged (first patch with data wins). Pixel (0, 0) of the result is calexp pixel (-border, -border); its PSF
    is given in calexp pixel coordinates."""
    merged = None
    ny, nx = calexp.shape
    wcs = calexp.wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix + border  # SIP is relative to CRPIX: an exact shift of the grid
    shape = (ny + 2 * border, nx + 2 * border)
    cx, cy = int(round((nx - 1) / 2.0)) + border, int(round((ny - 1) / 2.0)) + border
    psf = None
    for patch, tmpl in sorted(templates.items()):
        w = warp_exposure(tmpl, wcs, shape, to_njy=True)
        if w.metadata.get("n_good_pixels", 0) == 0:
            continue
        ok = np.isfinite(w.image) & ((w.mask & mask_bit("NO_DATA")) == 0)
        if merged is None:
            merged = w
            merged.metadata = {"template_patches": str(patch),
                               "psf_flux_noise_factor": float(tmpl.metadata.get("psf_flux_noise_factor", 1.0))}
        else:
            fill = ok & ~np.isfinite(merged.image)
            merged.image[fill] = w.image[fill]
            merged.variance[fill] = w.variance[fill]
            merged.mask[fill] = w.mask[fill]
            merged.metadata["template_patches"] += f" {patch}"
        if (psf is None or not psf[0]) and w.psf is not None:
            psf = (bool(ok[cy, cx]), w.psf)  # the PSF of the patch covering the centre, else the first
    if merged is not None and psf is not None:
        g = psf[1]
        merged.psf = ImageGridPSF(g.images, g.xs - border, g.ys - border)
    return merged


def _template_noise_factor(tmpl: Exposure, config: Config) -> float:
    """The white-noise equivalent of the warped template's variance plane, as a factor on its sigma.

    The template was resampled twice (visits onto the patch, the coadd onto the visit): its pixels' variance is
    right, but neighbours are correlated, so the noise of sums over a PSF (fluxes, the decorrelation's low
    frequencies) is larger by the coadd's ``psf_flux_noise_factor`` times that of the second warp
    (:func:`twinkles.algorithms.coadd.resampling_noise_factor`).
    """
    if not config.template_noise_correlation:
        return 1.0
    from ..algorithms.coadd import resampling_noise_factor
    cx, cy = (tmpl.width - 1) / 2.0, (tmpl.height - 1) / 2.0
    f_coadd = float(tmpl.metadata.get("psf_flux_noise_factor", 1.0))
    return f_coadd * resampling_noise_factor(tmpl.psf.kernel_image(cx, cy))


def _stamp_positions(science, variance, good, fwhm, config: Config, shape):
    """Bright, isolated, unsaturated sources spread over the detector, brightest first within each cell."""
    sigma = fwhm / SIGMA_TO_FWHM
    det = detect_sources(np.where(good, science, 0.0), np.where(good, variance, np.inf), sigma,
                         threshold=config.stamp_min_snr, ignore=~good)
    s = det.sources
    if len(s) == 0:
        return np.zeros((0, 2))
    # isolated: one peak per footprint, no other detection within the kernel's reach
    single = s["n_child"] <= 1
    xy = np.column_stack([s["x"], s["y"]])
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    iso = d.min(axis=1) > 4 * fwhm if len(s) > 1 else np.ones(len(s), bool)
    keep = single & iso
    s, xy = s[keep], xy[keep]
    ny, nx = shape
    n = config.stamp_cells
    cell = (np.clip((xy[:, 1] / ny * n).astype(int), 0, n - 1) * n + np.clip((xy[:, 0] / nx * n).astype(int), 0, n - 1))
    order = np.argsort(-s["significance"])
    rank = np.zeros(len(s), int)
    seen: dict[int, int] = {}
    for i in order:
        rank[i] = seen.get(cell[i], 0)
        seen[cell[i]] = rank[i] + 1
    final = np.lexsort((-s["significance"], rank))
    return xy[final]


def _difference_psf(psf, phi: np.ndarray | None, shape, n_grid: int = 3) -> ImageGridPSF:
    ny, nx = shape
    xs = np.linspace(0, nx - 1, n_grid)
    ys = np.linspace(0, ny - 1, n_grid)
    st = []
    for y in ys:
        row = []
        for x in xs:
            k = psf.kernel_image(float(x), float(y))
            if phi is not None:
                k = signal.fftconvolve(k, phi, mode="same")
            row.append(k / k.sum())
        st.append(row)
    return ImageGridPSF(np.array(st), xs, ys)


def run(calexp: Exposure, templates: dict[int, Exposure], config: Config | None = None,
        data_id: dict | None = None) -> Result:
    """Subtract the template from one calexp, decorrelate, detect and measure DIASources."""
    config = config or Config()
    timings = {}
    info = calexp.visit_info
    visit = int((data_id or {}).get("visit", info.visit if info else -1))
    detector = int((data_id or {}).get("detector", info.detector if info else 0))
    where = f"visit {visit} detector {detector}"
    if not wcs_is_celestial(calexp.wcs) or calexp.psf is None or calexp.photo_calib is None:
        raise ProcessingError(f"{where}: the calexp lacks a WCS, PSF or calibration; re-run process_eimage")
    # 1. template
    t0 = time.perf_counter()
    if not templates:
        raise ProcessingError(f"{where}: no goodSeeingCoadd of band {info.band} overlaps this visit; run "
                              "make_template on the patches it covers (twinkles stage make_template)")
    b = config.kernel.kernel_size_max // 2  # the widest kernel's reach
    tmpl = get_template(calexp, templates, border=b)
    inner = (slice(b, b + calexp.height), slice(b, b + calexp.width))
    coverage = 0.0 if tmpl is None else float(np.mean(np.isfinite(tmpl.image[inner])))
    if tmpl is None or coverage < config.min_template_coverage:
        raise ProcessingError(f"{where}: the templates (patches {sorted(templates)}) cover {coverage:.0%} of the "
                              f"visit, less than min_template_coverage={config.min_template_coverage:.0%}; make "
                              "templates for the patches this visit covers, or lower "
                              "--config image_difference.min_template_coverage")
    timings["get_template"] = time.perf_counter() - t0
    # 2. PSF matching (on the grown grid: the science padded with NO_DATA)
    t0 = time.perf_counter()
    njy = float(calexp.photo_calib.njy_per_electron)
    sci = np.pad(calexp.image.astype(np.float64) * njy, b, constant_values=np.nan)
    var_sci = np.pad(calexp.variance.astype(np.float64) * njy * njy, b, constant_values=np.nan)
    cmask = np.pad(calexp.mask, b, constant_values=mask_bit("NO_DATA"))
    tim = tmpl.image.astype(np.float64)
    noise_factor = _template_noise_factor(tmpl, config)
    var_t = tmpl.variance.astype(np.float64) * noise_factor ** 2
    bad_bits = mask_bit(*config.stamp_bad_planes)
    ok_sci = np.isfinite(sci) & np.isfinite(var_sci) & (np.nan_to_num(var_sci) > 0)
    ok_tmpl = np.isfinite(tim) & np.isfinite(var_t)
    finite = ok_sci & ok_tmpl
    good = finite & ((cmask & bad_bits) == 0) & ((tmpl.mask & bad_bits) == 0)
    cx, cy = (calexp.width - 1) / 2.0, (calexp.height - 1) / 2.0
    f_sci = float(calexp.psf.fwhm(cx, cy))
    f_tmpl = float(tmpl.psf.fwhm(cx, cy))
    convolve_template = f_tmpl <= f_sci
    ref, var_ref, tgt, var_tgt = (tim, var_t, sci, var_sci) if convolve_template else (sci, var_sci, tim, var_t)
    ok_ref, ok_tgt = (ok_tmpl, ok_sci) if convolve_template else (ok_sci, ok_tmpl)
    f_ref, f_tgt = (f_tmpl, f_sci) if convolve_template else (f_sci, f_tmpl)
    positions = _stamp_positions(np.where(finite, sci, 0.0), np.where(finite, var_sci + var_t, np.inf), good,
                                 f_sci, config, sci.shape)
    try:
        sol, cb = fit_kernel(np.where(ok_ref, ref, 0.0), np.where(finite, tgt, 0.0),
                             np.where(finite, var_sci + var_t, 1.0), good, positions, f_ref, f_tgt, config.kernel)
    except MatchingError as exc:
        raise ProcessingError(f"{where}: the PSF-matching kernel fit failed: {exc}") from None
    timings["match_psfs"] = time.perf_counter() - t0
    # 3. subtraction
    t0 = time.perf_counter()
    matched = sol.convolve(np.where(ok_ref, ref, 0.0), cb) + sol.background()
    kc = sol.kernel(cx + b, cy + b)
    var_matched = convolve_variance(np.where(ok_ref, var_ref, 0.0), kc)
    h = sol.size // 2
    # valid: the kernel's footprint all on reference pixels, and a target pixel
    valid = ndimage.binary_erosion(ok_ref, structure=np.ones((2 * h + 1, 2 * h + 1), bool), border_value=0) & ok_tgt
    if convolve_template:
        diff, var = sci - matched, var_sci + var_matched
    else:
        diff, var = matched - tim, var_matched + var_t
    timings["subtract"] = time.perf_counter() - t0
    # 4. decorrelation
    t0 = time.perf_counter()
    phi = None
    ksum = float(kc.sum())
    if config.decorrelate:
        s_t = float(np.median(var_tgt[valid]))
        s_r = float(np.median(var_ref[valid]))
        phi = decorrelation_kernel(kc, s_t, s_r, size=kc.shape[0])
        diff = decorrelate(diff, phi, valid)
        var = var_tgt + var_ref * ksum ** 2
        hp = phi.shape[0] // 2
        valid = ndimage.binary_erosion(valid, structure=np.ones((2 * hp + 1, 2 * hp + 1), bool), border_value=0)
    diff, var, valid = diff[inner], var[inner], valid[inner]
    psf_unconvolved = calexp.psf if convolve_template else tmpl.psf
    dpsf = _difference_psf(psf_unconvolved, phi, calexp.shape)
    mask = (calexp.mask | tmpl.mask[inner]).astype(np.int32)
    mask[~valid] |= np.int32(mask_bit("NO_DATA"))
    diff = np.where(valid, diff, np.nan).astype(np.float32)
    var = np.where(valid, var, np.nan).astype(np.float32)
    sci, var_sci = sci[inner], var_sci[inner]
    timings["decorrelate"] = time.perf_counter() - t0
    meta = {"visit": visit, "detector": detector, "band": info.band, "template_coverage": coverage,
            "template_patches": tmpl.metadata.get("template_patches", ""), "template_noise_factor": noise_factor,
            "convolved": "template" if convolve_template else "science", "kernel_size_px": sol.size,
            "kernel_sum": ksum, "n_kernel_stamps": sol.n_stamps, "n_kernel_stamps_rejected": sol.n_rejected,
            "kernel_chi2_per_pixel": sol.chi2_per_pixel, "science_psf_fwhm_px": f_sci,
            "template_psf_fwhm_px": f_tmpl, "psf_fwhm_px": float(dpsf.fwhm(cx, cy)), "decorrelated": bool(phi is not None)}
    difference = Exposure(diff, mask, var, calexp.wcs, dpsf, PhotoCalib(1.0), info, dict(meta))
    # 5./6. DIASources
    t0 = time.perf_counter()
    table = dia_sources(difference, sci, var_sci, calexp, config, visit, detector)
    timings["detect_and_measure"] = time.perf_counter() - t0
    meta["n_dia_sources"] = len(table)
    meta["n_dipoles"] = int(np.sum(table["isDipole"])) if len(table) else 0
    return Result(difference, table, meta, timings)


def dia_sources(diff: Exposure, sci_njy, var_sci_njy, calexp: Exposure, config: Config, visit: int,
                detector: int) -> Table:
    """Detect (both signs) and measure DIASources on the difference; the diaSourceTable."""
    fwhm = float(diff.psf.fwhm())
    sigma = fwhm / SIGMA_TO_FWHM
    ignore = ((diff.mask & mask_bit(*config.detect_ignore_planes)) != 0) | ~np.isfinite(diff.image)
    img = np.where(ignore, 0.0, diff.image).astype(np.float32)
    var = np.where(ignore, np.inf, diff.variance).astype(np.float32)
    xs, ys, neg = [], [], []
    for sign in (1.0, -1.0):
        det = detect_sources(sign * img, var, sigma, threshold=config.threshold, ignore=ignore,
                             wing_contrast=False)
        xs.append(det.sources["x"])
        ys.append(det.sources["y"])
        neg.append(np.full(len(det.sources), sign < 0))
    x, y, negative = np.concatenate(xs), np.concatenate(ys), np.concatenate(neg)
    n = len(x)
    t = Table()
    mcfg = MeasurementConfig(aperture_radii=(config.ap_radius_px,))
    var_m = np.where(ignore, 0.0, diff.variance).astype(np.float32)
    if n:
        m = measure_sources(img, var_m, diff.mask, diff.psf, x, y, config=mcfg)
    ids = (np.int64(visit) * 1000 + detector) * 100000 + np.arange(n, dtype=np.int64)
    t["diaSourceId"] = ids
    t["diaObjectId"] = np.zeros(n, np.int64)
    t["visit"] = np.full(n, visit, np.int64)
    t["detector"] = np.full(n, detector, np.int64)
    t["band"] = np.full(n, diff.visit_info.band, "U1")
    t["midpointMjdTai"] = np.full(n, diff.visit_info.mjd_tai)
    if not n:
        for c in DIA_COLUMNS[6:]:
            t[c] = np.zeros(0, bool if c in ("psfFlux_flag", "apFlux_flag", "isNegative", "isDipole",
                                            "shape_flag", "centroid_flag", "nearSaturated") else float)
        return _with_units(t)
    mx, my = np.asarray(m["x"], float), np.asarray(m["y"], float)
    ra, dec = calexp.wcs.all_pix2world(mx, my, 0)
    scale = math.sqrt(abs(np.linalg.det(calexp.wcs.pixel_scale_matrix)))  # deg per px
    t["ra"], t["dec"] = ra, dec
    t["raErr"] = np.asarray(m["xErr"], float) * scale
    t["decErr"] = np.asarray(m["yErr"], float) * scale
    t["x"], t["y"], t["xErr"], t["yErr"] = mx, my, m["xErr"], m["yErr"]
    t["psfFlux"], t["psfFluxErr"], t["psfFlux_flag"] = m["psfFlux"], m["psfFluxErr"], m["psfFlux_flag"]
    from ..measure.photometry import aperture_column
    ac = aperture_column(config.ap_radius_px)
    t["apFlux"], t["apFluxErr"], t["apFlux_flag"] = m[ac], m[ac + "Err"], m[ac + "_flag"]
    sf, se, _ = forced_psf_flux(np.nan_to_num(sci_njy).astype(np.float32),
                                np.nan_to_num(var_sci_njy).astype(np.float32), calexp.mask, calexp.psf, mx, my)
    t["scienceFlux"], t["scienceFluxErr"] = sf, se
    with np.errstate(divide="ignore", invalid="ignore"):
        t["snr"] = np.abs(np.asarray(m["psfFlux"], float)) / np.asarray(m["psfFluxErr"], float)
    t["isNegative"] = negative
    t["isDipole"] = _dipoles(mx, my, np.asarray(m["psfFlux"], float), negative, config.dipole_radius_fwhm * fwhm)
    # second moments on the sky, arcsec^2 (DP1): I_sky = J I_pix J^T with J the WCS's local linear map
    jac = np.asarray(calexp.wcs.pixel_scale_matrix, float) * 3600.0
    ixx, iyy, ixy = (np.asarray(m[c], float) for c in ("ixx", "iyy", "ixy"))
    t["ixx"] = jac[0, 0] ** 2 * ixx + 2 * jac[0, 0] * jac[0, 1] * ixy + jac[0, 1] ** 2 * iyy
    t["iyy"] = jac[1, 0] ** 2 * ixx + 2 * jac[1, 0] * jac[1, 1] * ixy + jac[1, 1] ** 2 * iyy
    t["ixy"] = (jac[0, 0] * jac[1, 0] * ixx + (jac[0, 0] * jac[1, 1] + jac[0, 1] * jac[1, 0]) * ixy
                + jac[0, 1] * jac[1, 1] * iyy)
    for c in ("shape_flag", "centroid_flag"):
        t[c] = m[c]
    for c in m.colnames:
        if c.startswith("pixelFlags_"):
            t[c] = m[c]
    # near a saturated star: its subtraction residuals (wings, bleed ends) are not to be trusted
    sat = (diff.mask & mask_bit("SAT")) != 0
    if sat.any():
        dist = ndimage.distance_transform_edt(~sat)
        xi = np.clip(np.rint(mx).astype(int), 0, diff.width - 1)
        yi = np.clip(np.rint(my).astype(int), 0, diff.height - 1)
        t["nearSaturated"] = dist[yi, xi] <= config.near_saturated_fwhm * fwhm
    else:
        t["nearSaturated"] = np.zeros(n, bool)
    return _with_units(t)


#: units of the diaSourceTable's columns (DP1's)
DIA_UNITS = {**dict.fromkeys(("psfFlux", "psfFluxErr", "apFlux", "apFluxErr", "scienceFlux", "scienceFluxErr"),
                             "nJy"),
             **dict.fromkeys(("ra", "dec", "raErr", "decErr"), "deg"),
             **dict.fromkeys(("x", "y", "xErr", "yErr"), "pix"),
             **dict.fromkeys(("ixx", "iyy", "ixy"), "arcsec2"), "midpointMjdTai": "d"}


def _with_units(t: Table) -> Table:
    for c, unit in DIA_UNITS.items():
        if c in t.colnames:
            t[c].unit = unit
    return t


def _dipoles(x, y, flux, negative, radius):
    """Positive and negative sources within ``radius`` px of each other with |fluxes| within a factor 3."""
    out = np.zeros(len(x), bool)
    pos, neg = np.nonzero(~negative)[0], np.nonzero(negative)[0]
    if not len(pos) or not len(neg):
        return out
    d = np.hypot(x[pos, None] - x[None, neg], y[pos, None] - y[None, neg])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(flux[pos, None] / flux[None, neg])
    pair = (d < radius) & (ratio > 1 / 3) & (ratio < 3)
    out[pos[pair.any(axis=1)]] = True
    out[neg[pair.any(axis=0)]] = True
    return out


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the calexp and every overlapping patch's template of its band; write differenceExp, diaSourceTable."""
    did = {"visit": data_id["visit"], "detector": data_id.get("detector", 0)}
    calexp = butler.get("calexp", did)
    sky = SkyMap.from_dict(butler.get("skyMap", {}))
    band = calexp.visit_info.band
    templates = {}
    for patch in sky.patches_overlapping(calexp.wcs, calexp.shape):
        tid = {"tract": sky.tract, "patch": patch, "band": band}
        if butler.exists("goodSeeingCoadd", tid):
            templates[patch] = butler.get("goodSeeingCoadd", tid)
    result = run(calexp, templates, config, did)
    butler.put(result.difference, "differenceExp", did)
    butler.put(result.dia_sources, "diaSourceTable", did)
    return dict(result.metadata, timings_s=result.timings)
