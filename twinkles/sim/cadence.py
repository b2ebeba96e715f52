"""Cadence: which visits are taken when, in which band, under which conditions.

Two sources, both returning an :class:`astropy.table.Table` with one row per visit and the columns

``visit, band, mjd (mid-exposure, TAI), exptime (s), airmass, seeingFwhmEff (arcsec, as reported),
skyBrightness (mag/arcsec^2), fiveSigmaDepth (as OpSim reports it), rotSkyPos (deg), fieldRA, fieldDec (deg,
boresight)``:

* :func:`generate_cadence` -- a built-in deep-drilling-field-like generator: observing seasons around the field's
  opposition, observed nights separated by 1-4 days (weather, scheduling), a nightly sequence through the bands,
  airmass from the hour angle at Cerro Pachon, seeing from a log-normal zenith FWHM at 500 nm turned into FWHMeff
  with OpSim's model, sky brightness from the dark-sky values brightened by the Moon, and m5 from OpSim's formula
  (all numbers from SMTN-002, see :mod:`twinkles.sim.lsst`).
* :func:`read_opsim` -- the visits of a real OpSim database (its ``observations`` table, OpSim v4+ column names,
  angles in degrees) whose pointing is within ``radius_deg`` of the field.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import SimulationInputError
from .lsst import DARK_SKY, fwhm_eff_from_atm, opsim_m5

__all__ = ["generate_cadence", "read_opsim", "OPSIM_COLUMNS", "airmass_at", "angular_separation_deg",
           "SITE_LATITUDE_DEG", "SITE_LONGITUDE_DEG"]

SITE_LATITUDE_DEG = -30.2446   # Cerro Pachon
SITE_LONGITUDE_DEG = -70.7494
_NEW_MOON_MJD = 59581.773      # 2022-01-02 18:33 UTC
_SYNODIC_DAYS = 29.530589
_SIDEREAL_RATE = 360.98564736629  # deg of GMST per day
#: how much a full Moon brightens the sky, per band (fraction of dark sky flux at full illumination)
_MOON_BRIGHTENING = {"u": 4.0, "g": 3.0, "r": 1.5, "i": 1.0, "z": 0.6, "y": 0.4}
_VISIT_SPACING_S = 36.0       # 2 x 15 s exposures + shutter + readout + settle
_FILTER_CHANGE_S = 120.0

OPSIM_COLUMNS = ("observationId", "fieldRA", "fieldDec", "observationStartMJD", "filter", "visitExposureTime",
                 "seeingFwhmEff", "airmass", "skyBrightness", "fiveSigmaDepth", "rotSkyPos")


def angular_separation_deg(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    s = (np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))))


def _gmst_deg(mjd):
    return (280.46061837 + _SIDEREAL_RATE * (np.asarray(mjd) - 51544.5)) % 360.0


def airmass_at(mjd, ra_deg: float, dec_deg: float):
    """Airmass of (ra, dec) seen from Cerro Pachon at time mjd (plane-parallel sec z, Kasten-Young corrected)."""
    ha = np.radians(_gmst_deg(mjd) + SITE_LONGITUDE_DEG - ra_deg)
    lat, dec = math.radians(SITE_LATITUDE_DEG), math.radians(dec_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * np.cos(ha)
    alt = np.degrees(np.arcsin(np.clip(sin_alt, -1, 1)))
    # Kasten & Young (1989)
    return 1.0 / (np.sin(np.radians(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)


def _transit_mjd(night: int, ra_deg: float) -> float:
    """MJD of the field's meridian transit nearest local midnight (~04:43 UTC) of night ``night``."""
    midnight = night + 0.197
    dha = (ra_deg - (_gmst_deg(midnight) + SITE_LONGITUDE_DEG)) % 360.0
    if dha > 180:
        dha -= 360
    return midnight + dha / _SIDEREAL_RATE


