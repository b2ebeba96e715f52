"""make_template and image_difference end to end on a tiny field, against the simulator's truth.

One field per session: 512 x 512, 8 r visits, 40 sprinkled supernovae (plus the preset's AGN, lensed quasar and
variable stars): simulate -> process_eimage -> make_skymap -> warp -> make_template -> image_difference, all with
``twinkles stage``. Visits that are inputs of the template share its noise (their difference is less noisy than
its variance plane says), so the noise figures use the other visits, as a real survey's science visits are.
Tolerances from the noise (their standard errors from the numbers of pixels and positions used).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinkles.cli import main as cli_main
from twinkles.image import Exposure, mask_bit
from twinkles.measure import forced_psf_flux
from twinkles.repo import Repository
from twinkles.stages import ProcessingError, image_difference

RUN = "runs/l2"


@pytest.fixture(scope="session")
def dia_field(tmp_path_factory):
    from twinkles.sim.simulate import simulate_field
    root = tmp_path_factory.mktemp("dia") / "tiny"
    simulate_field(root, preset="tiny", seed=3, bands="r", n_visits=8, n_sn=40)
    for stage in ("process_eimage", "make_skymap", "warp", "make_template", "image_difference"):
        assert cli_main(["stage", stage, str(root), "--run", RUN]) == 0, stage
    repo = Repository(root)
    diffs = {r.data_id["visit"]: repo.read(r) for r in repo.query("differenceExp", runs=[RUN])}
    dias = {v: repo.get("diaSourceTable", {"visit": v, "detector": 0}, runs=[RUN]) for v in diffs}
    templates = {r.data_id["patch"]: repo.read(r) for r in repo.query("goodSeeingCoadd", runs=[RUN])}
    in_template = {int(v) for t in templates.values() for v in t.metadata["template_visits"].split()}
    return dict(root=root, repo=repo, diffs=diffs, dias=dias, templates=templates, in_template=in_template,
                truth=repo.get("truth_catalog", runs=["truth"]), lc=repo.get("truth_lightcurves", runs=["truth"]),
                visits=repo.get("visit_table", runs=["truth"]), artifacts=repo.get("truth_artifacts", runs=["truth"]))


def _truth_xy(field, diff):
    t = field["truth"]
    x, y = diff.wcs.all_world2pix(np.asarray(t["ra"], float), np.asarray(t["dec"], float), 0)
    return t, x, y


def _far_from(shape, xs, ys, radius):
    far = np.ones(shape, bool)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for x, y in zip(xs, ys):
        if -radius < x < shape[1] + radius and -radius < y < shape[0] + radius:
            y0, y1 = max(0, int(y - radius)), min(shape[0], int(y + radius) + 2)
            x0, x1 = max(0, int(x - radius)), min(shape[1], int(x + radius) + 2)
            far[y0:y1, x0:x1] &= np.hypot(xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y) > radius
    return far


def _quiet_pixels(field, diff):
    """Valid pixels far (12 px) from every variable, moving transient and object brighter than 2 uJy, unmasked."""
    t, x, y = _truth_xy(field, diff)
    loud = np.asarray(t["isVariable"], bool) | (np.asarray(t["r_flux"], float) > 2000)
    a = field["artifacts"]
    a = a[a["visit"] == int(diff.metadata["visit"])]
    ax, ay = diff.wcs.all_world2pix(np.asarray(a["ra"], float), np.asarray(a["dec"], float), 0)
    bad = mask_bit("NO_DATA", "SAT", "BAD", "CR", "INTRP", "EDGE")
    return (_far_from(diff.shape, np.concatenate([x[loud], ax]), np.concatenate([y[loud], ay]), 12.0)
            & ((diff.mask & bad) == 0) & np.isfinite(diff.image))


def _science_visits(field):
    return [v for v in sorted(field["diffs"]) if v not in field["in_template"]]


def test_template_is_made_of_the_best_seeing_visits(dia_field):
    seeing = {int(r["visit"]): float(r["seeing"]) for r in dia_field["visits"]}
    for patch, t in dia_field["templates"].items():
        used = [int(v) for v in t.metadata["template_visits"].split()]
        assert len(used) >= 3
        others = [s for v, s in seeing.items() if v not in used]
        # every input is at least as sharp as every visit left out (the true seeing ranks the same way)
        assert max(seeing[v] for v in used) <= min(others) + 0.02, (patch, used, seeing)
        # its PSF (a CoaddPsf, stored with it) is sharper than the median science visit's
        fw = [d.metadata["science_psf_fwhm_px"] for d in dia_field["diffs"].values()]
        assert t.psf.fwhm(250, 250) < np.median(fw)
    assert len(_science_visits(dia_field)) >= 4


def test_difference_pixel_noise_matches_variance(dia_field):
    chis = []
    for v in _science_visits(dia_field):
        d = dia_field["diffs"][v]
        assert d.metadata["decorrelated"]
        q = _quiet_pixels(dia_field, d)
        chi = (d.image / np.sqrt(d.variance))[q]
        n = chi.size
        assert n > 20000
        # per visit: sd within 0.05 of 1 (its standard error is ~1/sqrt(2n) for white noise)
        assert abs(chi.std() - 1.0) < 0.05, (v, chi.std(), n)
        assert abs(chi.mean()) < 0.05, (v, chi.mean())
        chis.append(chi)
    allchi = np.concatenate(chis)
    print("difference pixel noise / sqrt(variance):", round(float(allchi.std()), 4), "over", allchi.size)


def test_psf_flux_pulls_at_empty_positions(dia_field):
    rng = np.random.default_rng(13)
    pulls = []
    for v in _science_visits(dia_field):
        d = dia_field["diffs"][v]
        q = _quiet_pixels(dia_field, d)
        # positions whose whole PSF footprint (radius 8 px) is quiet
        from scipy import ndimage
        core = ndimage.binary_erosion(q, iterations=8)
        ys, xs = np.nonzero(core)
        pick = rng.choice(len(xs), size=min(300, len(xs)), replace=False)
        x, y = xs[pick] + rng.uniform(-0.5, 0.5, len(pick)), ys[pick] + rng.uniform(-0.5, 0.5, len(pick))
        img = np.nan_to_num(d.image)
        f, e, flag = forced_psf_flux(img, np.nan_to_num(d.variance), d.mask, d.psf, x, y)
        ok = ~flag & np.isfinite(f)
        pulls.append(f[ok] / e[ok])
    p = np.concatenate(pulls)
    sd, n = float(p.std()), p.size
    print("PSF-flux pulls at empty positions: sd", round(sd, 3), "mean", round(float(p.mean()), 3), "n", n)
    assert n > 800
    assert 0.95 <= sd <= 1.05, (sd, n)
    assert abs(p.mean()) < 4 / math.sqrt(n) + 0.05


def test_bright_star_residuals(dia_field):
    vals = []
    for v in _science_visits(dia_field):
        d = dia_field["diffs"][v]
        t, x, y = _truth_xy(dia_field, d)
        f = np.asarray(t["r_flux"], float)
        stars = (t["type"] == "star") & (f > 20000) & (f < 3e5)  # bright, below saturation (~17 mag)
        fwhm = d.metadata["psf_fwhm_px"]
        # isolated from every variable and moving transient (their own differences are not residuals)
        a = dia_field["artifacts"]
        a = a[a["visit"] == v]
        ax, ay = d.wcs.all_world2pix(np.asarray(a["ra"], float), np.asarray(a["dec"], float), 0)
        var = np.asarray(t["isVariable"], bool)
        ox, oy = np.concatenate([x[var], ax]), np.concatenate([y[var], ay])
        stars &= np.array([np.all(np.hypot(ox - sx, oy - sy) > 4 * fwhm) for sx, sy in zip(x, y)])
        bad = mask_bit("NO_DATA", "SAT", "BAD", "CR", "INTRP")
        yy, xx = np.mgrid[0:d.height, 0:d.width]
        for sx, sy in zip(x[stars], y[stars]):
            if not (15 < sx < d.width - 15 and 15 < sy < d.height - 15):
                continue
            r = np.hypot(xx - sx, yy - sy) < fwhm
            sel = r & ((d.mask & bad) == 0) & np.isfinite(d.image)
            if sel.sum() < 0.9 * r.sum():
                continue
            vals.append((d.image / np.sqrt(d.variance))[sel])
    chi = np.concatenate(vals)
    rms = float(np.sqrt(np.mean(chi ** 2)))
    print("RMS of difference/sigma on", len(vals), "bright stars:", round(rms, 3))
    assert len(vals) >= 10
    assert rms < 1.2


def test_supernovae_with_high_difference_snr_are_detected(dia_field):
    lc, truth = dia_field["lc"], dia_field["truth"]
    sn_ids = set(int(i) for i in truth["id"][truth["type"] == "sn"])
    rows = {int(i): k for k, i in enumerate(truth["id"])}
    found = missed = 0
    for v, d in dia_field["diffs"].items():
        t = list(dia_field["templates"].values())[0]
        tv = [int(x) for x in t.metadata["template_visits"].split()]
        tw = [float(x) for x in t.metadata["template_weights"].split()]
        dia = dia_field["dias"][v]
        for sid in sn_ids:
            flux = {int(r["visit"]): float(r["flux"]) for r in lc[lc["id"] == sid]}
            true_diff = flux[v] - sum(w * flux[u] for u, w in zip(tv, tw))
            k = rows[sid]
            x, y = d.wcs.all_world2pix([float(truth["ra"][k])], [float(truth["dec"][k])], 0)
            if not (20 < x[0] < d.width - 20 and 20 < y[0] < d.height - 20):
                continue
            f, e, flag = forced_psf_flux(np.nan_to_num(d.image), np.nan_to_num(d.variance), d.mask, d.psf, x, y)
            if flag[0] or not true_diff / e[0] >= 10:
                continue
            near = np.hypot(np.asarray(dia["x"]) - x[0], np.asarray(dia["y"]) - y[0]) < 5.0
            found += int(near.any())
            missed += int(not near.any())
    print("supernova epochs with true difference S/N >= 10:", found + missed, "detected", found)
    assert found + missed >= 5
    assert missed == 0


def test_dia_source_table_columns(dia_field):
    for v, t in dia_field["dias"].items():
        for c in image_difference.DIA_COLUMNS:
            assert c in t.colnames, c
        assert len(set(t["diaSourceId"])) == len(t)
        assert np.all(t["visit"] == v)
        assert t["psfFlux"].unit == "nJy"


def test_a_visit_the_template_does_not_cover_fails_clearly(dia_field):
    repo = dia_field["repo"]
    v = sorted(dia_field["diffs"])[0]
    calexp = repo.get("calexp", {"visit": v, "detector": 0}, runs=[RUN])
    with pytest.raises(ProcessingError, match="no goodSeeingCoadd"):
        image_difference.run(calexp, {})
    # a template elsewhere on the sky (its WCS moved by 0.5 degree): it covers nothing of the visit
    t = dia_field["templates"][0]
    w = t.wcs.deepcopy()
    w.wcs.crval = w.wcs.crval + np.array([0.5, 0.0])
    moved = Exposure(t.image, t.mask, t.variance, w, t.psf, t.photo_calib, t.visit_info, dict(t.metadata))
    with pytest.raises(ProcessingError, match="cover"):
        image_difference.run(calexp, {0: moved})


def test_supernova_difference_flux_against_the_truth(dia_field):
    """Forced PSF flux on the difference at every supernova's true position (science visits, all epochs) against
    the true difference: the epoch's flux minus the template's weighted mix of its inputs' fluxes."""
    lc, truth = dia_field["lc"], dia_field["truth"]
    t = list(dia_field["templates"].values())[0]
    tv = [int(x) for x in t.metadata["template_visits"].split()]
    tw = [float(x) for x in t.metadata["template_weights"].split()]
    assert abs(sum(tw) - 1) < 1e-4
    pulls = []
    for v in _science_visits(dia_field):
        d = dia_field["diffs"][v]
        for k in np.nonzero(truth["type"] == "sn")[0]:
            flux = {int(r["visit"]): float(r["flux"]) for r in lc[lc["id"] == truth["id"][k]]}
            true_diff = flux[v] - sum(w * flux[u] for u, w in zip(tv, tw))
            x, y = d.wcs.all_world2pix([float(truth["ra"][k])], [float(truth["dec"][k])], 0)
            if not (20 < x[0] < d.width - 20 and 20 < y[0] < d.height - 20):
                continue
            f, e, flag = forced_psf_flux(np.nan_to_num(d.image), np.nan_to_num(d.variance), d.mask, d.psf, x, y)
            if not flag[0]:
                pulls.append((f[0] - true_diff) / e[0])
    p = np.array(pulls)
    n = p.size
    print("supernova forced-flux pulls against the true difference: mean", round(float(p.mean()), 3), "sd",
          round(float(p.std()), 3), "n", n)
    assert n >= 100
    assert abs(p.mean()) < 0.1 + 3 / math.sqrt(n)
    assert 0.9 <= p.std() <= 1.15


