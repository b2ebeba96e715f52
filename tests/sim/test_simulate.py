"""End-to-end: simulated tiny fields against their own truth."""

import math

import numpy as np
import pytest
from astropy.table import Table
from scipy import ndimage

from twinkles.cli import main
from twinkles.compression import exposure_steps
from twinkles.psf import measure_fwhm
from twinkles.repo import Repository
from twinkles.sim.lsst import electrons_to_njy_factor
from twinkles.sim.psf import psf_grid, true_psf
from twinkles.sim.render import add_point_sources
from twinkles.sim.simulate import simulate_field
from twinkles.sim.wcs import tan_project, true_wcs


def _visit_rows(repo):
    vt = repo.get("visit_table")
    return [{c: (vt[c][i].item() if hasattr(vt[c][i], "item") else vt[c][i]) for c in vt.colnames}
            for i in range(len(vt))]


def _pull_tolerances(n):
    """|mean| and |sd - 1| allowed for n unit-normal pulls (4 sigma of each estimator)."""
    return 4.0 / math.sqrt(n), 4.0 / math.sqrt(2.0 * n)


def test_repository_contents(tiny_repo):
    repo = tiny_repo
    cfg = repo.config
    for key in ("field_ra_deg", "field_dec_deg", "pixel_scale_arcsec", "width", "height", "preset", "seed", "gain",
                "read_noise_e", "saturation_e"):
        assert key in cfg
    assert cfg["field_ra_deg"] == 53.0091 and cfg["field_dec_deg"] == -27.4389 and cfg["pixel_scale_arcsec"] == 0.2
    refs = repo.query("eimage")
    assert len(refs) == 6 and all(r.run == "raw" for r in refs)
    exp = repo.get("eimage", refs[0].data_id)
    assert exp.image.shape == (512, 512) and not exp.mask.any()
    assert exp.psf is None and exp.photo_calib is None
    assert exp.metadata["saturate"] == cfg["saturation_e"] and exp.metadata["readnoise"] == cfg["read_noise_e"]
    vi = exp.visit_info
    assert vi.band in "ri" and vi.exp_time_s == 30.0 and vi.sky_level_e > 100 and math.isfinite(vi.seeing_arcsec)
    assert np.median(exp.image) == pytest.approx(vi.sky_level_e, rel=0.05)  # electrons including the sky
    # variance = counts + read noise^2, to within the lossy storage's quantization of each plane (half a step)
    step_image, step_var = exposure_steps(exp.variance)
    np.testing.assert_allclose(exp.variance, np.maximum(exp.image, 0) + cfg["read_noise_e"] ** 2, rtol=1e-6,
                               atol=(step_image + step_var) / 2 * 1.001)
    truth = repo.get("truth_catalog")
    for col in ("id", "type", "ra", "dec", "u_flux", "g_flux", "r_flux", "i_flux", "z_flux", "y_flux", "redshift",
                "hostId", "lensId", "isVariable"):
        assert col in truth.colnames
    ref = repo.get("ref_cat")
    assert ref.colnames == ["id", "coord_ra", "coord_dec", "coord_raErr", "coord_decErr", "g_flux", "g_fluxErr",
                            "r_flux", "r_fluxErr", "i_flux", "i_fluxErr"]
    assert set(ref["id"]) <= set(truth["id"][truth["type"] == "star"])
    lc = repo.get("truth_lightcurves")
    assert lc.colnames == ["id", "visit", "band", "midpointMjdTai", "flux"]
    vt = repo.get("visit_table")
    for col in ("visit", "band", "midpointMjdTai", "expTime", "airmass", "seeing", "skyBg", "skyBrightness",
                "zeroPoint", "fiveSigmaDepth"):
        assert col in vt.colnames
    assert np.all((vt["fiveSigmaDepth"] > 22.5) & (vt["fiveSigmaDepth"] < 25.5))
    assert np.all(vt["nCosmicRays"] > 0) and np.all(vt["nSaturatedPixels"] > 0)
    # saturated pixels sit at the saturation level (to within the lossy storage's half step)
    assert abs(exp.image.max() - cfg["saturation_e"]) <= step_image / 2 * 1.001 + 0.01


