"""Satellite trails and moving transients: in the pixels of their visits where truth_artifacts says, with the
recorded brightness (tolerances from the noise); reproducible by seed; absent when switched off."""

import math

import numpy as np
import pytest

from twinkles.sim.artifacts import FWHM_TO_SIGMA, mover_track_pixels
from twinkles.sim.lsst import electrons_to_njy_factor
from twinkles.sim.psf import psf_grid, true_psf
from twinkles.sim.render import add_point_sources
from twinkles.sim.simulate import load_simulation, simulate_field
from twinkles.sim.wcs import true_wcs

ART = dict(cosmic_rays=False, satellite_trails=True, trail_visit_fraction=0.34, moving_transients=True,
           n_moving_transients=10)


@pytest.fixture(scope="module")
def art_field(tmp_path_factory):
    repo = simulate_field(tmp_path_factory.mktemp("art") / "tiny", preset="tiny", seed=11, **ART)
    return repo, load_simulation(repo)


def _residual(repo, state, i):
    """(visit row, eimage, image - true sky - noiseless model of everything but the artefacts, njy per e)."""
    cfg, sky, rows, renderer = state
    row = rows[i]
    exp = repo.get("eimage", {"visit": row["visit"], "detector": 0})
    model = renderer.model_image(row, i, artifacts=False)
    return row, exp, exp.image - renderer.sky_image(row) - model, electrons_to_njy_factor(row["zeroPoint"])


def test_truth_artifacts_table(art_field):
    repo, (cfg, sky, rows, renderer) = art_field
    a = repo.get("truth_artifacts")
    assert a.colnames == ["artifactId", "type", "visit", "band", "midpointMjdTai", "ra", "dec", "raStart",
                          "decStart", "raEnd", "decEnd", "flux", "lineFlux", "surfaceBrightness", "widthArcsec"]
    trails, movers = a[a["type"] == "satellite_trail"], a[a["type"] == "moving_transient"]
    assert len(trails) == round(0.34 * len(rows)) and len(set(trails["visit"])) == len(trails)
    assert len(set(movers["artifactId"])) == 10 and not set(trails["artifactId"]) & set(movers["artifactId"])
    vt = repo.get("visit_table")
    by_visit = {int(v): (b, t) for v, b, t in zip(vt["visit"], vt["band"], vt["midpointMjdTai"])}
    for r in a:
        assert (r["band"], r["midpointMjdTai"]) == by_visit[int(r["visit"])]
    # trails: sb = lineFlux / (sqrt(2 pi) sigma), the width as configured, endpoints on the detector's border
    np.testing.assert_allclose(trails["surfaceBrightness"] * math.sqrt(2 * math.pi) * 1.5 * FWHM_TO_SIGMA,
                               trails["lineFlux"], rtol=1e-12)
    assert np.all(trails["widthArcsec"] == 1.5) and np.all(np.isnan(trails["flux"]))
    sb_mag = 31.4 - 2.5 * np.log10(trails["surfaceBrightness"])
    assert np.all((sb_mag >= 21.0) & (sb_mag <= 22.5))
    for r in trails:
        i = [k for k, row in enumerate(rows) if row["visit"] == r["visit"]][0]
        x, y = true_wcs(rows[i], cfg).all_world2pix([r["raStart"], r["raEnd"]], [r["decStart"], r["decEnd"]], 0)
        on_edge = np.isclose(x, -0.5) | np.isclose(x, 511.5) | np.isclose(y, -0.5) | np.isclose(y, 511.5)
        assert on_edge.all() and math.hypot(x[1] - x[0], y[1] - y[0]) > 300
    # movers: several visits each, moving between them (one night), r 19-21 with asteroid colours
    assert np.all(np.isnan(movers["lineFlux"])) and np.all(movers["flux"] > 0)
    for mid in set(movers["artifactId"]):
        m = movers[movers["artifactId"] == mid]
        assert np.ptp(m["midpointMjdTai"]) < 0.5
        if len(m) > 1:
            step = np.hypot(np.diff(m["ra"]) * math.cos(math.radians(-27.44)), np.diff(m["dec"])) * 3600
            rate = step / np.diff(m["midpointMjdTai"]) / 3600  # deg / day
            assert np.all((rate > 0.149) & (rate < 0.501)) and np.all(step > 0.5)


