"""Validation metrics and plots on synthetic tables with known answers."""

import math

import numpy as np
import pytest
from astropy.table import Table

from twinkles.validate import (astrometric_offsets, astrometry_summary, completeness_purity, match_sky, pa1,
                               photometric_pulls, robust_sigma)
from twinkles.validate import plots
from twinkles.validate.single_frame import isolated


def test_match_sky_one_to_one():
    rng = np.random.default_rng(0)
    ra = 53.0 + rng.uniform(0, 0.05, 500)
    dec = -27.4 + rng.uniform(0, 0.05, 500)
    off = 0.2 / 3600
    ra2 = ra + off / math.cos(math.radians(-27.4))
    i1, i2, sep = match_sky(ra2, dec, ra, dec, 1.0)
    assert (i1 == i2).mean() > 0.99
    assert np.allclose(sep[i1 == i2], 0.2, atol=0.01)
    i1, i2, _ = match_sky(ra2, dec, ra, dec, 0.1)
    assert len(i1) <= 3 and not (i1 == i2).any()  # only chance neighbours closer than 0.1"
    # two detections near one truth object: only the nearer matches (mutual nearest)
    i1, i2, _ = match_sky(np.array([53.0, 53.0 + 0.3 / 3600]), np.array([-27.0, -27.0]), np.array([53.0]),
                          np.array([-27.0]), 1.0)
    assert list(i1) == [0] and list(i2) == [0]


def test_astrometric_offsets_and_summary():
    dra, ddec = astrometric_offsets([10.0 + 1e-6], [0.0], [10.0], [0.0])
    assert dra[0] == pytest.approx(3.6, rel=1e-6) and ddec[0] == 0
    dra, ddec = astrometric_offsets([359.9999999], [60.0], [0.0], [60.0])  # wraps at RA = 0
    assert dra[0] == pytest.approx(-0.1e-6 * 3.6e6 * 0.5, rel=1e-3)
    rng = np.random.default_rng(1)
    s = astrometry_summary(rng.normal(0, 5, 10000), rng.normal(0, 5, 10000))
    assert s["rms_offset_mas"] == pytest.approx(5 * math.sqrt(2), rel=0.03)
    assert s["median_offset_mas"] == pytest.approx(5 * 1.1774, rel=0.03)


def test_photometric_pulls():
    rng = np.random.default_rng(2)
    true = np.full(5000, 1000.0)
    err = np.full(5000, 10.0)
    meas = true + rng.normal(0, 10, 5000)
    p = photometric_pulls(meas, err, true)
    assert p["pull_sd"] == pytest.approx(1.0, abs=0.03)
    assert abs(p["median_dmag_mmag"]) < 0.5
    p2 = photometric_pulls(meas * 1.01, err, true, calib_err_frac=0.01)
    assert np.nanstd(p2["pull_with_calib"]) < np.nanstd(p2["pull"]) + 1e-9
    assert robust_sigma(np.r_[rng.normal(0, 2, 1000), 1e6]) == pytest.approx(2.0, rel=0.1)


def test_pa1_of_known_scatter():
    rng = np.random.default_rng(3)
    n_obj, n_vis = 200, 10
    ids = np.repeat(np.arange(n_obj), n_vis)
    mags = 20 + rng.normal(0, 1, n_obj)[ids] + rng.normal(0, 0.005, ids.size)  # 5 mmag repeatability
    r = pa1(ids, mags, np.full(ids.size, 0.003))
    assert r["pa1_mmag"] == pytest.approx(5.0, rel=0.05)
    assert r["pa1_excess_mmag"] == pytest.approx(4.0, rel=0.08)  # sqrt(5^2 - 3^2)
    assert r["n_objects"] == n_obj
    assert math.isnan(pa1([1, 2], [20.0, 21.0])["pa1_mmag"])


def test_completeness_purity():
    true_mag = np.array([20, 20, 21, 21, 22, 22, 23, 23.0])
    det = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)
    cp = completeness_purity(true_mag, det, [20.5, 21.5, 22.5], [True, False, True], [19.5, 20.5, 21.5, 22.5, 23.5])
    assert list(cp["completeness"]) == [1.0, 0.5, 0.5, 0.0]
    assert math.isnan(cp["purity"][0])
    assert list(cp["purity"][1:]) == [1.0, 0.0, 1.0]


def test_isolated():
    t = Table({"ra": [53.0, 53.0 + 1.0 / 3600, 53.1], "dec": [-27.0, -27.0, -27.0], "r_flux": [1e5, 10.0, 1e5]})
    iso = isolated(t, "r", radius_arcsec=2.0, flux_ratio=0.01)
    assert list(iso) == [True, False, True]  # the faint neighbour does not spoil the bright star


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(4)
    files = [
        plots.plot_astrometric_offsets(rng.normal(0, 3, 50), rng.normal(0, 3, 50), tmp_path / "a.png"),
        plots.plot_pulls(rng.normal(0, 1, 100), tmp_path / "p.png"),
        plots.plot_completeness(rng.uniform(1, 100, 300), rng.uniform(size=300) > 0.1, tmp_path / "c.png"),
        plots.plot_visit_truth([1, 2, 3], [1.0, -2.0, 0.5], [1.0, 0.99, 1.01], tmp_path / "v.png"),
        plots.plot_pa1({"r": rng.normal(0, 5, 100)}, tmp_path / "r.png"),
    ]
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_without_outputs_gives_no_section(tmp_path):
    from twinkles.repo import Repository
    from twinkles.validate.report import validation_sections
    Repository.create(tmp_path / "repo")
    assert validation_sections(tmp_path / "repo", "runs/l2", tmp_path / "out") == []
