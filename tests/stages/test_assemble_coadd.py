"""assemble_coadd on synthetic warps (tests/algorithms/coadd_synthetic.py), then end to end on a tiny field.

Tolerances come from the noise: every figure is compared with its expected value and a few of its standard
errors (from the number of pixels, stars or positions used), next to the issue's own limits.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "algorithms"))

from coadd_synthetic import _trail, expected_star_flux, make_warps  # noqa: E402

from twinkles.image import mask_bit  # noqa: E402
from twinkles.measure import adaptive_moments, forced_psf_flux, moments_from_stamps, moments_to_fwhm  # noqa: E402
from twinkles.stages.assemble_coadd import Config, WarpInput, run  # noqa: E402


def _inputs(patch, drop_matched=()):
    return [WarpInput(d.metadata["visit"], d, None if d.metadata["visit"] in drop_matched else m)
            for d, m in zip(patch.direct, patch.psf_matched)]


@pytest.fixture(scope="module")
def synth():
    patch = make_warps(seed=int(os.environ.get("TWINKLES_TEST_SEED", "11")), size=560, n_grid=22)
    result = run(_inputs(patch), Config(), band="r")
    return patch, result


@pytest.fixture(scope="module")
def empty_synth():
    """The same visits without stars: blank sky for noise and depth."""
    patch = make_warps(seed=int(os.environ.get("TWINKLES_TEST_SEED", "11")), size=560, n_grid=22, empty=True)
    return patch, run(_inputs(patch), Config(), band="r")


def _blank(patch, result, radius=12.0):
    """Pixels farther than ``radius`` from every star, transient and CR, off the trail, with data."""
    yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    far = np.ones(patch.shape, bool)
    bright = patch.stars["flux"] > 0
    pts = list(zip(patch.stars["x"][bright], patch.stars["y"][bright])) + [(t["x"], t["y"]) for t in patch.transient]
    for x, y in pts:
        y0, y1 = max(0, int(y - radius - 1)), int(y + radius + 2)
        x0, x1 = max(0, int(x - radius - 1)), int(x + radius + 2)
        far[y0:y1, x0:x1] &= np.hypot(xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y) > radius
    return far & (result.n_image > 0)


def test_pixel_noise_matches_propagated_variance(synth, empty_synth):
    patch, result = synth
    c = result.coadd
    blank = _blank(patch, result)
    chi = ((c.image - patch.truth_image) / np.sqrt(c.variance))[blank]
    n = chi.size
    sd, se = chi.std(), 1.0 / math.sqrt(2 * n)
    assert abs(sd - 1) < min(0.05, 5 * se + 0.01), (sd, n)
    assert abs(chi.mean()) < 5 / math.sqrt(n)
    patch, result = empty_synth  # and everywhere on blank sky
    c = result.coadd
    chi = ((c.image - patch.truth_image) / np.sqrt(c.variance))[_blank(patch, result)]
    assert abs(chi.std() - 1) < min(0.05, 5 / math.sqrt(2 * chi.size) + 0.01)


def test_noise_falls_with_the_number_of_inputs(empty_synth):
    from scipy import ndimage
    patch, result = empty_synth
    c = result.coadd
    _, d = _trail(patch.shape, patch.trail["x0"], patch.trail["y0"], patch.trail["angle"], 1, 1)
    blank = _blank(patch, result) & (np.abs(d) > 10)
    resid = c.image - patch.truth_image
    # the set of visits covering each pixel, away (> 4 px) from every visit's edge
    inside = [ndimage.binary_erosion(v.used, iterations=4) for v in patch.visits]
    outside = [~ndimage.binary_dilation(v.used, iterations=4) for v in patch.visits]
    clear = np.logical_and.reduce([a | b for a, b in zip(inside, outside)])
    code = sum((1 << i) * inside[i] for i in range(len(inside)))
    seen = []
    for value in np.unique(code[blank & clear]):
        sel = blank & clear & (code == value)
        if sel.sum() < 1000:
            continue
        # expected: 1 / sum of 1/sigma_i^2 over the covering visits (from the simulation, not the coadd)
        members = [v for i, v in enumerate(patch.visits) if value & (1 << i)]
        expected = math.sqrt(1 / sum(1 / v.noise**2 for v in members))
        sd = resid[sel].std()
        assert sd == pytest.approx(expected, rel=5 / math.sqrt(2 * sel.sum()) + 0.01), (len(members), sel.sum())
        seen.append((len(members), expected, sd))
    seen.sort()
    assert len(seen) >= 3 and seen[0][0] < seen[-1][0] and seen[-1][2] < seen[0][2], seen


def test_depth_agrees_with_the_inputs_depths(empty_synth):
    from coadd_synthetic import gauss_stamps
    patch, result = empty_synth
    c = result.coadd
    full = (result.n_image == len(patch.visits)) & _blank(patch, result, radius=16.0)
    # positions at least 20 px apart, so that their PSF stamps hardly overlap (independent fluxes)
    rng = np.random.default_rng(2)
    cand = np.argwhere(full)
    taken = np.zeros(full.shape, bool)
    picks = []
    for iy, ix in cand[rng.permutation(len(cand))]:
        if not taken[iy, ix]:
            picks.append((iy, ix))
            taken[max(0, iy - 20):iy + 21, max(0, ix - 20):ix + 21] = True
    g = np.array(picks)
    f, e, flag = forced_psf_flux(c.image - patch.truth_image, c.variance, c.mask, c.psf, g[:, 1] + 0.0,
                                 g[:, 0] + 0.0)
    f, e = f[~flag], e[~flag]
    n = len(f)
    assert n > 200
    m5_err = 31.4 - 2.5 * math.log10(5 * np.median(e))  # from the propagated errors
    m5_emp = 31.4 - 2.5 * math.log10(5 * f.std())  # from the scatter of blank-sky fluxes
    # each input's depth: 5 sigma of a PSF fit, sigma^2 = V / sum(P^2) (sky-limited, white noise)
    m5_in = []
    for v in patch.visits:
        k = gauss_stamps(25, [0.0], [0.0], v.sigma_px, v.e1, v.e2)[0]
        m5_in.append(31.4 - 2.5 * math.log10(5 * v.noise / math.sqrt((k**2).sum())))
    # the optimal combination; weights 1/V (not 1/(V x PSF area)) lose a little (< 0.03 mag here)
    predicted = 1.25 * math.log10(np.sum(10 ** (0.8 * np.array(m5_in))))
    assert abs(m5_err - predicted) < 0.1, (m5_err, predicted)
    se_mag = 2.5 / math.log(10) / math.sqrt(2 * n)
    # the empirical depth has its own noise (se_mag ~ 0.04 with ~250 positions): 3 standard errors around it
    assert abs(m5_emp - predicted) < 3 * se_mag + 0.03, (m5_emp, predicted, n)


def _star_table(patch, result):
    c = result.coadd
    x, y = patch.stars["x"], patch.stars["y"]
    f, e, flag = forced_psf_flux(c.image, c.variance, c.mask, c.psf, x, y)
    expected = np.array([expected_star_flux(patch, k) for k in range(len(x))])
    core_inexact = np.array([np.any(c.mask[int(round(b)) - 6:int(round(b)) + 7, int(round(a)) - 6:int(round(a)) + 7]
                                    & mask_bit("INEXACT_PSF", "NO_DATA")) for a, b in zip(x, y)])
    plain = (patch.stars["kind"] == "star") & ~flag & ~core_inexact
    return f, e, expected, plain


def test_psf_photometry_pulls_with_the_coadd_psf(synth):
    patch, result = synth
    f, e, expected, plain = _star_table(patch, result)
    pull = ((f - expected) / e)[plain]
    n = pull.size
    assert n > 250
    se = 1 / math.sqrt(2 * n)  # standard error of the sd
    # the range 0.9 - 1.15, widened where it is narrower than 3 standard errors
    assert min(0.9, 1 - 3 * se) <= pull.std() <= max(1.15, 1 + 3 * se), (pull.std(), n)
    assert abs(pull.mean()) < 4 / math.sqrt(n)


def test_coadd_psf_matches_the_stars_across_the_patch(synth):
    patch, result = synth
    c = result.coadd
    f, e, expected, plain = _star_table(patch, result)
    bright = plain & (f / e > 300)
    x, y = patch.stars["x"][bright], patch.stars["y"][bright]
    good = (c.mask & mask_bit("NO_DATA")) == 0
    star = adaptive_moments(c.image, x, y, good, guess_sigma=1.7)
    model = moments_from_stamps(c.psf.kernels_at(x, y, 41), None, 1.7)
    ok = ~star["flag"] & ~model["flag"]
    fw_s = moments_to_fwhm(star["ixx"], star["iyy"], star["ixy"])
    fw_m = moments_to_fwhm(model["ixx"], model["iyy"], model["ixy"])

    def e12(m):
        t = m["ixx"] + m["iyy"]
        return (m["ixx"] - m["iyy"]) / t, 2 * m["ixy"] / t
    (e1s, e2s), (e1m, e2m) = e12(star), e12(model)
    n_in = result.n_image[np.rint(y).astype(int), np.rint(x).astype(int)]
    regions = [n_in == n_in.max(), n_in < n_in.max()]
    for region in regions:
        sel = ok & region
        assert sel.sum() >= 5
        assert abs(np.mean(fw_s[sel] / fw_m[sel]) - 1) < 0.02
        assert abs(np.mean(e1s[sel] - e1m[sel])) < 0.01
        assert abs(np.mean(e2s[sel] - e2m[sel])) < 0.01


def test_trail_transient_and_cosmic_rays_are_absent(synth):
    patch, result = synth
    c = result.coadd
    covered = result.n_image > 0
    resid = c.image - patch.truth_image
    _, d = _trail(patch.shape, patch.trail["x0"], patch.trail["y0"], patch.trail["angle"], 1, 1)
    # along the trail, away from stars (where the truth, a mean over every input, differs from a mean without
    # the trail's visit by that visit's calibration)
    blank = _blank(patch, result)
    for lo, hi in [(0, 1.5), (1.5, 4), (4, 8)]:
        sel = blank & (np.abs(d) >= lo) & (np.abs(d) < hi)
        z = resid[sel].mean() / (np.sqrt(np.mean(c.variance[sel])) / math.sqrt(sel.sum()))
        assert abs(z) < 3, (lo, hi, z)
    for t in patch.transient:
        fl, er, _ = forced_psf_flux(resid, c.variance, c.mask, c.psf, [t["x"]], [t["y"]])
        assert abs(fl[0] / er[0]) < 3
    row = dict(zip(result.inputs["visit"], result.inputs["n_artifact_pixels"]))
    assert row[patch.trail["visit"]] > 1000 and all(row[t["visit"]] > 20 for t in patch.transient)
    assert row[1004] > 0  # the cosmic rays
    # nothing left anywhere else (the largest of ~1.4e5 normal values is ~4.5); where an input was left out
    # (INEXACT_PSF: the trail's band) the truth, a mean over all inputs, differs at stars by their calibration
    exact = covered & ((c.mask & mask_bit("INEXACT_PSF")) == 0)
    z = resid[exact] / np.sqrt(c.variance[exact])
    assert np.abs(z).max() < 6.5


def test_without_rejection_the_trail_shows(synth):
    """The same measurement as above fails when artifact rejection is off: the test can see a trail."""
    patch, _ = synth
    plain = run(_inputs(patch), Config(do_artifact_rejection=False), band="r")
    c = plain.coadd
    _, d = _trail(patch.shape, patch.trail["x0"], patch.trail["y0"], patch.trail["angle"], 1, 1)
    sel = (plain.n_image > 0) & (np.abs(d) < 1.5)
    resid = (c.image - patch.truth_image)[sel]
    assert resid.mean() / (np.sqrt(np.mean(c.variance[sel])) / math.sqrt(sel.sum())) > 10


def test_bright_star_core_and_variable_star_are_kept(synth):
    patch, result = synth
    c = result.coadd
    f, e, expected, _ = _star_table(patch, result)
    for k in (patch.stars["ibright"], patch.stars["ivar"]):
        iy, ix = int(round(patch.stars["y"][k])), int(round(patch.stars["x"][k]))
        covering = sum(bool(v.used[iy, ix]) for v in patch.visits)
        assert result.n_image[iy - 3:iy + 4, ix - 3:ix + 4].min() == covering  # no epoch rejected at its core
        assert not np.any(c.mask[iy - 3:iy + 4, ix - 3:ix + 4] & mask_bit("INEXACT_PSF"))
    kb = patch.stars["ibright"]
    assert f[kb] / expected[kb] == pytest.approx(1.0, abs=0.005)
    # a variable star's coadd image is not the coadd PSF times its mean flux (its weights differ by its flux),
    # so its PSF flux is only close; losing one of ~9 epochs would move it by ~10%
    kv = patch.stars["ivar"]
    assert f[kv] / expected[kv] == pytest.approx(1.0, abs=0.05)
    # exactly: its PSF flux on the noiseless coadd of the truth, within the noise
    ft, _, _ = forced_psf_flux(patch.truth_image, c.variance, c.mask, c.psf, patch.stars["x"][kv:kv + 1],
                               patch.stars["y"][kv:kv + 1])
    assert abs(f[kv] - ft[0]) < 3 * e[kv]


def test_inputs_table_lists_used_rejected_and_missing():
    patch = make_warps(seed=3, n_visits=5, size=160, n_grid=5)
    missing = [{"visit": 999, "detector": 0, "reason": "process_eimage failed: ProcessingError: 3 reference matches"}]
    res = run(_inputs(patch, drop_matched={1002}), Config(), missing, band="r")
    t = {int(r["visit"]): r for r in res.inputs}
    assert t[999]["status"] == "missing" and "reference matches" in t[999]["reason"]
    assert t[1002]["status"] == "rejected" and "PSF-matched" in t[1002]["reason"]
    assert t[1000]["status"] == "used" and t[1000]["weight"] == pytest.approx(1 / patch.visits[0].noise**2, rel=1e-4)
    assert t[1000]["psf_fwhm_px"] == pytest.approx(patch.visits[0].sigma_px * 2.3548, rel=1e-6)
    assert sorted(res.metadata["visits_used"]) == [1000, 1001, 1003, 1004]
    assert set(res.coadd.psf.ids) == {1000, 1001, 1003, 1004}
    assert res.n_image.max() == 4


def test_warps_are_read_one_at_a_time_per_pass():
    patch = make_warps(seed=4, n_visits=4, size=120, n_grid=4)
    calls = {"direct": 0, "matched": 0}

    def loader(exp, kind):
        def load():
            calls[kind] += 1
            return exp.copy()
        return load
    warps = [WarpInput(d.metadata["visit"], loader(d, "direct"), loader(m, "matched"))
             for d, m in zip(patch.direct, patch.psf_matched)]
    res = run(warps, Config(), band="r")
    assert res.coadd is not None
    assert calls["direct"] == 4  # once each
    assert calls["matched"] <= 4 * 3 + 1  # model (2 passes), artifacts (1), the model PSF's width (1)


def test_no_inputs_no_coadd_no_error():
    res = run([], Config(), [{"visit": 7, "reason": "no calexp"}], band="g")
    assert res.coadd is None and res.n_image is None
    assert list(res.inputs["status"]) == ["missing"]