def test_tiny_field_holds_every_kind_of_object(tiny_repo):
    repo = tiny_repo
    truth = repo.get("truth_catalog")
    vt = repo.get("visit_table")
    row = _visit_rows(repo)[0]
    wcs = true_wcs(row, repo.config)
    x, y = wcs.all_world2pix(truth["ra"], truth["dec"], 0)
    inside = (x > 10) & (x < 501) & (y > 10) & (y < 501)
    typ = np.asarray(truth["type"])
    flux_e = np.asarray(truth[f"{row['band']}_flux"]) / electrons_to_njy_factor(row["zeroPoint"])
    # bright unsaturated stars with S/N > 50 (PSF-optimal S/N with n_eff ~ 2.27 (FWHM/pixel)^2)
    n_eff = 2.266 * (row["seeing"] / 0.2) ** 2
    snr = flux_e / np.sqrt(flux_e + n_eff * (row["skyBg"] + 81))
    peak = flux_e * 0.06 + row["skyBg"]
    good = inside & (typ == "star") & (snr > 50) & (peak < 0.8 * repo.config["saturation_e"])
    assert good.sum() >= 30
    assert (inside & (typ == "star") & (peak > repo.config["saturation_e"])).sum() >= 1
    assert (inside & (typ == "galaxy")).sum() > 100
    for kind in ("sn", "agn", "variable_star", "lens_galaxy"):
        assert (inside & (typ == kind)).sum() >= 1, kind
    for lens in truth["id"][inside & (typ == "lens_galaxy")]:
        n_img = ((typ == "lensed_qso_image") & (np.asarray(truth["lensId"]) == lens)).sum()
        assert n_img in (2, 4)
    # supernovae explode during the visits: some are off at the first visit and on later
    lc = repo.get("truth_lightcurves")
    sn_ids = truth["id"][typ == "sn"]
    first, last = vt["visit"].min(), vt["visit"].max()
    exploding = [i for i in sn_ids if lc["flux"][(lc["id"] == i) & (lc["visit"] == first)].sum() == 0
                 and lc["flux"][(lc["id"] == i) & (lc["visit"] == last)].sum() > 0]
    assert len(exploding) >= 1


def _isolated_stars(repo, state, i, row, exp, min_snr=50.0, radius=8.0, max_contamination=0.3):
    """Bright unsaturated stars (S/N > min_snr in a ``radius`` aperture) whose aperture holds less than
    ``max_contamination`` sigma of light from anything else (known from the truth), away from saturated stars."""
    cfg, sky, rows, renderer = state
    model = renderer.model_image(row, i)
    x, y = renderer.positions()
    t = sky.truth
    grid = psf_grid(row, cfg)
    njy = electrons_to_njy_factor(row["zeroPoint"])
    sat = ndimage.binary_dilation(exp.image >= 0.999 * cfg["saturation_e"], iterations=40)  # (stored quantized)
    out = []
    cand = np.flatnonzero((np.asarray(t["type"]) == "star") & (x > 20) & (x < 491) & (y > 20) & (y < 491))
    for k in cand:
        fe = float(t[f"{row['band']}_flux"][k]) / njy
        own = np.zeros_like(model)
        add_point_sources(own, grid, x[[k]], y[[k]], [fe])
        ix, iy = int(round(x[k])), int(round(y[k]))
        if own.max() + row["skyBg"] > 0.8 * cfg["saturation_e"] or sat[iy, ix]:
            continue
        yy, xx = np.mgrid[iy - 15:iy + 16, ix - 15:ix + 16]
        ap = (xx - x[k]) ** 2 + (yy - y[k]) ** 2 <= radius ** 2
        sl = (slice(iy - 15, iy + 16), slice(ix - 15, ix + 16))
        sigma = math.sqrt(exp.variance[sl][ap].sum())
        signal = own[sl][ap].sum()
        others = (model - own)[sl]
        if signal / sigma < min_snr or others[ap].sum() > max_contamination * sigma:
            continue
        out.append(dict(k=k, x=x[k], y=y[k], fe=fe, own=own, sl=sl, ap=ap, sigma=sigma, others=others))
    return out