def test_trail_is_in_its_visit_at_the_recorded_place_and_brightness(art_field):
    """Across the trail (|d| < 16 px of its recorded centre line, 20 px from the image edges): the flux per unit
    length matches the recorded lineFlux, the light is centred on the recorded line and the peak (|d| < 0.5 px)
    matches the recorded surface brightness and width convolved with the true PSF -- each within 4 sigma of
    the pixel noise."""
    repo, state = art_field
    cfg, sky, rows, renderer = state
    a = repo.get("truth_artifacts")
    trails = a[a["type"] == "satellite_trail"]
    assert len(trails) >= 2
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    for tr in trails:
        i = [k for k, row in enumerate(rows) if row["visit"] == tr["visit"]][0]
        row, exp, resid, njy = _residual(repo, state, i)
        (x0, x1), (y0, y1) = true_wcs(row, cfg).all_world2pix([tr["raStart"], tr["raEnd"]],
                                                            [tr["decStart"], tr["decEnd"]], 0)
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        d = -uy * (xx - x0) + ux * (yy - y0)
        t = ux * (xx - x0) + uy * (yy - y0)
        inner = (xx > 20) & (xx < 491) & (yy > 20) & (yy < 491) & (exp.image < 0.8 * cfg["saturation_e"])
        tin = t[inner & (np.abs(d) < 1)]
        t_lo, t_hi = tin.min() + 5, tin.max() - 5
        strip = inner & (np.abs(d) < 16) & (t > t_lo) & (t < t_hi)
        along = t_hi - t_lo
        line_e = float(tr["lineFlux"]) * 0.2 / njy  # electrons per pixel of length
        measured = resid[strip].sum() / along
        err = math.sqrt(exp.variance[strip].sum()) / along
        assert abs(measured - line_e) < 4 * err, (measured, line_e, err)
        assert err < 0.05 * line_e  # the test has power
        # centred on the recorded line
        c = (d[strip] * resid[strip]).sum() / resid[strip].sum()
        c_err = math.sqrt((d[strip] ** 2 * exp.variance[strip]).sum()) / resid[strip].sum()
        assert abs(c) < 4 * c_err + 0.02, (c, c_err)
        # the peak: the recorded Gaussian cross-section (sigma from widthArcsec) convolved with the true PSF's
        # line-spread function across the trail
        kern = true_psf(row, cfg).kernel_image(0.5 * (x0 + x1), 0.5 * (y0 + y1))
        h = kern.shape[0] // 2
        ky, kx = np.mgrid[-h:h + 1, -h:h + 1]
        kd = (-uy * kx + ux * ky).ravel()
        s = float(tr["widthArcsec"]) * FWHM_TO_SIGMA / 0.2
        core = inner & (np.abs(d) < 0.5) & (t > t_lo) & (t < t_hi)
        dc = d[core]
        g = np.exp(-0.5 * ((dc[:, None] - kd[None, :]) / s) ** 2) / (math.sqrt(2 * math.pi) * s)
        expected_peak = line_e * (g * kern.ravel()[None, :]).sum(axis=1)  # electrons per pixel
        meas = resid[core].sum()
        perr = math.sqrt(exp.variance[core].sum())
        assert abs(meas - expected_peak.sum()) < 4 * perr, (meas, expected_peak.sum(), perr)
        assert perr < 0.05 * expected_peak.sum()
    # and the visits without a trail have none: the same strip there holds only noise
    other = [k for k, row in enumerate(rows) if row["visit"] not in set(trails["visit"])][0]
    _, exp, resid, _ = _residual(repo, state, other)
    assert abs(resid[strip].sum()) < 4 * math.sqrt(exp.variance[strip].sum())