def test_report_section(dia_field, tmp_path):
    from twinkles.validate.report import image_difference_section
    sec = image_difference_section(dia_field["repo"], RUN, tmp_path)
    m = sec["metrics"]
    assert m["n_difference_images"] == len(dia_field["diffs"])
    assert abs(m["noise_ratio_median_science_visits"] - 1) < 0.05
    assert m["sn_efficiency_snr_ge_10"] == 1.0
    assert (tmp_path / sec["figures"][0]).exists()


def test_supernova_efficiency_at_moderate_snr(dia_field):
    """The 50% efficiency point is at S/N <= 5.5: at true S/N 5.5-8 more than half the epochs are found."""
    from twinkles.validate.dia import supernova_efficiency
    t = list(dia_field["templates"].values())[0]
    tv = [int(x) for x in t.metadata["template_visits"].split()]
    tw = [float(x) for x in t.metadata["template_weights"].split()]
    res = []
    for v, d in dia_field["diffs"].items():
        res += supernova_efficiency(d, dia_field["dias"][v], dia_field["truth"], dia_field["lc"], tv, tw, v)
    s = np.abs(np.array([a for a, _ in res]))
    det = np.array([b for _, b in res])
    mid = (s >= 5.5) & (s < 8)
    low = s < 3
    print("efficiency at S/N 5.5-8:", int(det[mid].sum()), "/", int(mid.sum()), "; at S/N < 3:",
          int(det[low].sum()), "/", int(low.sum()))
    assert mid.sum() >= 8
    # binomial: the fraction found exceeds 1/2 by more than 2 standard errors
    assert det[mid].mean() > 0.5 + 2 * math.sqrt(0.25 / mid.sum())
    assert det[low].mean() < 0.05  # and noise-level epochs are not "found" by chance matches