def test_star_aperture_fluxes_match_truth(clean_repo, clean_state):
    """Aperture flux (r = 8 px = 1.6") of isolated bright stars minus the true sky, against the truth flux times
    the enclosed fraction of the true PSF (plus the known faint light of neighbours): pulls have mean 0, sd 1."""
    pulls = []
    for i, row in enumerate(_visit_rows(clean_repo)):
        exp = clean_repo.get("eimage", {"visit": row["visit"], "detector": 0})
        sky = clean_state[3].sky_image(row)
        for s in _isolated_stars(clean_repo, clean_state, i, row, exp):
            measured = (exp.image[s["sl"]] - sky[s["sl"]])[s["ap"]].sum()
            expected = s["own"][s["sl"]][s["ap"]].sum()
            assert 0.9 * s["fe"] < expected < s["fe"]  # the aperture holds ~95% of the light
            # the (< 0.3 sigma) light of neighbours is known from the truth: count it in, not as a bias
            pulls.append((measured - expected - s["others"][s["ap"]].sum()) / s["sigma"])
    pulls = np.array(pulls)
    tol_mean, tol_sd = _pull_tolerances(len(pulls))
    assert len(pulls) >= 40
    assert abs(pulls.mean()) < tol_mean
    assert abs(pulls.std() - 1.0) < tol_sd


def test_psf_fwhm_of_stacked_stars_matches_visit_seeing(clean_repo, clean_state):
    for i, row in enumerate(_visit_rows(clean_repo)):
        exp = clean_repo.get("eimage", {"visit": row["visit"], "detector": 0})
        sky = clean_state[3].sky_image(row)
        stack = np.zeros((41, 41))
        stars = _isolated_stars(clean_repo, clean_state, i, row, exp, min_snr=100.0)
        assert len(stars) >= 5
        model = clean_state[3].model_image(row, i)
        for s in stars:
            ix, iy = int(round(s["x"])), int(round(s["y"]))
            sl = (slice(iy - 20, iy + 21), slice(ix - 20, ix + 21))
            cut = exp.image[sl] - sky[sl] - (model - s["own"])[sl]  # neighbours' light removed (truth)
            centred = ndimage.shift(cut.astype(float), (-(s["y"] - iy), -(s["x"] - ix)), order=3, mode="nearest")
            stack += centred / s["fe"]
        fwhm = measure_fwhm(stack) * 0.2
        assert fwhm == pytest.approx(row["seeing"], rel=0.03)
        # and the visit's seeing is the true PSF's FWHM at the sensor centre
        assert true_psf(row, clean_repo.config).fwhm(255.5, 255.5) * 0.2 == pytest.approx(row["seeing"], rel=1e-6)


def test_variables_follow_their_light_curves(clean_repo, clean_state):
    """Joint PSF fit of every variable's flux at its true position, on the image minus the sky and minus the
    noiseless model of everything static (so that hosts and lens galaxies are gone): pulls against
    truth_lightcurves have mean 0 and sd 1."""
    cfg, sky_model, rows, renderer = clean_state
    truth = clean_repo.get("truth_catalog")
    lc = clean_repo.get("truth_lightcurves")
    var_ids = np.asarray(truth["id"])[sky_model.var_rows]
    pulls, kinds = [], set()
    for i, row in enumerate(_visit_rows(clean_repo)):
        exp = clean_repo.get("eimage", {"visit": row["visit"], "detector": 0})
        static = renderer.model_image(row, i, zero_rows=sky_model.var_rows)
        sky = renderer.sky_image(row)
        resid = exp.image - sky - static
        # weights from the true expected variance: weighting by the noisy pixels biases fitted fluxes low
        variance = renderer.model_image(row, i) + sky + cfg["read_noise_e"] ** 2
        x, y = renderer.positions()
        grid = psf_grid(row, cfg)
        njy = electrons_to_njy_factor(row["zeroPoint"])
        bad = ndimage.binary_dilation(exp.image >= cfg["saturation_e"], iterations=3)
        w = np.where(bad, 0.0, 1.0 / variance)
        lcv = lc[lc["visit"] == row["visit"]]
        ids = [int(v) for v in lcv["id"]]
        rows_k = [int(np.flatnonzero(var_ids == v)[0]) for v in ids]
        templates = []
        for rk in rows_k:
            r = sky_model.var_rows[rk]
            one = np.zeros_like(resid, dtype=float)
            add_point_sources(one, grid, x[[r]], y[[r]], [1.0])
            templates.append(one.ravel())
        a = np.array(templates)  # (n, npix)
        normal = (a * w.ravel()) @ a.T
        rhs = (a * w.ravel()) @ resid.ravel()
        cov = np.linalg.inv(normal)
        fit = cov @ rhs
        true_e = np.asarray(lcv["flux"]) / njy
        for k, v in enumerate(ids):
            if normal[k, k] == 0:
                continue
            pulls.append((fit[k] - true_e[k]) / math.sqrt(cov[k, k]))
            kinds.add(str(truth["type"][truth["id"] == v][0]))
    pulls = np.array(pulls)
    assert kinds == {"sn", "agn", "lensed_qso_image", "variable_star"}
    tol_mean, tol_sd = _pull_tolerances(len(pulls))
    assert abs(pulls.mean()) < tol_mean and abs(pulls.std() - 1.0) < tol_sd
    # and the light curves do vary: a periodic star changes by more than 0.2 mag over the visits of a band
    var_star = truth["id"][truth["type"] == "variable_star"]
    ranges = [np.ptp(2.5 * np.log10(lc["flux"][(lc["id"] == v) & (lc["band"] == "r")])) for v in var_star]
    assert max(ranges) > 0.2


