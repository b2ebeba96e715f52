"""forcedPhotCcd: PSF photometry of every Object on every calexp, neighbours fitted simultaneously.

The DM stack's ``ForcedPhotCcdTask`` (meas_base ``forcedPhotCcd``; the ``forcedPhotObjectDetector`` step of the
DRP pipeline, writing ``forcedSourceTable``). Per (visit, detector):

1. objects: every objectTable of the sky map's patches overlapping the calexp, primary Objects only
   (``detect_isPrimary``), their (coord_ra, coord_dec) through the calexp's WCS; those whose position falls on
   the calexp (inside the pixel grid) are measured -- each gets a row, whatever happens to it;
2. fit: PSF fluxes at those fixed positions with the calexp's PSF (normalised over its 31-pixel model stamp as
   process_eimage's; fitted over a stamp of +-2.5 FWHM, stamps from a table of sub-pixel shifts: ``PhaseTable``),
   all Objects whose PSFs overlap fitted together
   (:func:`twinkles.algorithms.forced_photometry.forced_psf_fluxes`: the linear least squares of each connected
   group, errors from the variance plane through the group's covariance). DM's forcedPhotCcd fits each source
   alone and warns that its fluxes may be contaminated by neighbours; here they are not;
3. flags: ``psfFlux_flag`` where the fit failed, no usable pixel was left, or more than ``max_masked_frac`` of the
   PSF weight is on masked or off-image pixels; ``psfFlux_flag_edge`` where the fit stamp runs off the calexp;
   ``pixelFlags_*`` from the mask plane (:func:`twinkles.measure.flags.pixel_flags`);
4. calibration: times the calexp's aperture correction (the PSF model holds the light within its 31-pixel
   stamp, as process_eimage's PSF fluxes, which the PhotoCalib was fitted to), counts to nJy with the calexp's
   PhotoCalib; the forcedSourceTable.

The stage never reads truth; objectTable comes from merge_measurements (in ``twinkles run`` every forced_phot_ccd
job waits for all merge_measurements jobs: their quanta share no dimension). Patches whose objectTable is absent
are listed in the job's metadata (``patches_without_objectTable``); a calexp none of whose patches has one gets no
forcedSourceTable (its metadata says why) instead of failing the visit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table, vstack

from ..algorithms.forced_photometry import PhaseTable, forced_psf_fluxes
from ..algorithms.skymap import SkyMap
from ..image import Exposure, mask_bit, wcs_is_celestial
from ..measure.flags import pixel_flags
from ..stamps import PsfStamps
from . import ProcessingError
from .timing import StepTimer

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "select_objects",
           "COLUMNS", "OBJECT_COLUMNS", "fit_stamp_size"]

log = logging.getLogger(__name__)

QUANTUM = ("visit", "detector")
INPUTS = ["calexp", "objectTable", "skyMap"]
OUTPUTS = ["forcedSourceTable"]

#: the columns of objectTable this stage reads
OBJECT_COLUMNS = ["objectId", "coord_ra", "coord_dec", "detect_isPrimary"]
#: forcedSourceTable columns (pixelFlags_* as measure.flags.pixel_flags makes them follow)
COLUMNS = ["forcedSourceId", "objectId", "visit", "detector", "band", "midpointMjdTai", "coord_ra", "coord_dec",
           "x", "y", "psfFlux", "psfFluxErr", "psfFlux_flag", "psfFlux_flag_edge", "psfFlux_flag_noGoodPixels",
           "forced_groupSize"]


@dataclass
class Config:
    bad_mask_planes: list = field(default_factory=lambda: ["NO_DATA", "BAD", "SAT"])  # zero weight in the fit
    # (DM forcedPhotCcd's PsfFlux uses all pixels and flags; CR pixels are interpolated by process_eimage)
    psf_model_size: int = 31  # PSF model stamp, pixels: fluxes are of the light inside it, as process_eimage's
    # (its psf.stamp_size), so that the calexp's aperture correction applies
    fit_size: int = 0  # fit stamp side, pixels (0: 2 ceil(fit_radius_fwhm FWHM) + 1, at most the model stamp)
    fit_radius_fwhm: float = 2.5  # half-side of the automatic fit stamp, in PSF FWHMs (P^2 outside: negligible)
    n_phase: int = 8  # PSF stamps from a table of n_phase + 1 sub-pixel shifts per axis, interpolated (0: a
    # Fourier shift per source)
    apply_aperture_correction: bool = True  # times the calexp's aperture_correction (DM applyApCorr)
    psf_grid: int = 5  # PSF model sampled on psf_grid x psf_grid positions, interpolated between
    coupling_tolerance: float = 0.05  # link two Objects where ignoring one biases the other by > this x its error
    min_overlap: float = 0.02  # ... or where their PSFs overlap by more than this (normalised sum P_i P_j)
    max_masked_frac: float = 0.2  # psfFlux_flag where more of the PSF weight (sum P^2) is masked / off the image
    max_dense: int = 256  # groups up to this size: dense solve; larger: sparse LU
    primary_only: bool = True  # keep detect_isPrimary Objects only (DM: the same)


@dataclass
class Result:
    table: Table
    metadata: dict
    timings: dict


def fit_stamp_size(fwhm_px: float, config: Config) -> int:
    """The fit stamp's side (odd, pixels): ``config.fit_size`` or 2 ceil(fit_radius_fwhm FWHM) + 1, at most the
    PSF model stamp."""
    size = config.fit_size or 2 * int(np.ceil(config.fit_radius_fwhm * fwhm_px)) + 1
    size += 1 - size % 2
    return int(min(size, config.psf_model_size))


def select_objects(objects: Table, wcs, shape, primary_only: bool = True) -> tuple[Table, np.ndarray, np.ndarray]:
    """The (primary) Objects whose position lies on an image of ``shape`` with ``wcs``: (objects, x, y)."""
    if primary_only and "detect_isPrimary" in objects.colnames:
        objects = objects[np.asarray(objects["detect_isPrimary"], bool)]
    if len(objects) == 0:
        return objects, np.empty(0), np.empty(0)
    x, y = wcs.all_world2pix(np.asarray(objects["coord_ra"], float), np.asarray(objects["coord_dec"], float), 0)
    ny, nx = shape
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return objects[on], np.asarray(x[on], float), np.asarray(y[on], float)


def run(calexp: Exposure, objects: Table, config: Config | None = None, visit: int = 0,
        detector: int = 0) -> Result:
    """Forced PSF photometry of ``objects`` (objectTable rows, any patches) on ``calexp`` (see the module
    docstring)."""
    config = config or Config()
    timer = StepTimer()
    if calexp.psf is None or not wcs_is_celestial(calexp.wcs) or calexp.photo_calib is None:
        raise ProcessingError(f"visit {visit} detector {detector}: the calexp lacks a PSF, a celestial WCS or a "
                              "PhotoCalib; re-run process_eimage")
    with timer("select_objects"):
        objs, x, y = select_objects(objects, calexp.wcs, calexp.shape, config.primary_only)
    with timer("fit"):
        good = (calexp.mask & mask_bit(*config.bad_mask_planes)) == 0
        stamps = PsfStamps(calexp.psf, calexp.shape, n_grid=config.psf_grid, model_size=config.psf_model_size)
        if config.n_phase > 0 and not hasattr(calexp.psf, "kernels_at"):
            stamps = PhaseTable(stamps, config.n_phase)
        size = fit_stamp_size(calexp.psf.fwhm(), config)
        fit = forced_psf_fluxes(calexp.image, calexp.variance, good, stamps, x, y,
                                size=size, coupling_tolerance=config.coupling_tolerance,
                                min_overlap=config.min_overlap, max_masked_frac=config.max_masked_frac,
                                max_dense=config.max_dense)
    with timer("flags"):
        flags = pixel_flags(calexp.mask, x, y)
    with timer("table"):
        apcorr = float(calexp.metadata.get("aperture_correction", 1.0)) if config.apply_aperture_correction \
            else 1.0
        table = _forced_source_table(calexp, objs, x, y, fit, flags, visit, detector, apcorr)
    n = len(table)
    meta = {"visit": int(visit), "detector": int(detector), "n_objects": n,
            "n_flagged": int(np.sum(table["psfFlux_flag"])) if n else 0,
            "n_grouped": int(np.sum(fit.group_size > 1)), "max_group_size": int(fit.group_size.max()) if n else 0,
            "n_linked_pairs": fit.n_pairs, "aperture_correction": apcorr, "fit_size_px": size}
    return Result(table, meta, timer.timings())


def _forced_source_table(calexp, objs, x, y, fit, flags, visit, detector, apcorr: float) -> Table:
    n = len(x)
    vi = calexp.visit_info
    band = vi.band if vi is not None else str(calexp.metadata.get("band", ""))
    mjd = vi.mjd_tai if vi is not None else float("nan")
    flux, err = calexp.photo_calib.to_njy(fit.flux * apcorr, fit.flux_err * apcorr)
    t = Table()
    t["forcedSourceId"] = (np.int64(visit) * 1000 + np.int64(detector)) * np.int64(10 ** 8) + np.arange(n,
                                                                                                     dtype=np.int64)
    t["objectId"] = np.asarray(objs["objectId"], np.int64) if n else np.empty(0, np.int64)
    t["visit"] = np.full(n, visit, np.int64)
    t["detector"] = np.full(n, detector, np.int64)
    t["band"] = np.full(n, band, dtype="U1")
    t["midpointMjdTai"] = np.full(n, mjd)
    t["coord_ra"] = np.asarray(objs["coord_ra"], float) if n else np.empty(0)
    t["coord_dec"] = np.asarray(objs["coord_dec"], float) if n else np.empty(0)
    t["x"], t["y"] = x, y
    t["psfFlux"], t["psfFluxErr"] = flux, err
    t["psfFlux_flag"] = fit.flag
    t["psfFlux_flag_edge"] = fit.edge
    t["psfFlux_flag_noGoodPixels"] = fit.no_good_pixels
    t["forced_groupSize"] = fit.group_size.astype(np.int32)
    for k, v in flags.items():
        t[k] = v
    for c, u in (("coord_ra", "deg"), ("coord_dec", "deg"), ("psfFlux", "nJy"), ("psfFluxErr", "nJy"),
                 ("x", "pix"), ("y", "pix"), ("midpointMjdTai", "d")):
        t[c].unit = u
    return t


def _read_objects(butler, sky: SkyMap, calexp: Exposure) -> tuple[Table, list[int]]:
    """Every objectTable of the patches overlapping the calexp (the columns this stage needs)."""
    patches = sky.patches_overlapping(calexp.wcs, calexp.shape)
    tables, read = [], []
    for patch in patches:
        did = {"tract": sky.tract, "patch": patch}
        if not butler.exists("objectTable", did):
            continue
        t = butler.get("objectTable", did)
        missing = [c for c in OBJECT_COLUMNS if c not in t.colnames]
        if missing:
            raise ProcessingError(f"objectTable tract {sky.tract} patch {patch} lacks column(s) "
                                  f"{', '.join(missing)}; re-run merge_measurements")
        tables.append(t[OBJECT_COLUMNS])
        read.append(patch)
    if not tables:
        return Table(names=OBJECT_COLUMNS, dtype=["i8", "f8", "f8", "?"]), read
    return vstack(tables, metadata_conflicts="silent"), read


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Read the calexp, the sky map and the objectTables overlapping it; run; write forcedSourceTable."""
    did = {"visit": data_id["visit"], "detector": data_id.get("detector", 0)}
    calexp = butler.get("calexp", did)
    sky = SkyMap.from_dict(butler.get("skyMap", {}))
    objects, patches = _read_objects(butler, sky, calexp)
    overlapping = sky.patches_overlapping(calexp.wcs, calexp.shape)
    absent = [p for p in overlapping if p not in patches]
    if not patches:
        # no Object of this calexp exists (merge_measurements has not run here, or failed on every patch it
        # overlaps): there is nothing to measure; say so rather than fail the visit
        log.warning("visit %s detector %s: no objectTable of the overlapping patches %s; nothing written "
                    "(run merge_measurements first)", did["visit"], did["detector"], overlapping)
        return {"written": False, "n_objects": 0, "patches_without_objectTable": absent,
                "reason": "no objectTable of the patches overlapping the calexp exists; run merge_measurements"}
    result = run(calexp, objects, config, did["visit"], did["detector"])
    butler.put(result.table, "forcedSourceTable", did)
    return dict(result.metadata, written=True, patches_read=patches, patches_without_objectTable=absent,
                timings_s={k: v for k, v in result.timings.items() if k != "cpu_s"},
                cpu_s=result.timings.get("cpu_s"))