def test_moving_transients_at_recorded_positions_and_fluxes(art_field):
    """Each mover in each visit: its PSF flux (the true PSF trailed along the recorded track, fitted by weighted
    least squares to image - sky - static model) against the recorded flux, and its centroid (first moments in
    a 5-pixel radius) against the recorded mid-exposure position: pulls have mean ~0 and sd ~1."""
    repo, state = art_field
    cfg, sky, rows, renderer = state
    a = repo.get("truth_artifacts")
    movers = a[a["type"] == "moving_transient"]
    f_pulls, x_pulls = [], []
    for i, row in enumerate(rows):
        ms = movers[movers["visit"] == row["visit"]]
        if not len(ms):
            continue
        row, exp, resid, njy = _residual(repo, state, i)
        wcs = true_wcs(row, cfg)
        grid = psf_grid(row, cfg)
        for mv in ms:
            (xs, xe), (ys, ye) = wcs.all_world2pix([mv["raStart"], mv["raEnd"]], [mv["decStart"], mv["decEnd"]], 0)
            xm, ym = (float(v) for v in wcs.all_world2pix(mv["ra"], mv["dec"], 0))
            ix, iy = int(round(xm)), int(round(ym))
            if not (15 <= ix < 497 and 15 <= iy < 497):
                continue
            sl = (slice(iy - 15, iy + 16), slice(ix - 15, ix + 16))
            if exp.image[sl].max() > 0.8 * cfg["saturation_e"]:
                continue
            tx, ty, tf = mover_track_pixels(xs, ys, xe, ye)
            tmpl = np.zeros((512, 512))
            add_point_sources(tmpl, grid, tx, ty, tf)
            tmp, r, v = tmpl[sl], resid[sl], exp.variance[sl]
            flux_e = (tmp * r / v).sum() / (tmp ** 2 / v).sum()
            f_err = 1.0 / math.sqrt((tmp ** 2 / v).sum())
            f_pulls.append((flux_e - float(mv["flux"]) / njy) / f_err)
            yy, xx = np.mgrid[sl]
            ap = (xx - xm) ** 2 + (yy - ym) ** 2 <= 25
            tot = r[ap].sum()
            for coord, true in ((xx, xm), (yy, ym)):
                c = (coord[ap] * r[ap]).sum() / tot
                c_err = math.sqrt((((coord[ap] - true) ** 2) * v[ap]).sum()) / tot
                x_pulls.append((c - true) / c_err)
    f_pulls, x_pulls = np.array(f_pulls), np.array(x_pulls)
    assert len(f_pulls) >= 12
    for p in (f_pulls, x_pulls):
        n = len(p)
        assert abs(p.mean()) < 4 / math.sqrt(n), p
        assert abs(p.std() - 1) < 4 / math.sqrt(2 * n), p


def test_artifacts_reproducible_by_seed_and_absent_when_off(tmp_path):
    small = dict(size=256, n_visits=2, cosmic_rays=False, saturated_stars=False, satellite_trails=True,
                 trail_visit_fraction=0.5, moving_transients=True, n_moving_transients=3)
    r1 = simulate_field(tmp_path / "a", preset="tiny", seed=4, **small)
    r2 = simulate_field(tmp_path / "b", preset="tiny", seed=4, **small)
    r3 = simulate_field(tmp_path / "c", preset="tiny", seed=5, **small)
    off = simulate_field(tmp_path / "d", preset="tiny", seed=4,
                         **dict(small, satellite_trails=False, moving_transients=False))
    a1, a2, a3 = (r.get("truth_artifacts") for r in (r1, r2, r3))
    assert len(a1) >= 2 and a1.colnames == a2.colnames
    for c in a1.colnames:
        assert np.array_equal(np.asarray(a1[c]), np.asarray(a2[c]), equal_nan=a1[c].dtype.kind == "f"), c
    assert not np.allclose(np.asarray(a1["ra"])[:1], np.asarray(a3["ra"])[:1], rtol=0, atol=1e-9)
    assert len(off.get("truth_artifacts")) == 0
    # the static sky is the same with and without artefacts; the pixels differ only by them
    for name in ("truth_catalog", "visit_table"):
        t1, t0 = r1.get(name), off.get(name)
        assert all(np.array_equal(np.asarray(t1[c]), np.asarray(t0[c]),
                                  equal_nan=t1[c].dtype.kind == "f") for c in t1.colnames), name
    for ref in r1.query("eimage"):
        e1, e2 = r1.get("eimage", ref.data_id), r2.get("eimage", ref.data_id)
        assert np.array_equal(e1.image, e2.image)
    e3 = r3.get("eimage", r1.query("eimage")[0].data_id)
    assert not np.array_equal(e3.image, r1.get("eimage", r1.query("eimage")[0].data_id).image)