def test_header_wcs_is_offset_from_the_true_one_as_configured(tiny_repo):
    repo = tiny_repo
    sim = repo.config["simulation"]
    offsets = []
    for row in _visit_rows(repo):
        exp = repo.get("eimage", {"visit": row["visit"], "detector": 0})
        truth = true_wcs(row, repo.config)
        xi, eta = tan_project(exp.wcs.wcs.crval[0], exp.wcs.wcs.crval[1], *truth.wcs.crval)
        assert xi * 3600 == pytest.approx(row["wcsOffsetRa"], abs=1e-6)
        assert eta * 3600 == pytest.approx(row["wcsOffsetDec"], abs=1e-6)
        cd_h, cd_t = exp.wcs.pixel_scale_matrix, truth.pixel_scale_matrix
        rot_h, rot_t = (math.degrees(math.atan2(c[1, 0], c[1, 1])) for c in (cd_h, cd_t))
        assert rot_h - rot_t == pytest.approx(row["wcsRotOffset"], abs=1e-9)
        offsets.append(math.hypot(row["wcsOffsetRa"], row["wcsOffsetDec"]))
        # the header moves the sky by the configured amount at the detector centre
        ra, dec = exp.wcs.pixel_to_world_values(255.5, 255.5)
        xt, yt = truth.world_to_pixel_values(ra, dec)
        assert math.hypot(xt - 255.5, yt - 255.5) * 0.2 == pytest.approx(offsets[-1], rel=1e-3)
    rms = math.sqrt(np.mean(np.square(offsets)) / 2)
    assert 0.2 * sim["wcs_offset_arcsec"] < rms < 3.0 * sim["wcs_offset_arcsec"]


def test_stars_are_where_the_true_wcs_says(clean_repo, clean_state):
    """Centroids of bright isolated stars agree with the true WCS positions (to the noise) and not the header."""
    row = _visit_rows(clean_repo)[0]
    exp = clean_repo.get("eimage", {"visit": row["visit"], "detector": 0})
    sky = clean_state[3].sky_image(row)
    stars = _isolated_stars(clean_repo, clean_state, 0, row, exp, min_snr=200.0)
    dx = []
    for s in stars:
        img = (exp.image - sky)[s["sl"]]
        w = np.where(s["ap"], img, 0.0)
        yy, xx = np.mgrid[s["sl"][0], s["sl"][1]]
        dx.append(((w * xx).sum() / w.sum() - s["x"], (w * yy).sum() / w.sum() - s["y"]))
    dx = np.array(dx)
    assert np.all(np.abs(dx) < 0.1)
    ra, dec = clean_state[1].truth["ra"][stars[0]["k"]], clean_state[1].truth["dec"][stars[0]["k"]]
    xh, yh = exp.wcs.world_to_pixel_values(ra, dec)
    assert math.hypot(xh - stars[0]["x"], yh - stars[0]["y"]) > 0.5 or row["wcsOffsetRa"] ** 2 < 0.01