def _moon_illumination(mjd):
    age = (np.asarray(mjd) - _NEW_MOON_MJD) % _SYNODIC_DAYS
    return 0.5 * (1 - np.cos(2 * np.pi * age / _SYNODIC_DAYS))


def _in_season(mjd, center_doy: float, half_length: float) -> bool:
    doy = (mjd - 59580.0) % 365.25  # 59580 = 2022-01-01
    d = (doy - center_doy + 182.625) % 365.25 - 182.625
    return abs(d) <= half_length


def generate_cadence(cfg: dict, rng: np.random.Generator, bands: str | None = None,
                     n_visits: int | None = None) -> Table:
    """The built-in DDF-like cadence for a preset configuration ``cfg`` (see :mod:`twinkles.sim.presets`)."""
    bands = bands or cfg["bands"]
    n_visits = int(n_visits or cfg["n_visits"])
    ra0, dec0 = cfg["field_ra_deg"], cfg["field_dec_deg"]
    per_night = {b: int(cfg["visits_per_band_night"].get(b, 1)) for b in bands}
    gap_lo, gap_hi = cfg["night_gap_days"]
    rows = []
    night = int(math.floor(cfg["start_mjd"]))
    visit = int(cfg["first_visit"])
    guard = 0
    while len(rows) < n_visits:
        guard += 1
        if guard > 200000:
            raise SimulationInputError("cadence generator found no observable nights; check season settings")
        if not _in_season(night + 0.2, cfg["season_center_doy"], cfg["season_half_length_days"]):
            night += 1
            continue
        transit = _transit_mjd(night, ra0)
        start = transit + rng.uniform(-2.5, 2.5) / 24.0
        illum = float(_moon_illumination(start))
        fwhm500 = float(cfg["fwhm500_median_arcsec"] * math.exp(rng.normal(0, cfg["fwhm500_sigma_ln"])))
        order = list(bands) if (night % 2 == 0) else list(reversed(bands))
        t = start
        for k, band in enumerate(order):
            if band == "u" and illum > 0.4:
                continue  # the u filter is swapped out of the carousel in bright time
            if k > 0:
                t += _FILTER_CHANGE_S / 86400.0
            for _ in range(per_night[band]):
                if len(rows) >= n_visits:
                    break
                airmass = float(airmass_at(t, ra0, dec0))
                seeing = fwhm_eff_from_atm(fwhm500 * math.exp(rng.normal(0, 0.05)), band, airmass)
                moon = _MOON_BRIGHTENING[band] * illum ** 2
                sky = (DARK_SKY[band] - 2.5 * math.log10(1 + moon) - 0.5 * 2.5 * math.log10(airmass)
                       + rng.normal(0, 0.08))
                exptime = float(cfg["exptime_s"])
                rot = cfg["rot_sky_pos_deg"]
                rot = float(rng.uniform(0, 360)) if rot is None else float(rot)
                rows.append(dict(visit=visit, band=band, mjd=t + exptime / 2 / 86400.0, exptime=exptime,
                                 airmass=airmass, seeingFwhmEff=seeing, skyBrightness=sky,
                                 fiveSigmaDepth=opsim_m5(band, sky, seeing, exptime, airmass), rotSkyPos=rot,
                                 fieldRA=ra0, fieldDec=dec0))
                visit += 1
                t += _VISIT_SPACING_S / 86400.0
        night += int(rng.integers(gap_lo, gap_hi + 1))
    return _as_table(rows)


def _as_table(rows: list[dict]) -> Table:
    names = ["visit", "band", "mjd", "exptime", "airmass", "seeingFwhmEff", "skyBrightness", "fiveSigmaDepth",
             "rotSkyPos", "fieldRA", "fieldDec"]
    t = Table(rows=[[r[n] for n in names] for r in rows], names=names) if rows else Table(names=names)
    t["visit"] = np.asarray(t["visit"], dtype=np.int64)
    t["band"] = np.asarray(t["band"], dtype="U1")
    return t


