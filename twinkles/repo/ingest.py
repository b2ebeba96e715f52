"""Ingest external FITS images with a celestial WCS as eimages (``twinkles ingest REPO FILES...``).

Each file must hold a 2-d image (primary HDU or first image extension) with a celestial WCS, and a band (header
FILTER or BAND, e.g. ``r``, ``LSST-r``, ``r_sim``; or ``--band``). The image is taken to be in electrons, or in
ADU when the header has GAIN (electrons/ADU). The variance plane is estimated as an ISR would: max(image, 0) /
gain-corrected + read noise^2 (RDNOISE header, else the robust scatter of the faintest pixels). A file that fails any
check is refused with a message naming it and the problem; nothing of it is written or registered. Good files are
registered together in one transaction.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from ..image import MASK_PLANES, Exposure, VisitInfo, pixel_scale_arcsec
from .dataid import BANDS
from .repository import RAW_RUN, DatasetRef, Repository

__all__ = ["ingest_files", "read_external_image", "IngestError"]

_BAND_RE = re.compile(r"^(?:lsst[-_ ]?|sdss[-_ ]?)?([ugrizy])(?:[-_ ]?(?:sim|band|filter|lsst))?$", re.I)


class IngestError(ValueError):
    """A file cannot be ingested; the message names the file and the problem."""


def _band_from_header(header: fits.Header, path: str, band: str | None) -> str:
    raw = None
    for key in ("BAND", "FILTER", "FILTER1", "FILTNAME"):
        if key in header and str(header[key]).strip():
            raw = str(header[key]).strip()
            break
    if raw is None:
        if band is None:
            raise IngestError(f"{path}: no FILTER or BAND keyword in the header; give the band with --band "
                              f"({', '.join(BANDS)})")
        raw = band
    m = _BAND_RE.match(raw)
    if not m:
        raise IngestError(f"{path}: unknown band {raw!r}; twinkles knows the LSST bands {', '.join(BANDS)} "
                          "(override with --band if the header is wrong)")
    return m.group(1).lower()


def _mjd_from_header(header: fits.Header, path: str, exptime: float) -> float:
    for key in ("MJD-AVG", "MJD-MID"):
        if key in header:
            return float(header[key])
    if "MJD-OBS" in header:
        return float(header["MJD-OBS"]) + exptime / 2.0 / 86400.0
    if "DATE-OBS" in header:
        try:
            t = Time(str(header["DATE-OBS"]), scale=str(header.get("TIMESYS", "utc")).lower())
        except ValueError as exc:
            raise IngestError(f"{path}: cannot parse DATE-OBS {header['DATE-OBS']!r} ({exc})") from None
        return float(t.tai.mjd) + exptime / 2.0 / 86400.0
    raise IngestError(f"{path}: no observation time (MJD-OBS, MJD-AVG or DATE-OBS) in the header")


def read_external_image(path: str | Path, band: str | None = None, visit: int | None = None,
                        detector: int = 0) -> Exposure:
    """Read and check one external FITS image; raise IngestError naming the file and the problem."""
    path = str(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("silentfix")
            hdu = next((h for h in hdul if h.data is not None and getattr(h.data, "ndim", 0) == 2), None)
            if hdu is None:
                raise IngestError(f"{path}: no 2-d image in any HDU")
            data = np.array(hdu.data, dtype=np.float64)
            header = hdul[0].header.copy()
            if hdu is not hdul[0]:
                header.update(hdu.header)
    except IngestError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise IngestError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc}); it may be corrupt or "
                          "truncated") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for bad WCS
            raise IngestError(f"{path}: the WCS in the header cannot be read ({exc})") from None
    if not wcs.has_celestial or wcs.wcs.ctype[0] == "" or "RA" not in wcs.wcs.ctype[0].upper():
        raise IngestError(f"{path}: no celestial WCS in the header (need CTYPE1/2 = RA---TAN/DEC--TAN or "
                          "similar, CRVAL, CRPIX and CD or CDELT); add one, e.g. with astrometry.net")
    try:
        wcs.pixel_to_world_values(data.shape[1] / 2, data.shape[0] / 2)
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{path}: the WCS cannot transform pixels to sky ({exc})") from None
    finite = np.isfinite(data)
    if not finite.any():
        raise IngestError(f"{path}: every pixel is NaN or infinite")
    b = _band_from_header(header, path, band)
    exptime = float(header.get("EXPTIME", header.get("EXPOSURE", 30.0)))
    mjd = _mjd_from_header(header, path, exptime)
    gain = float(header.get("GAIN", 1.0)) or 1.0
    electrons = np.where(finite, data * gain, 0.0)
    if "RDNOISE" in header or "READNOIS" in header:
        read_noise = float(header.get("RDNOISE", header.get("READNOIS")))
    else:
        faint = electrons[finite]
        med = np.median(faint)
        mad_sigma = float(mad_std(faint))
        read_noise = math.sqrt(max(mad_sigma**2 - max(med, 0.0), 0.0))
    variance = np.maximum(electrons, 0.0) + read_noise**2
    mask = np.where(finite, 0, (1 << MASK_PLANES["NO_DATA"]) | (1 << MASK_PLANES["BAD"])).astype(np.int32)
    if visit is None:
        for key in ("VISIT", "OBSID", "EXPID"):
            if key in header and str(header[key]).strip().isdigit():
                visit = int(str(header[key]).strip())
                break
    info = VisitInfo(visit=int(visit) if visit is not None else -1, band=b, mjd_tai=mjd, exp_time_s=exptime,
                     airmass=float(header.get("AIRMASS", 1.0)),
                     seeing_arcsec=float(header.get("SEEING", float("nan"))),
                     sky_level_e=float(np.median(electrons[finite])), detector=detector,
                     pixel_scale_arcsec=pixel_scale_arcsec(wcs))
    meta = {"gain": 1.0, "readnoise": read_noise, "ingested_from": Path(path).name,
            "ingested_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if "SATURATE" in header:
        meta["saturate"] = float(header["SATURATE"]) * gain
    return Exposure(electrons, mask, variance, wcs, None, None, info, meta)


def ingest_files(repo_path: str | Path, files: list[str], band: str | None = None,
                 visit_start: int | None = None) -> tuple[list[DatasetRef], list[tuple[str, str]]]:
    """Ingest ``files`` into the repository (created if missing). Returns (registered refs, [(file, reason)])."""
    if not files:
        raise IngestError("no files given")
    root = Path(repo_path)
    repo = Repository(root) if (root / "registry.sqlite3").exists() else Repository.create(root)
    existing = {(r.data_id["visit"], r.data_id["detector"]) for r in repo.query("eimage")}
    next_visit = visit_start if visit_start is not None else (max([v for v, _ in existing], default=-1) + 1)
    refs, failures, centres = [], [], []
    for path in files:
        try:
            exposure = read_external_image(path, band=band)
            if exposure.visit_info.visit < 0:
                while (next_visit, 0) in existing:
                    next_visit += 1
                exposure.visit_info.visit = next_visit
            key = (exposure.visit_info.visit, exposure.visit_info.detector)
            if key in existing:
                raise IngestError(f"{path}: visit {key[0]} detector {key[1]} is already in the repository; "
                                  "give a new visit number (--visit-start) or remove the old one")
            ref = repo.write(exposure, "eimage", {"visit": key[0], "detector": key[1]}, RAW_RUN)
        except IngestError as exc:
            failures.append((path, str(exc).split(": ", 1)[-1]))
            continue
        existing.add(key)
        refs.append(ref)
        centres.append(exposure.wcs.pixel_to_world_values(exposure.width / 2, exposure.height / 2))
    if refs:
        repo.register(refs)
        cfg = repo.config
        if "field" not in cfg:
            ra, dec = np.mean(np.array(centres, dtype=float), axis=0)
            cfg["field"] = {"ra_deg": float(ra), "dec_deg": float(dec)}
            repo.write_config(cfg)
    return refs, failures
