"""Sky-model pieces: strong lensing, light curves."""

import math

import numpy as np
import pytest

from twinkles.sim.skymodel import drw, rr_lyrae_flux, sn_ia_flux, solve_sis_shear


def test_sis_without_shear_gives_two_images_at_beta_plus_minus_theta_e():
    pos, mu, fermat = solve_sis_shear(np.array([0.3, 0.0]), 1.2, 0.0, 0.0)
    assert len(pos) == 2
    r = np.sort(np.hypot(pos[:, 0], pos[:, 1]))
    assert r == pytest.approx([1.2 - 0.3, 1.2 + 0.3], abs=1e-6)
    # SIS magnifications: mu = 1 / (1 - theta_E / r)
    assert np.sort(np.abs(mu)) == pytest.approx(np.sort(np.abs(1 / (1 - 1.2 / r))), rel=1e-6)
    # the image nearer the lens (the saddle point) arrives last
    assert fermat[np.argmin(np.hypot(pos[:, 0], pos[:, 1]))] > fermat[np.argmax(np.hypot(pos[:, 0], pos[:, 1]))]


def test_sis_with_shear_and_small_offset_gives_a_quad_satisfying_the_lens_equation():
    beta, te, g1, g2 = np.array([0.02, 0.01]), 1.3, 0.08, 0.02
    pos, mu, _ = solve_sis_shear(beta, te, g1, g2)
    assert len(pos) == 4
    gam = np.array([[g1, g2], [g2, -g1]])
    for th in pos:
        back = th - te * th / np.hypot(*th) - gam @ th
        assert back == pytest.approx(beta, abs=1e-8)
    assert (mu > 0).sum() == 2 and (mu < 0).sum() == 2  # two minima, two saddles


def test_damped_random_walk_statistics():
    t = np.sort(np.random.default_rng(0).uniform(0, 40000, 4000))
    x = drw(t, 100.0, 0.2, np.random.default_rng(1))
    assert np.std(x) == pytest.approx(0.2, rel=0.15)
    # structure function at lags << tau is small, at lags >> tau is sqrt(2) sigma
    close = np.abs(np.diff(x))[np.diff(t) < 3]
    assert np.sqrt(np.mean(close ** 2)) < 0.1


def test_sn_light_curve_rises_peaks_and_declines():
    t = np.linspace(59990, 60100, 1101)
    f = sn_ia_flux(t, 60000.0, 0.3, 1000.0, "r")
    assert np.all(f[t < 60000] == 0)
    peak_t = t[np.argmax(f)]
    assert peak_t == pytest.approx(60000 + 18 * 1.3, abs=0.2)
    assert f.max() == pytest.approx(1000.0, rel=1e-3)
    assert f[-1] < 0.3 * f.max()
    g = sn_ia_flux(t, 60000.0, 0.3, 1000.0, "g")
    assert g[-1] / g.max() < f[-1] / f.max()  # bluer bands decline faster


def test_rr_lyrae_is_periodic_with_the_right_amplitude():
    t = np.linspace(0, 3, 3001)
    f = rr_lyrae_flux(t, 0.5, 0.1, 19.0, 0.8)
    assert rr_lyrae_flux(t + 0.5, 0.5, 0.1, 19.0, 0.8) == pytest.approx(f)
    mags = 31.4 - 2.5 * np.log10(f)
    assert mags.max() - mags.min() == pytest.approx(0.8, abs=0.01)
    assert math.isclose(mags.max(), 19.0, abs_tol=0.01)


# ---------------------------------------------------------------------------------------- faint galaxies
def _deep_tiny(**overrides):
    from twinkles.sim.cadence import generate_cadence
    from twinkles.sim.presets import get_preset
    from twinkles.sim.skymodel import make_sky_model
    cfg = get_preset("tiny", **overrides)
    cfg["width"] = cfg["height"] = cfg["size"]
    cadence = generate_cadence(cfg, np.random.default_rng(1))
    return cfg, cadence, make_sky_model(cfg, cadence, np.random.default_rng(2))