def read_opsim(path: str | Path, field_ra_deg: float, field_dec_deg: float, radius_deg: float = 0.25,
               bands: str | None = None, n_visits: int | None = None) -> Table:
    """Visits of an OpSim database whose boresight is within ``radius_deg`` of the field, in time order.

    Reads the ``observations`` table (OpSim v4 and later, angles in degrees); mid-exposure MJD is
    ``observationStartMJD + visitExposureTime / 2``. Raises :class:`SimulationInputError` on an unreadable file,
    a missing table or column, or no matching visits. The table's ``meta["left_out"]`` counts the file's visits
    that were not kept, by reason: ``off_field`` (boresight farther than ``radius_deg``), ``band`` (not in
    ``bands``), ``filter`` (not one of ugrizy), ``n_visits`` (beyond the first ``n_visits`` in time order).
    """
    path = Path(path)
    if not path.is_file():
        raise SimulationInputError(f"OpSim file {path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SimulationInputError(f"OpSim file {path}: cannot open as SQLite ({exc})") from None
    try:
        try:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(observations)")]
        except sqlite3.DatabaseError as exc:
            raise SimulationInputError(f"OpSim file {path}: not a readable SQLite database ({exc})") from None
        if not cols:
            raise SimulationInputError(f"OpSim file {path}: no 'observations' table (is this an OpSim v4+ "
                                       "output database?)")
        missing = [c for c in OPSIM_COLUMNS if c not in cols]
        if missing:
            raise SimulationInputError(f"OpSim file {path}: table 'observations' lacks column(s) "
                                       f"{', '.join(missing)} (needs {', '.join(OPSIM_COLUMNS)})")
        # a cheap box cut in SQL, then the exact separation in numpy
        ddec = radius_deg
        dra = radius_deg / max(math.cos(math.radians(field_dec_deg)), 1e-3)
        sql = (f"SELECT {', '.join(OPSIM_COLUMNS)} FROM observations WHERE fieldDec BETWEEN ? AND ? "
               "ORDER BY observationStartMJD, observationId")
        try:
            rows = conn.execute(sql, (field_dec_deg - ddec, field_dec_deg + ddec)).fetchall()
            n_total = int(conn.execute("SELECT COUNT(*) FROM observations").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise SimulationInputError(f"OpSim file {path}: cannot read observations ({exc})") from None
    finally:
        conn.close()
    out = []
    left_out = {"off_field": n_total - len(rows), "filter": 0, "band": 0, "n_visits": 0}
    for (obs_id, ra, dec, start, band, exptime, seeing, airmass, sky, m5, rot) in rows:
        if abs(((ra - field_ra_deg + 180) % 360) - 180) > dra + 1e-9 or \
                angular_separation_deg(ra, dec, field_ra_deg, field_dec_deg) > radius_deg:
            left_out["off_field"] += 1
            continue
        if band not in "ugrizy" or not band:
            left_out["filter"] += 1
            continue
        if bands and band not in bands:
            left_out["band"] += 1
            continue
        if n_visits and len(out) >= n_visits:
            left_out["n_visits"] += 1
            continue
        out.append(dict(visit=int(obs_id), band=band, mjd=float(start) + float(exptime) / 2 / 86400.0,
                        exptime=float(exptime), airmass=float(airmass), seeingFwhmEff=float(seeing),
                        skyBrightness=float(sky), fiveSigmaDepth=float(m5), rotSkyPos=float(rot),
                        fieldRA=float(ra), fieldDec=float(dec)))
    if not out:
        raise SimulationInputError(f"OpSim file {path}: no visits within {radius_deg} deg of the field "
                                   f"(RA {field_ra_deg}, Dec {field_dec_deg})"
                                   + (f" in bands {bands}" if bands else ""))
    visits = [r["visit"] for r in out]
    if len(set(visits)) != len(visits):
        raise SimulationInputError(f"OpSim file {path}: duplicate observationId values")
    table = _as_table(out)
    table.meta["left_out"] = left_out
    return table
