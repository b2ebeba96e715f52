"""Artefacts the coadd must reject: satellite trails and moving (asteroid-like) transients.

Both are light on the sky that is present in one visit (or a few, at different places) and absent from the static
sky: CompareWarp-like artefact rejection must keep them out of a coadd, while single visits (calexps, difference
images) show them. Switched on by the preset options ``satellite_trails`` and ``moving_transients`` (the demo
preset has both; see :mod:`twinkles.sim.presets` for their parameters).

* **Satellite trail** -- a straight streak across the whole detector in a fraction ``trail_visit_fraction`` of
  the visits (one per such visit, at least one visit when the fraction is > 0): random direction, centre line
  passing within 0.35 detector widths of the centre, a Gaussian cross-section of FWHM ``trail_width_arcsec``
  *before* the PSF (the light of a defocused low-orbit satellite), peak surface brightness drawn from
  ``trail_surface_brightness`` (AB mag/arcsec^2 in the visit's band), uniform along its length. It is added to the
  visit's galaxy scene before the PSF convolution, so in the image its cross-section is that Gaussian convolved with
  the visit's PSF (and it enters every band's PSF the same way a galaxy does).
* **Moving transient** -- ``n_moving_transients`` per field, each an asteroid-like point source moving linearly
  on the sky at ``moving_rate_deg_per_day`` in a random direction, with r magnitude in ``moving_mag_range`` and
  solar-like colours (u-g 1.5, g-r 0.55, r-i 0.18, i-z 0.03, z-y 0.0); each is anchored on the detector at one
  randomly chosen visit and appears in every visit where its position falls on the detector (at 0.15-0.5 deg/day
  it crosses a 1k field in hours: the other visits of that night, at other places, and no other night). It is
  drawn trailed: the true PSF at sub-steps of <= 0.2 px along its track during the exposure.

Truth: the ``truth_artifacts`` dataset (run ``truth``; ``twinkles sql`` table ``TruthArtifact``), one row per
artefact per visit in which it is rendered, columns :data:`ARTIFACT_COLUMNS`:

=====================  =============================================================================================
``artifactId``         int64, the artefact's own number (1, 2, ...; not a Truth ``id``); a moving transient keeps
                       it in every visit it appears in
``type``               ``"satellite_trail"`` or ``"moving_transient"``
``visit``, ``band``    the visit it is in, and that visit's band
``midpointMjdTai``     mid-exposure time of the visit (MJD TAI)
``ra``, ``dec``        deg: a mover's position at mid-exposure; a trail's midpoint on the detector
``raStart, decStart``  deg: a mover's position at the start of the exposure; where a trail's centre line enters
                       the detector (its pixel box, [-0.5, size - 0.5] in the true WCS)
``raEnd, decEnd``      deg: a mover's position at the end of the exposure; where a trail leaves the detector
``flux``               nJy, a mover's total flux in the visit's band (NaN for trails)
``lineFlux``           nJy per arcsec of trail length: the flux across the trail (NaN for movers)
``surfaceBrightness``  nJy/arcsec^2: a trail's peak surface brightness before the PSF,
                       = lineFlux / (sqrt(2 pi) sigma), sigma = widthArcsec / 2.3548 (NaN for movers)
``widthArcsec``        FWHM of a trail's Gaussian cross-section before the PSF (NaN for movers)
=====================  =============================================================================================

Positions are those of the *true* WCS (as every truth position): processing never sees this table.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from .lsst import BANDS, mag_to_njy
from .wcs import tan_deproject, tan_project, true_wcs

__all__ = ["ARTIFACT_COLUMNS", "plan_artifacts", "empty_artifacts", "add_trail_to_scene", "mover_track_pixels",
           "MOVER_COLOURS", "FWHM_TO_SIGMA"]

ARTIFACT_COLUMNS = (("artifactId", np.int64), ("type", "U16"), ("visit", np.int64), ("band", "U1"),
                    ("midpointMjdTai", float), ("ra", float), ("dec", float), ("raStart", float),
                    ("decStart", float), ("raEnd", float), ("decEnd", float), ("flux", float), ("lineFlux", float),
                    ("surfaceBrightness", float), ("widthArcsec", float))
#: solar-like asteroid colours: band magnitude minus r
MOVER_COLOURS = {"u": 0.55 + 1.5, "g": 0.55, "r": 0.0, "i": -0.18, "z": -0.21, "y": -0.21}
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_EDGE_MARGIN_PX = 20.0  # a mover's anchor position is at least this far inside the detector


def empty_artifacts() -> Table:
    """A ``truth_artifacts`` table with no rows (the columns and types of :data:`ARTIFACT_COLUMNS`)."""
    return Table(names=[c for c, _ in ARTIFACT_COLUMNS], dtype=[t for _, t in ARTIFACT_COLUMNS])


def _box_crossing(x0: float, y0: float, ux: float, uy: float, width: int, height: int):
    """Parameters (t0, t1) where the line (x0, y0) + t (ux, uy) crosses the pixel box [-0.5, w-0.5]x[-0.5, h-0.5]
    (slab method), or None when it misses the box."""
    lo, hi = -np.inf, np.inf
    for p, u, n in ((x0, ux, width), (y0, uy, height)):
        a, b = -0.5, n - 0.5
        if abs(u) < 1e-12:
            if not a <= p <= b:
                return None
            continue
        ta, tb = (a - p) / u, (b - p) / u
        lo, hi = max(lo, min(ta, tb)), min(hi, max(ta, tb))
    return (lo, hi) if hi > lo else None


def plan_artifacts(cfg: dict, rows: list[dict], seed: int) -> Table:
    """The ``truth_artifacts`` table of a simulation: every trail and every moving transient in every visit it is
    drawn in (see the module docstring). ``rows``: the visit rows of :func:`twinkles.sim.simulate.plan_visits`.
    Reproducible from ``seed`` alone (its own random stream: the sky model and the pixels' noise do not change
    when artefacts are switched on or off)."""
    width, height = int(cfg["width"]), int(cfg["height"])
    scale = float(cfg["pixel_scale_arcsec"])
    rng = np.random.default_rng([int(seed), 23])
    out: list[tuple] = []
    n = len(rows)
    nan = float("nan")
    next_id = 1
    wcs_cache: dict[int, object] = {}

    def wcs_of(i):
        if i not in wcs_cache:
            wcs_cache[i] = true_wcs(rows[i], cfg)
        return wcs_cache[i]

    # ---- moving transients
    if cfg.get("moving_transients") and int(cfg["n_moving_transients"]) > 0 and n:
        n_m = int(cfg["n_moving_transients"])
        anchors = rng.choice(n, size=n_m, replace=n_m > n)
        mlo, mhi = cfg["moving_mag_range"]
        vlo, vhi = cfg["moving_rate_deg_per_day"]
        t_all = np.array([r["midpointMjdTai"] for r in rows])
        half_diag = 0.5 * math.hypot(width, height) * scale + 10.0 + 6.0 * float(cfg.get("dither_arcsec", 0.0))
        for a in anchors:
            m = _EDGE_MARGIN_PX
            px, py = rng.uniform(m, width - 1 - m), rng.uniform(m, height - 1 - m)
            ra0, dec0 = (float(v) for v in wcs_of(int(a)).all_pix2world(px, py, 0))
            xi0, eta0 = (float(v) * 3600.0 for v in tan_project(ra0, dec0, cfg["field_ra_deg"],
                                                                cfg["field_dec_deg"]))
            rate = rng.uniform(vlo, vhi) * 3600.0  # arcsec/day
            phi = rng.uniform(0, 2 * np.pi)
            vxi, veta = rate * math.cos(phi), rate * math.sin(phi)
            r_mag = rng.uniform(mlo, mhi)
            t0 = float(t_all[a])
            # visits close enough in time for the mover to be anywhere near the detector
            near = np.flatnonzero(np.abs(t_all - t0) * rate < 2.0 * half_diag + math.hypot(xi0, eta0))
            for j in near:
                row = rows[j]
                half_exp = 0.5 * float(row["expTime"]) / 86400.0
                ts = np.array([t_all[j] - t0, t_all[j] - t0 - half_exp, t_all[j] - t0 + half_exp])
                ra, dec = tan_deproject((xi0 + vxi * ts) / 3600.0, (eta0 + veta * ts) / 3600.0,
                                        cfg["field_ra_deg"], cfg["field_dec_deg"])
                x, y = wcs_of(int(j)).all_world2pix(ra, dec, 0)
                if not (-0.5 <= x[0] < width - 0.5 and -0.5 <= y[0] < height - 0.5):
                    continue
                band = str(row["band"])
                out.append((next_id, "moving_transient", int(row["visit"]), band, float(t_all[j]),
                            float(ra[0]), float(dec[0]), float(ra[1]), float(dec[1]), float(ra[2]), float(dec[2]),
                            float(mag_to_njy(r_mag + MOVER_COLOURS[band])), nan, nan, nan))
            next_id += 1

    # ---- satellite trails
    frac = float(cfg.get("trail_visit_fraction", 0.0))
    if cfg.get("satellite_trails") and frac > 0 and n:
        n_t = min(n, max(1, int(round(frac * n))))
        chosen = np.sort(rng.choice(n, size=n_t, replace=False))
        sblo, sbhi = cfg["trail_surface_brightness"]
        w_fwhm = float(cfg["trail_width_arcsec"])
        for i in chosen:
            row = rows[int(i)]
            theta = rng.uniform(0, np.pi)
            ux, uy = math.cos(theta), math.sin(theta)
            off = rng.uniform(-0.35, 0.35) * min(width, height)
            cx, cy = (width - 1) / 2.0 - off * uy, (height - 1) / 2.0 + off * ux
            sb_mag = rng.uniform(sblo, sbhi)
            tt = _box_crossing(cx, cy, ux, uy, width, height)
            if tt is None:  # cannot happen for offsets < half the detector; keep the random stream regardless
                continue
            xs = np.array([cx + ux * tt[0], cx + ux * tt[1], cx + ux * 0.5 * (tt[0] + tt[1])])
            ys = np.array([cy + uy * tt[0], cy + uy * tt[1], cy + uy * 0.5 * (tt[0] + tt[1])])
            ra, dec = wcs_of(int(i)).all_pix2world(xs, ys, 0)
            sb = float(mag_to_njy(sb_mag))  # nJy / arcsec^2 at the peak
            line = sb * math.sqrt(2 * math.pi) * w_fwhm * FWHM_TO_SIGMA
            out.append((next_id, "satellite_trail", int(row["visit"]), str(row["band"]),
                        float(row["midpointMjdTai"]), float(ra[2]), float(dec[2]), float(ra[0]), float(dec[0]),
                        float(ra[1]), float(dec[1]), nan, line, sb, w_fwhm))
            next_id += 1
    if not out:
        return empty_artifacts()
    t = Table(rows=out, names=[c for c, _ in ARTIFACT_COLUMNS], dtype=[t for _, t in ARTIFACT_COLUMNS])
    t.sort(["visit", "artifactId"])
    return t


def add_trail_to_scene(canvas: np.ndarray, pad: int, x0: float, y0: float, x1: float, y1: float,
                       line_flux_per_px: float, sigma_px: float, core_sigma_px: float) -> None:
    """Add a straight trail through the detector pixels (x0, y0) and (x1, y1) (0-based) to a padded pre-PSF
    scene in place: an infinite line (it crosses the whole canvas) of ``line_flux_per_px`` (flux per pixel of
    length, the scene's unit) with a Gaussian cross-section of ``sigma_px``, convolved with the galaxy core and
    the pixel box (variance + core^2 + 1/12 px^2), as the galaxy stamps of the scene are."""
    ch, cw = canvas.shape
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy)
    if length == 0:
        raise ValueError("trail endpoints coincide")
    nx, ny = -dy / length, dx / length  # unit normal
    s = math.sqrt(sigma_px ** 2 + core_sigma_px ** 2 + 1.0 / 12.0)
    peak = line_flux_per_px / (math.sqrt(2 * math.pi) * s)
    reach = 7.0 * s
    xs = np.arange(cw, dtype=np.float64) - pad - x0
    for r0 in range(0, ch, 256):
        yy = np.arange(r0, min(r0 + 256, ch), dtype=np.float64) - pad - y0
        d = nx * xs[None, :] + ny * yy[:, None]
        near = np.abs(d) < reach
        if near.any():
            block = canvas[r0:r0 + len(yy)]
            block[near] += (peak * np.exp(-0.5 * (d[near] / s) ** 2)).astype(canvas.dtype)


def mover_track_pixels(x_start: float, y_start: float, x_end: float, y_end: float, step_px: float = 0.2):
    """Sub-step positions (midpoints of equal intervals no longer than ``step_px``) of a track during the
    exposure, and the fraction of the flux at each."""
    length = math.hypot(x_end - x_start, y_end - y_start)
    k = max(1, int(math.ceil(length / step_px)))
    f = (np.arange(k) + 0.5) / k
    return x_start + f * (x_end - x_start), y_start + f * (y_end - y_start), np.full(k, 1.0 / k)


assert set(MOVER_COLOURS) == set(BANDS)