def test_faint_galaxy_counts_follow_the_model():
    """Galaxy counts per 0.5-mag bin from r = 22 to the faint limit (28 here) against the model's expectation
    (Poisson, 4 sigma per bin and a chi^2 over all bins), the faint-end slope d log N / dm fitted from the counts
    within 4 standard errors of faint_galaxy_slope, and continuity at the join with the bright population."""
    from twinkles.sim.skymodel import galaxy_counts_per_arcmin2
    cfg, cadence, sky = _deep_tiny(faint_galaxy_mag_max=28.0)
    t = sky.truth
    gal = np.asarray(t["type"]) == "galaxy"
    r = 31.4 - 2.5 * np.log10(np.asarray(t["r_flux"])[gal])
    xi, eta = sky.xi[gal], sky.eta[gal]
    cover = np.hypot(xi, eta).max()  # the population fills a disk covering the detector at any rotation
    area = math.pi * cover ** 2 / 3600.0
    edges = np.arange(22.0, 28.01, 0.5)
    n_obs = np.histogram(r, edges)[0]
    n_exp = np.array([galaxy_counts_per_arcmin2(cfg, a, b, 28.0) * area for a, b in zip(edges[:-1], edges[1:])])
    assert n_obs.sum() > 2000 and r.max() < 28.0 and r[r > 25.5].size > 0.8 * n_obs.sum()
    z = (n_obs - n_exp) / np.sqrt(n_exp)
    assert np.all(np.abs(z) < 4), z
    chi2 = float(np.sum(z ** 2))
    dof = len(z)
    assert chi2 < dof + 4 * math.sqrt(2 * dof), chi2
    # the slope beyond 25.5 from the counts: least squares on log10 N per bin, errors 1 / (ln 10 sqrt(N))
    faint = edges[:-1] >= 25.5
    mid = 0.5 * (edges[:-1] + edges[1:])[faint]
    y, w = np.log10(n_obs[faint]), n_obs[faint] * math.log(10) ** 2
    a = np.vstack([np.ones_like(mid), mid]).T
    cov = np.linalg.inv(a.T @ (w[:, None] * a))
    slope = (cov @ a.T @ (w * y))[1]
    assert abs(slope - cfg["faint_galaxy_slope"]) < 4 * math.sqrt(cov[1, 1]), (slope, math.sqrt(cov[1, 1]))
    # realistic density: dN/dm ~ 1e5 - 5e5 per deg^2 per mag at r = 26 (deep R counts, e.g. Hogg et al. 1997)
    per_deg2_mag = galaxy_counts_per_arcmin2(cfg, 25.75, 26.25, 28.0) * 3600.0
    assert 1e5 < per_deg2_mag < 5e5


def test_faint_limit_is_margin_beyond_the_deepest_coadd_of_the_cadence():
    from twinkles.sim.skymodel import coadd_depths, faint_galaxy_limit
    cfg, cadence, sky = _deep_tiny()
    depths = coadd_depths(cadence)
    for b in set(cadence["band"]):
        m5 = np.asarray(cadence["fiveSigmaDepth"])[np.asarray(cadence["band"]) == b]
        # N equal visits gain 1.25 log10 N; unequal ones lie between the best single visit and that
        assert m5.max() <= depths[b] <= m5.max() + 1.25 * math.log10(len(m5)) + 1e-9
    limit = faint_galaxy_limit(cfg, cadence)
    assert limit >= max(depths.values()) + 1.5 - 0.5  # colours: i is ~0.5 mag brighter than r for faint disks
    r = 31.4 - 2.5 * np.log10(np.asarray(sky.truth["r_flux"])[np.asarray(sky.truth["type"]) == "galaxy"])
    assert limit - 0.05 < r.max() < limit
    # twinkles1's cadence: ~220 r visits reach r ~ 27.2; the population goes ~1.5 mag beyond
    from twinkles.sim.cadence import generate_cadence
    from twinkles.sim.presets import get_preset
    c1 = get_preset("twinkles1")
    cad1 = generate_cadence(c1, np.random.default_rng(0))
    assert 26.8 < coadd_depths(cad1)["r"] < 27.6
    assert 28.3 < faint_galaxy_limit(c1, cad1) < 29.2
    assert faint_galaxy_limit(dict(cfg, faint_galaxy_mag_max=27.0), cadence) == 27.0


def test_faint_galaxies_are_small_disks_in_the_truth_and_leave_the_rest_unchanged():
    cfg, cadence, sky = _deep_tiny(faint_galaxy_mag_max=28.0)
    _, _, bright_only = _deep_tiny(faint_galaxies=False)
    t, t0 = sky.truth, bright_only.truth
    # the other populations are identical (the faint galaxies are drawn last, appended to the table)
    assert len(t) > len(t0)
    for col in t0.colnames:
        a, b = np.asarray(t[col][:len(t0)]), np.asarray(t0[col])
        assert np.array_equal(a, b) or (a.dtype.kind == "f" and np.allclose(a, b, equal_nan=True, rtol=0)), col
    faint = t[len(t0):]
    assert set(faint["type"]) == {"galaxy"} and len(np.unique(t["id"])) == len(t)
    r = 31.4 - 2.5 * np.log10(np.asarray(faint["r_flux"]))
    assert r.min() >= cfg["galaxy_mag_range"][1]
    for b in "ugrizy":
        assert np.all(faint[f"{b}_bulgeFrac"] == 0) and np.all(np.asarray(faint[f"{b}_flux"]) > 0)
    assert np.all(np.isnan(faint["bulgeHlr"])) and np.all(np.isfinite(faint["diskHlr"]))
    assert np.all((faint["diskQ"] >= 0.2) & (faint["diskQ"] <= 1)) and np.all(np.isfinite(faint["redshift"]))
    # sizes shrink with magnitude: median hlr 0.6" 10^(-0.11 (r - 22)) (log-normal scatter 0.3)
    hlr = np.asarray(faint["diskHlr"])
    for lo, hi in ((25.5, 26.5), (27.0, 28.0)):
        sel = (r >= lo) & (r < hi)
        pred = 0.6 * 10 ** (-0.11 * (0.5 * (lo + hi) - 22.0))
        assert np.median(hlr[sel]) == pytest.approx(pred, rel=0.1)
    assert np.median(hlr[r > 27]) < np.median(hlr[r < 26])