def test_same_seed_same_pixels_different_seed_different_pixels(tmp_path):
    kw = dict(preset="tiny", n_visits=2, size=128)
    a = simulate_field(tmp_path / "a", seed=11, **kw)
    b = simulate_field(tmp_path / "b", seed=11, **kw)
    c = simulate_field(tmp_path / "c", seed=12, **kw)
    for ref in a.query("eimage"):
        ia = a.get("eimage", ref.data_id).image
        assert np.array_equal(ia, b.get("eimage", ref.data_id).image)
        assert not np.array_equal(ia, c.get("eimage", ref.data_id).image)
    assert np.array_equal(np.asarray(a.get("truth_catalog")["ra"]), np.asarray(b.get("truth_catalog")["ra"]))


def test_simulate_command_end_to_end(tmp_path, capsys):
    rc = main(["simulate", str(tmp_path / "r"), "--preset", "tiny", "--visits", "3", "--bands", "gri",
               "--size", "200", "--no-cosmic-rays", "--seed", "7", "--set", "n_sn=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[3/3] visit" in out and "simulated 3 visit(s)" in out
    repo = Repository(tmp_path / "r")
    vt = repo.get("visit_table")
    assert list(vt["band"]) == ["g", "r", "i"] and np.all(vt["nCosmicRays"] == 0)
    assert (repo.get("truth_catalog")["type"] == "sn").sum() == 2


def test_simulate_refuses_to_mix_fields(tmp_path, capsys):
    path = str(tmp_path / "r")
    assert main(["simulate", path, "--visits", "2", "--size", "128", "--quiet"]) == 0
    assert main(["simulate", path, "--visits", "2", "--size", "128", "--quiet"]) == 0  # same visits: rewritten
    assert main(["simulate", path, "--visits", "1", "--size", "128", "--quiet"]) == 2
    assert "already holds eimages" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_preset(tmp_path):
    repo = simulate_field(tmp_path / "demo", preset="demo", seed=1)
    vt = repo.get("visit_table")
    assert len(vt) == 40 and set(vt["band"]) == set("gri") and list(vt["visit"]) == list(range(840, 880))
    truth = repo.get("truth_catalog")
    lc = repo.get("truth_lightcurves")
    typ = np.asarray(truth["type"])
    assert (typ == "sn").sum() >= 20 and (typ == "lens_galaxy").sum() == 2
    for lens in truth["id"][typ == "lens_galaxy"]:
        assert ((typ == "lensed_qso_image") & (np.asarray(truth["lensId"]) == lens)).sum() in (2, 4)
    # supernovae explode during the cadence: zero flux at the first visit, then above the r-band 5-sigma depth
    first = vt["visit"].min()
    born = [i for i in truth["id"][typ == "sn"]
            if lc["flux"][(lc["id"] == i) & (lc["visit"] == first)].sum() == 0 and lc["flux"][lc["id"] == i].max() > 630]
    assert len(born) >= 5
    exp = repo.get("eimage", {"visit": 879, "detector": 0})
    assert exp.image.shape == (1024, 1024)


@pytest.mark.slow
def test_twinkles1_visit(tmp_path):
    # one visit of the full cadence's depth: its faint galaxies go 1.5 mag beyond the ~27.2 r coadd of 1000 visits
    repo = simulate_field(tmp_path / "t1", preset="twinkles1", seed=2, n_visits=1, faint_galaxy_mag_max=28.7)
    exp = repo.get("eimage", {"visit": 840, "detector": 0})
    assert exp.image.shape == (4096, 4096)
    truth = repo.get("truth_catalog")
    wcs = true_wcs(_visit_rows(repo)[0], repo.config)
    x, y = wcs.all_world2pix(truth["ra"], truth["dec"], 0)
    on = (x > 0) & (x < 4095) & (y > 0) & (y < 4095)
    gal = on & (np.asarray(truth["type"]) == "galaxy")
    r = 31.4 - 2.5 * np.log10(np.asarray(truth["r_flux"], float))
    n_gal = (gal & (r < 25.5)).sum()
    assert 12000 < n_gal < 20000  # ~87 galaxies per arcmin^2 to r = 25.5 on 186 arcmin^2
    # and the faint ones, to the limit asked for (on a 1000-visit cadence, the default is ~28.8)
    from twinkles.sim.skymodel import galaxy_counts_per_arcmin2
    limit = 28.7
    assert limit - 0.1 < r[gal].max() < limit
    n_exp = galaxy_counts_per_arcmin2(repo.config["simulation"], 25.5, limit, limit) * (4096 * 0.2 / 60) ** 2
    assert abs((gal & (r >= 25.5)).sum() - n_exp) < 5 * math.sqrt(n_exp) + 0.02 * n_exp


def test_faint_galaxies_are_rendered_with_the_model_counts_and_their_light(clean_repo, clean_state):
    """The faint galaxies (pure disks beyond r = 25.5) on the detector are all drawn, their number per 0.5 mag
    matches the count model times the detector's area (Poisson, 4 sigma per bin), and their light is in the
    eimages: image - true sky - noiseless model *without* them sums to the noiseless faint-galaxy light, which
    is the truth flux of those inside the image (edge spill-over aside) -- within 4 sigma of the pixel noise."""
    import copy

    from twinkles.sim.render import GalaxyStamps, is_fast_disk
    from twinkles.sim.simulate import VisitRenderer
    from twinkles.sim.skymodel import faint_galaxy_limit, galaxy_counts_per_arcmin2
    cfg, sky, rows, renderer = clean_state
    t = sky.truth
    faint = np.flatnonzero(is_fast_disk(t))
    row0 = rows[0]
    wcs = true_wcs(row0, cfg)
    stamps = GalaxyStamps(t, wcs, 512, 512, renderer.pad, 0.2, cfg["galaxy_core_sigma_px"])
    x, y = wcs.all_world2pix(t["ra"], t["dec"], 0)
    on = faint[(x[faint] >= -0.5) & (x[faint] < 511.5) & (y[faint] >= -0.5) & (y[faint] < 511.5)]
    assert set(on) <= set(stamps.fast_rows) and not set(stamps.rows) & set(faint)
    r = 31.4 - 2.5 * np.log10(np.asarray(t["r_flux"])[on])
    vt = clean_repo.get("visit_table")
    limit = faint_galaxy_limit(cfg, Table({"band": vt["band"], "fiveSigmaDepth": vt["fiveSigmaDepthReported"]}))
    assert r.max() < limit and r.max() > limit - 0.2
    area = (512 * 0.2 / 60.0) ** 2
    edges = np.arange(25.5, limit, 0.25)
    n_obs = np.histogram(r, edges)[0]
    n_exp = np.array([galaxy_counts_per_arcmin2(cfg, a, b, limit) * area for a, b in zip(edges[:-1], edges[1:])])
    assert np.all(np.abs(n_obs - n_exp) < 4 * np.sqrt(n_exp)), (n_obs, n_exp)
    # their light, in the pixels
    sky0 = copy.copy(sky)
    sky0.truth = t.copy()
    for b in "ugrizy":
        sky0.truth[f"{b}_flux"][faint] = 0.0
    without = VisitRenderer(cfg, sky0, 0, artifacts=renderer.artifacts)
    s_sum = e_sum = v_sum = 0.0
    for i, row in enumerate(rows):
        exp = clean_repo.get("eimage", {"visit": row["visit"], "detector": 0})
        keep = ~ndimage.binary_dilation(exp.image >= 0.8 * cfg["saturation_e"], iterations=40)
        full, none = renderer.model_image(row, i), without.model_image(row, i)
        njy = electrons_to_njy_factor(row["zeroPoint"])
        truth_e = np.asarray(t[f"{row['band']}_flux"])[on].sum() / njy
        assert (full - none).sum() == pytest.approx(truth_e, rel=0.03)
        s_sum += (exp.image - renderer.sky_image(row) - none)[keep].sum()
        e_sum += (full - none)[keep].sum()
        v_sum += exp.variance[keep].sum()
    assert abs(s_sum - e_sum) < 4 * math.sqrt(v_sum), (s_sum, e_sum, math.sqrt(v_sum))
    assert e_sum > 5 * math.sqrt(v_sum)  # the faint light is detected in the pixels, the test has power
