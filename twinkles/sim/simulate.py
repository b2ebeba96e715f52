"""Simulate a Twinkles-like field into a data repository: eimages, reference catalog and the truth.

:func:`simulate_field` is the whole simulator: cadence -> sky model -> for every visit, the true PSF and WCS, the
galaxies convolved with the PSF, the point sources at their fluxes of the moment, sky, Poisson and read noise,
cosmic rays, saturation with bleed trails, optional satellite trails and moving transients
(:mod:`twinkles.sim.artifacts`), the perturbed header WCS -> ``eimage`` (run ``raw``); then ``ref_cat`` (run
``raw``) and ``truth_catalog``, ``truth_lightcurves``, ``visit_table``, ``truth_artifacts`` (run ``truth``).

Reproducible: the cadence and sky model come from ``seed``; each visit's conditions and noise from
(``seed``, visit), so the same seed gives identical pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..image import Exposure, VisitInfo
from ..psf import measure_fwhm
from ..repo import RAW_RUN, TRUTH_RUN, Repository
from ..repo.storage import to_plain
from . import SimulationInputError
from .artifacts import FWHM_TO_SIGMA, add_trail_to_scene, empty_artifacts, mover_track_pixels, plan_artifacts
from .cadence import generate_cadence, read_opsim
from .lsst import (electrons_to_njy_factor, m5_from_noise, sky_electrons_per_pixel, zero_point)
from .presets import get_preset
from .psf import PSF_COLUMNS, draw_psf_params, n_eff_pixels, psf_grid
from .render import (BRIGHT_STAR_E, GalaxyStamps, add_bright_stars, add_cosmic_rays, add_point_sources,
                     bleed_saturation, convolve_with_psf_grid)
from .skymodel import POINT_TYPES, SkyModel, make_sky_model
from .wcs import header_wcs, tan_deproject, true_wcs

__all__ = ["simulate_field", "load_simulation", "plan_visits", "VisitRenderer", "make_ref_cat",
           "repo_config_for"]

REF_DEPTH_MAG = 24.0  # 5-sigma depth of the (deeper, earlier) survey the reference catalog comes from
REF_MAG_LIMIT = 23.0  # r-band limit of the reference catalog


def repo_config_for(cfg: dict, seed: int, opsim=None, n_visits=None, overrides=None) -> dict:
    """The repository configuration the simulator records (twinkles.yaml)."""
    return {
        "simulation_call": to_plain({"preset": cfg["preset"], "seed": int(seed),
                                   "opsim": str(Path(opsim).resolve()) if opsim is not None else None,
                                   "n_visits": n_visits, "overrides": dict(overrides or {}, bands=cfg["bands"])}),
        "instrument": "LSST-like single sensor (simulated)",
        "field_ra_deg": float(cfg["field_ra_deg"]),
        "field_dec_deg": float(cfg["field_dec_deg"]),
        "pixel_scale_arcsec": float(cfg["pixel_scale_arcsec"]),
        "width": int(cfg["width"]),
        "height": int(cfg["height"]),
        "size": int(cfg["size"]),
        "preset": cfg["preset"],
        "seed": int(seed),
        "gain": float(cfg["gain"]),
        "read_noise_e": float(cfg["read_noise_e"]),
        "saturation_e": float(cfg["saturation_e"]),
        "bands": cfg["bands"],
        "psf_grid": int(cfg["psf_grid"]),
        "psf_stamp_px": int(cfg["psf_stamp_px"]),
        "psf_oversample": int(cfg["psf_oversample"]),
        "psf_variation_scale_px": float(cfg["psf_variation_scale_px"]),
        "simulation": to_plain(cfg),
    }


def plan_visits(cfg: dict, cadence: Table, seed: int) -> list[dict]:
    """Per-visit conditions (the visit table minus the columns measured on the rendered PSF)."""
    scale = float(cfg["pixel_scale_arcsec"])
    rows = []
    for rec in cadence:
        visit = int(rec["visit"])
        band = str(rec["band"])
        rng = np.random.default_rng([int(seed), visit, 7])
        exptime, airmass = float(rec["exptime"]), float(rec["airmass"])
        cloud = float(rng.exponential(cfg["cloud_mean_mag"])) if cfg["cloud_mean_mag"] > 0 else 0.0
        zp = zero_point(band, exptime, airmass, cloud)
        sky_e = sky_electrons_per_pixel(band, float(rec["skyBrightness"]), exptime, scale)
        psf = draw_psf_params(rng, cfg, band, airmass, float(rec["seeingFwhmEff"]))
        d = float(cfg["dither_arcsec"])
        ddx, ddy = (rng.normal(0, d, 2) if d > 0 else (0.0, 0.0))
        cra, cdec = tan_deproject(ddx / 3600.0, ddy / 3600.0, cfg["field_ra_deg"], cfg["field_dec_deg"])
        off = float(cfg["wcs_offset_arcsec"])
        row = dict(visit=visit, band=band, midpointMjdTai=float(rec["mjd"]), expTime=exptime, airmass=airmass,
                   seeingReported=float(rec["seeingFwhmEff"]), skyBg=sky_e,
                   skyBrightness=float(rec["skyBrightness"]), zeroPoint=zp, cloudExtinction=cloud,
                   fiveSigmaDepthReported=float(rec["fiveSigmaDepth"]),
                   boresightRa=float(rec["fieldRA"]), boresightDec=float(rec["fieldDec"]),
                   rotSkyPos=float(rec["rotSkyPos"]), trueCrval1=float(cra), trueCrval2=float(cdec),
                   trueRotation=float(rec["rotSkyPos"]),
                   wcsOffsetRa=float(rng.normal(0, off)), wcsOffsetDec=float(rng.normal(0, off)),
                   wcsRotOffset=float(rng.normal(0, cfg["wcs_rotation_deg"])),
                   skyGradX=float(rng.normal(0, cfg["sky_gradient_rms"])),
                   skyGradY=float(rng.normal(0, cfg["sky_gradient_rms"])), **psf)
        rows.append(row)
    return rows


class VisitRenderer:
    """Renders visits of one simulated field; caches galaxy stamps/scenes per true pointing and band."""

    def __init__(self, cfg: dict, sky: SkyModel, seed: int, timing: dict | None = None,
                 artifacts: Table | None = None):
        self.cfg = cfg
        self.sky = sky
        self.artifacts = artifacts if artifacts is not None else empty_artifacts()
        self.seed = int(seed)
        self.width, self.height = int(cfg["width"]), int(cfg["height"])
        self.scale = float(cfg["pixel_scale_arcsec"])
        self.pad = int(cfg["psf_stamp_px"]) // 2 + 2
        types = np.asarray(sky.truth["type"])
        self.point_rows = np.flatnonzero(np.isin(types, POINT_TYPES))
        self._key = None
        self._stamps: GalaxyStamps | None = None
        self._scenes: dict[str, np.ndarray] = {}
        self._positions = None
        self.timing = timing if timing is not None else {}

    def _tick(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timing[name] = self.timing.get(name, 0.0) + (t1 - t0)
        return t1

    @staticmethod
    def pointing_key(row: dict) -> tuple:
        return (round(row["trueCrval1"], 9), round(row["trueCrval2"], 9), round(row["trueRotation"], 6))

    def prepare_pointing(self, row: dict, bands: str) -> None:
        """Draw galaxy stamps for this true pointing and build the scenes of ``bands`` (then free the stamps)."""
        key = self.pointing_key(row)
        if key == self._key and all(b in self._scenes for b in bands):
            return
        t0 = time.perf_counter()
        wcs = true_wcs(row, self.cfg)
        if key != self._key or self._stamps is None:
            self._scenes = {}
            self._stamps = GalaxyStamps(self.sky.truth, wcs, self.width, self.height, self.pad, self.scale,
                                        float(self.cfg["galaxy_core_sigma_px"]))
            t = self.sky.truth
            self._positions = wcs.all_world2pix(np.asarray(t["ra"]), np.asarray(t["dec"]), 0)
            self._key = key
            t0 = self._tick("galaxy_stamps", t0)
        missing = [b for b in dict.fromkeys(bands) if b not in self._scenes]
        if missing:
            t = self.sky.truth
            made = self._stamps.scenes([(np.asarray(t[f"{b}_flux"]), np.asarray(t[f"{b}_bulgeFrac"]))
                                        for b in missing])
            self._scenes.update(zip(missing, made))
        self._tick("galaxy_scenes", t0)

    def release_stamps(self) -> None:
        self._stamps = None

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        return self._positions

    def visit_artifacts(self, row: dict) -> Table:
        """The rows of ``truth_artifacts`` drawn in this visit."""
        a = self.artifacts
        return a[np.asarray(a["visit"]) == int(row["visit"])] if len(a) else a

    def model_image(self, row: dict, visit_index: int, grid=None, zero_rows=None,
                    artifacts: bool = True) -> np.ndarray:
        """The noiseless image of the objects (electrons, float64, no sky): galaxies convolved with the PSF plus
        point sources at their fluxes of this visit, plus the visit's artefacts (trails, moving transients) unless
        ``artifacts`` is False. ``zero_rows``: truth rows to leave out (e.g. the variables, for tests that
        measure them)."""
        cfg = self.cfg
        band = row["band"]
        self.prepare_pointing(row, band)
        if grid is None:
            grid = psf_grid(row, cfg, float(cfg["galaxy_core_sigma_px"]))
        t0 = time.perf_counter()
        njy_per_e = electrons_to_njy_factor(row["zeroPoint"])
        arts = self.visit_artifacts(row) if artifacts else empty_artifacts()
        trails = arts[arts["type"] == "satellite_trail"]
        movers = arts[arts["type"] == "moving_transient"]
        scene = self._scenes[band]
        wcs = true_wcs(row, cfg) if len(arts) else None
        if len(trails):
            scene = scene.copy()
            for tr in trails:
                (x0, x1), (y0, y1) = wcs.all_world2pix([tr["raStart"], tr["raEnd"]], [tr["decStart"], tr["decEnd"]], 0)
                add_trail_to_scene(scene, self.pad, x0, y0, x1, y1, float(tr["lineFlux"]) * self.scale,
                                   float(tr["widthArcsec"]) * FWHM_TO_SIGMA / self.scale,
                                   float(cfg["galaxy_core_sigma_px"]))
        expected = convolve_with_psf_grid(scene, grid, self.width, self.height, self.pad)
        del scene
        expected = expected.astype(np.float64) * (1.0 / njy_per_e)
        t0 = self._tick("galaxy_convolution", t0)
        x, y = self._positions
        flux = self.sky.fluxes_at_visit(visit_index, band)
        if zero_rows is not None:
            flux[np.asarray(zero_rows, dtype=np.int64)] = 0.0
        pr = self.point_rows
        fe = flux[pr] / njy_per_e
        bright = fe > BRIGHT_STAR_E
        add_point_sources(expected, grid, x[pr][~bright], y[pr][~bright], fe[~bright])
        add_bright_stars(expected, row, cfg, x[pr][bright], y[pr][bright], fe[bright])
        if len(movers):
            mx, my, mf = [], [], []
            for mv in movers:
                (xs, xe), (ys, ye) = wcs.all_world2pix([mv["raStart"], mv["raEnd"]], [mv["decStart"], mv["decEnd"]], 0)
                tx, ty, tf = mover_track_pixels(xs, ys, xe, ye)
                mx.append(tx)
                my.append(ty)
                mf.append(tf * float(mv["flux"]) / njy_per_e)
            add_point_sources(expected, grid, np.concatenate(mx), np.concatenate(my), np.concatenate(mf))
        self._tick("point_sources", t0)
        return expected

    def sky_image(self, row: dict) -> np.ndarray:
        """The sky background (electrons/pixel): level skyBg with a linear gradient (skyGradX, skyGradY)."""
        cx, cy = (self.width - 1) / 2.0, (self.height - 1) / 2.0
        u = (np.arange(self.width) - cx) / (self.width / 2.0)
        v = (np.arange(self.height) - cy) / (self.height / 2.0)
        return row["skyBg"] * (1.0 + row["skyGradX"] * u[None, :] + row["skyGradY"] * v[:, None])

    def render(self, row: dict, visit_index: int) -> tuple[Exposure, dict]:
        """Render one visit; returns the eimage and the measured truth columns (seeing, m5, counts)."""
        cfg = self.cfg
        band = row["band"]
        self.prepare_pointing(row, band)
        t0 = time.perf_counter()
        grid = psf_grid(row, cfg, float(cfg["galaxy_core_sigma_px"]))
        cx, cy = (self.width - 1) / 2.0, (self.height - 1) / 2.0
        kernel = grid.to_psf().kernel_image(cx, cy)
        seeing = measure_fwhm(kernel) * self.scale
        rn = float(cfg["read_noise_e"])
        m5 = m5_from_noise(row["zeroPoint"], row["skyBg"], rn, n_eff_pixels(kernel))
        self._tick("psf", t0)
        expected = self.model_image(row, visit_index, grid)
        t0 = time.perf_counter()
        expected += self.sky_image(row)
        rng = np.random.default_rng([self.seed, int(row["visit"]), 11])
        charge = rng.poisson(expected).astype(np.float64)
        del expected
        n_cr = 0
        if cfg["cosmic_rays"]:
            n_cr = int(rng.poisson(cfg["cosmic_rays_per_mpix"] * self.width * self.height / 1e6))
            add_cosmic_rays(charge, rng, n_cr)
        full = float(cfg["saturation_e"])
        saturated = bleed_saturation(charge, full)
        image = (charge + rng.normal(0.0, rn, charge.shape)).astype(np.float32)
        del charge
        image[saturated] = full
        variance = np.maximum(image, 0) + np.float32(rn * rn)
        self._tick("noise_and_defects", t0)
        info = VisitInfo(visit=int(row["visit"]), band=band, mjd_tai=row["midpointMjdTai"], exp_time_s=row["expTime"],
                         airmass=row["airmass"], seeing_arcsec=row["seeingReported"], sky_level_e=row["skyBg"],
                         detector=0, pixel_scale_arcsec=self.scale, boresight_ra_deg=row["boresightRa"],
                         boresight_dec_deg=row["boresightDec"], rot_sky_pos_deg=row["rotSkyPos"])
        exposure = Exposure(image, np.zeros(image.shape, dtype=np.int32), variance, wcs=header_wcs(row, cfg),
                            psf=None, photo_calib=None, visit_info=info,
                            metadata={"gain": float(cfg["gain"]), "readnoise": rn, "saturate": full})
        measured = dict(seeing=seeing, fiveSigmaDepth=m5, nCosmicRays=n_cr,
                        nSaturatedPixels=int(saturated.sum()))
        return exposure, measured


def make_ref_cat(truth: Table, rng: np.random.Generator) -> Table:
    """Reference stars (truth stars with r < 23) with realistic errors, as if from a deeper earlier survey
    (5-sigma depth 24 in g, r, i): flux errors f sqrt(0.01^2 + SNR^-2), positional errors
    sqrt(5^2 + (700 / SNR)^2) mas; the catalogue values are the truth plus a draw of those errors.
    ``coord_raErr`` is the error on the sky (of RA cos Dec), in degrees."""
    sel = (np.asarray(truth["type"]) == "star") & (np.asarray(truth["r_flux"]) > 10 ** (-0.4 * (REF_MAG_LIMIT - 31.4)))
    t = truth[sel]
    n = len(t)
    f5 = 10 ** (-0.4 * (REF_DEPTH_MAG - 31.4))
    out = Table()
    out["id"] = np.asarray(t["id"], dtype=np.int64)
    snr_r = 5.0 * np.asarray(t["r_flux"]) / f5
    pos_err_mas = np.sqrt(5.0 ** 2 + (700.0 / snr_r) ** 2)
    err_deg = pos_err_mas / 3.6e6
    dec = np.asarray(t["dec"])
    out["coord_ra"] = (np.asarray(t["ra"]) + rng.normal(0, 1, n) * err_deg / np.cos(np.radians(dec))) % 360.0
    out["coord_dec"] = dec + rng.normal(0, 1, n) * err_deg
    out["coord_raErr"] = err_deg
    out["coord_decErr"] = err_deg
    for b in "gri":
        f = np.asarray(t[f"{b}_flux"], dtype=float)
        err = f * np.sqrt(0.01 ** 2 + (f5 / (5.0 * f)) ** 2)
        out[f"{b}_flux"] = f + rng.normal(0, 1, n) * err
        out[f"{b}_fluxErr"] = err
    return out


def _setup(preset, seed, opsim, n_visits, bands, overrides):
    overrides = dict(overrides)
    if bands is not None:
        overrides["bands"] = bands
    if n_visits is not None:
        if int(n_visits) < 1:
            raise SimulationInputError(f"--visits {n_visits}: need at least one visit")
        overrides["n_visits"] = int(n_visits)
    cfg = get_preset(preset, **overrides)
    cfg["width"] = cfg["height"] = int(cfg["size"])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimulationInputError(f"seed={seed!r}: use a non-negative integer")
    seed = int(seed)
    rng_cad, rng_sky = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)[:2])
    if opsim is not None:
        # the bands the file has, unless the caller chose some (a reloaded simulation records its bands)
        chosen = cfg["bands"] if "bands" in overrides else None
        cadence = read_opsim(opsim, cfg["field_ra_deg"], cfg["field_dec_deg"],
                             radius_deg=float(cfg["opsim_radius_deg"]), bands=chosen,
                             n_visits=cfg["n_visits"] if n_visits is not None else None)
        if chosen is None:
            present = set(cadence["band"])
            cfg["bands"] = "".join(b for b in "ugrizy" if b in present)
    else:
        cadence = generate_cadence(cfg, rng_cad)
    sky = make_sky_model(cfg, cadence, rng_sky)
    rows = plan_visits(cfg, cadence, seed)
    return cfg, cadence, sky, rows


def opsim_selection_summary(opsim, cadence: Table, cfg: dict) -> str:
    """One line: how many visits of an OpSim file are simulated, in which bands, and how many were left out, why."""
    left = cadence.meta.get("left_out", {})
    reasons = {"off_field": f"boresight more than {float(cfg['opsim_radius_deg']):g} deg from the field",
               "band": f"band not in --bands {cfg['bands']}", "filter": "filter not one of ugrizy",
               "n_visits": f"beyond the first {cfg['n_visits']} (--visits)"}
    parts = [f"{left[k]} {why}" for k, why in reasons.items() if left.get(k)]
    kept = f"OpSim {opsim}: {len(cadence)} visit(s) in bands {cfg['bands']} kept"
    return kept + (f"; {sum(left.values())} left out: {', '.join(parts)}" if parts else "; none left out")


def load_simulation(repo: Repository | str | Path):
    """Rebuild the simulator's state for a repository it wrote: (cfg, sky model, visit rows, VisitRenderer).

    For tests and validation that need the noiseless model (e.g. to measure variables on top of their hosts).
    The sky model is regenerated from the recorded preset, seed and options (it is not stored pixel by pixel).
    """
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    sim = repo.config.get("simulation_call")
    if not sim:
        raise SimulationInputError(f"{repo.root}: not written by twinkles simulate (no simulation_call in the "
                                   "repository configuration)")
    cfg, _, sky, rows = _setup(sim["preset"], sim["seed"], sim.get("opsim"), sim.get("n_visits"), None,
                               sim.get("overrides", {}))
    seed = int(sim["seed"])
    return cfg, sky, rows, VisitRenderer(cfg, sky, seed, artifacts=plan_artifacts(cfg, rows, seed))


def _check_no_stale_visits(repo_path, visits: set) -> None:
    """Refuse to write into a repository holding eimages of other visits: they would mix with the new field."""
    try:
        existing = Repository(repo_path)
    except Exception:  # noqa: BLE001 - not a repository yet
        return
    old = {r.data_id["visit"] for r in existing.query("eimage", runs=[RAW_RUN])}
    stale = sorted(old - visits)
    if stale:
        raise SimulationInputError(
            f"{repo_path}: the repository already holds eimages of {len(stale)} visit(s) this simulation would not "
            f"rewrite (e.g. visit {stale[0]}); simulate into a new directory or remove this one")


def simulate_field(repo_path: str | Path, preset: str = "tiny", seed: int = 0, opsim: str | Path | None = None,
                   n_visits: int | None = None, bands: str | None = None,
                   progress: Callable[[int, int, dict], None] | None = None,
                   echo: Callable[[str], None] | None = None, **overrides) -> Repository:
    """Simulate a field into the repository at ``repo_path`` (created if needed) and return it.

    ``overrides``: any preset key (see :mod:`twinkles.sim.presets`), e.g. ``size=256, cosmic_rays=False``.
    ``progress(i, n, info)`` is called after each visit with info = {visit, band, seconds, seeing}.
    ``echo(line)`` is told which visits of an OpSim file were kept and how many were left out, and why.
    With ``opsim`` and no ``bands``, the bands are those the file has.
    """
    cfg, cadence, sky, rows = _setup(preset, seed, opsim, n_visits, bands, overrides)
    if opsim is not None and echo is not None:
        echo(opsim_selection_summary(opsim, cadence, cfg))
    _check_no_stale_visits(repo_path, {r["visit"] for r in rows})
    repo = Repository.create(repo_path, repo_config_for(cfg, seed, opsim, n_visits, overrides))
    artifacts = plan_artifacts(cfg, rows, seed)
    renderer = VisitRenderer(cfg, sky, seed, artifacts=artifacts)
    # visits grouped by true pointing so that galaxy stamps are drawn once per pointing
    order = sorted(range(len(rows)), key=lambda i: (VisitRenderer.pointing_key(rows[i]), i))
    lc_rows = []
    visit_rows: list[dict | None] = [None] * len(rows)
    n = len(rows)
    bands_of_key: dict[tuple, set] = {}
    for r in rows:
        bands_of_key.setdefault(VisitRenderer.pointing_key(r), set()).add(r["band"])
    for done, i in enumerate(order, start=1):
        t0 = time.perf_counter()
        row = rows[i]
        renderer.prepare_pointing(row, "".join(sorted(bands_of_key[VisitRenderer.pointing_key(row)])))
        renderer.release_stamps()  # every band's scene of this pointing is built: the stamps are not needed
        exposure, measured = renderer.render(row, i)
        repo.put(exposure, "eimage", {"visit": row["visit"], "detector": 0}, run=RAW_RUN)
        visit_rows[i] = dict(row, **measured)
        x, y = renderer.positions()
        vr = sky.var_rows
        inside = (x[vr] >= -0.5) & (x[vr] < cfg["width"] - 0.5) & (y[vr] >= -0.5) & (y[vr] < cfg["height"] - 0.5)
        for k in np.flatnonzero(inside):
            lc_rows.append((int(sky.truth["id"][vr[k]]), row["visit"], row["band"], row["midpointMjdTai"],
                            float(sky.var_flux[k, i])))
        if progress is not None:
            progress(done, n, dict(visit=row["visit"], band=row["band"], seconds=time.perf_counter() - t0,
                                   seeing=measured["seeing"]))
    renderer.release_stamps()
    rng_ref = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    repo.put(make_ref_cat(sky.truth, rng_ref), "ref_cat", {}, run=RAW_RUN)
    repo.put(sky.truth, "truth_catalog", {}, run=TRUTH_RUN)
    lc = Table(rows=lc_rows, names=("id", "visit", "band", "midpointMjdTai", "flux"),
               dtype=(np.int64, np.int64, "U1", float, float)) if lc_rows else Table(
        names=("id", "visit", "band", "midpointMjdTai", "flux"), dtype=(np.int64, np.int64, "U1", float, float))
    lc.sort(["id", "visit"])
    repo.put(lc, "truth_lightcurves", {}, run=TRUTH_RUN)
    vt = Table(rows=[[r[c] for c in _VISIT_COLUMNS] for r in visit_rows], names=_VISIT_COLUMNS)
    for name, unit in _VISIT_UNITS.items():  # as in Rubin's DP1 schema where it has the column
        vt[name].unit = unit
    repo.put(vt, "visit_table", {}, run=TRUTH_RUN)
    repo.put(artifacts, "truth_artifacts", {}, run=TRUTH_RUN)
    return repo


_VISIT_COLUMNS = ("visit", "band", "midpointMjdTai", "expTime", "airmass", "seeing", "seeingReported", "skyBg",
                  "skyBrightness", "zeroPoint", "fiveSigmaDepth", "fiveSigmaDepthReported", "cloudExtinction",
                  "boresightRa", "boresightDec", "rotSkyPos", "trueCrval1", "trueCrval2", "trueRotation",
                  "wcsOffsetRa", "wcsOffsetDec", "wcsRotOffset", "skyGradX", "skyGradY", *PSF_COLUMNS,
                  "nCosmicRays", "nSaturatedPixels")
_VISIT_UNITS = {"midpointMjdTai": "d", "expTime": "s", "seeing": "arcsec", "seeingReported": "arcsec",
                "boresightRa": "deg", "boresightDec": "deg", "rotSkyPos": "deg"}
