"""End-to-end tests of process_eimage on a simulated tiny field, against the simulator's truth.

One tiny field (512 x 512, 6 visits in r and i, seed 1) is simulated and processed once per session with
``twinkles stage process_eimage``; these tests check the outputs, the failure paths and the options. The
science figures (astrometry, photometry, calibration, completeness) against the truth, with tolerances from the
noise and on several seeds, are in ``test_process_eimage_science.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinkles.cli import main as cli_main
from twinkles.image import mask_bit
from twinkles.repo import QuantumButler, Repository
from twinkles.stages import ProcessingError, apply_config_overrides, load_stage
from twinkles.stages.process_eimage import OUTPUTS, Config, run, run_quantum
from twinkles.validate.match import match_sky
from twinkles.validate.metrics import astrometric_offsets
from twinkles.validate.single_frame import repeatability, validate_visit
from twinkles.validate.stats import assert_within

RUN = "runs/l2"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    from twinkles.sim.simulate import simulate_field
    root = tmp_path_factory.mktemp("pe") / "tiny"
    simulate_field(root, preset="tiny", seed=1)
    assert cli_main(["stage", "process_eimage", str(root), "--run", RUN]) == 0
    return Repository(root)


@pytest.fixture(scope="session")
def truth(tiny_repo):
    return tiny_repo.get("truth_catalog", runs=["truth"]), tiny_repo.get("visit_table", runs=["truth"])


@pytest.fixture(scope="session")
def validations(tiny_repo, truth):
    tcat, visits = truth
    out = []
    for row in visits:
        did = {"visit": int(row["visit"]), "detector": 0}
        src = tiny_repo.get("src", did, runs=[RUN])
        meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
        out.append((row, src, meta, validate_visit(src, tcat, row, meta)))
    return out


def test_outputs_written_for_every_visit(tiny_repo, truth):
    _, visits = truth
    for name in OUTPUTS:
        refs = tiny_repo.query(name, runs=[RUN])
        assert len(refs) == len(visits), name
    did = {"visit": int(visits[0]["visit"]), "detector": 0}
    calexp = tiny_repo.get("calexp", did, runs=[RUN])
    assert calexp.psf is not None and calexp.photo_calib is not None
    assert calexp.wcs.wcs.ctype[0].startswith("RA---TAN")
    for plane in ("DETECTED", "EDGE", "CR", "INTRP", "SAT"):
        assert (calexp.mask & mask_bit(plane)).any(), f"mask plane {plane} never set"
    bkg = tiny_repo.get("calexp_background", did, runs=[RUN])
    sky = float(visits[0]["skyBg"])
    # the background is the sky (electrons): within a few percent (a gradient of ~1% is simulated)
    assert abs(np.median(bkg) / sky - 1) < 0.03
    # the calexp is background-subtracted: the median of undetected pixels is ~0 compared with the noise
    free = (calexp.mask & mask_bit("DETECTED", "SAT", "CR", "EDGE")) == 0
    assert abs(np.median(calexp.image[free])) < 0.05 * math.sqrt(sky)
    src = tiny_repo.get("src", did, runs=[RUN])
    for col in ("sourceId", "visit", "detector", "band", "ra", "dec", "x", "y", "xErr", "yErr", "psfFlux",
                "psfFluxErr", "apFlux_3_0", "apFlux_4_5", "apFlux_6_0", "apFlux_9_0", "apFlux_12_0",
                "apFlux_12_0Err", "ixx", "iyy", "ixy", "ixxPSF", "iyyPSF", "ixyPSF", "extendedness", "sky",
                "pixelFlags_edge", "pixelFlags_saturated", "pixelFlags_interpolated", "pixelFlags_cr",
                "deblend_nChild", "blended", "centroid_flag", "psfFlux_flag"):
        assert col in src.colnames, col
    assert len(np.unique(src["sourceId"])) == len(src)
    assert src["psfFlux"].unit == "nJy"


def test_repeatability_pa1(tiny_repo, truth):
    tcat, visits = truth
    for band in np.unique(visits["band"]):
        srcs = [tiny_repo.get("src", {"visit": int(r["visit"]), "detector": 0}, runs=[RUN])
                for r in visits if r["band"] == band]
        rep = repeatability(srcs, tcat, str(band), min_snr=200.0)
        assert rep["n_objects"] >= 5
        # PA1 < 5 mmag beyond the measurement noise of the stars used
        assert rep["pa1_excess_mmag"] < 5.0, rep
        assert rep["pa1_mmag"] < 10.0, rep


def test_psf_model_against_true_psf(tiny_repo, truth):
    """Model FWHM within 2% of the true PSF's across the sensor; residual ellipticity < 0.01."""
    from twinkles.measure.moments import moments_from_stamps, moments_to_fwhm
    from twinkles.sim.psf import true_psf
    _, visits = truth
    cfg = tiny_repo.config
    for row in visits[:3]:
        calexp = tiny_repo.get("calexp", {"visit": int(row["visit"]), "detector": 0}, runs=[RUN])
        tpsf = true_psf(dict(zip(row.colnames, row.as_void())), cfg)
        for x, y in [(100, 100), (256, 256), (400, 120), (130, 400), (400, 400)]:
            km = calexp.psf.kernel_image(x, y, 31)
            kt = tpsf.kernel_image(x, y, 31)
            m = moments_from_stamps(np.array([km, kt]), None, 1.7)
            t = m["ixx"] + m["iyy"]
            e1 = (m["ixx"] - m["iyy"]) / t
            e2 = 2 * m["ixy"] / t
            fwhm_m = moments_to_fwhm(m["ixx"], m["iyy"], m["ixy"])
            assert abs(fwhm_m[0] / fwhm_m[1] - 1) < 0.02, (row["visit"], x, y, fwhm_m)
            assert math.hypot(e1[0] - e1[1], e2[0] - e2[1]) < 0.01, (row["visit"], x, y, e1, e2)
        meta = tiny_repo.get("process_eimage_metadata", {"visit": int(row["visit"]), "detector": 0}, runs=[RUN])
        assert abs(meta["seeing_arcsec"] / row["seeing"] - 1) < 0.02
        assert meta["n_psf_stars"] >= 10


def test_metadata_contents(validations):
    for row, src, meta, _ in validations:
        for key in ("seeing_arcsec", "zero_point", "sky_level_e", "n_psf_stars", "astrom_rms_mas", "n_sources"):
            assert key in meta
        assert meta["n_sources"] == len(src)
        assert abs(meta["sky_level_e"] / row["skyBg"] - 1) < 0.05


def test_calexp_wcs_read_back_against_true_wcs_over_the_sensor(tiny_repo, truth):
    """The calexp's fitted TAN-SIP WCS, read back from its FITS header, against the simulator's true WCS on a
    9 x 9 grid over the whole sensor. Expected: the fit's error, per axis sigma = astrom_rms / sqrt(2) x
    sqrt(p / n) at the fit points on average (p = 6 terms per axis for SIP degree 2, n matches), up to ~2x at the
    corners (leverage): the grid's rms within 4 sigma, its mean within 4 rms / sqrt(2 n), every point within
    8 sigma."""
    from twinkles.sim.wcs import true_wcs
    _, visits = truth
    for row in visits[:3]:
        did = {"visit": int(row["visit"]), "detector": 0}
        calexp = tiny_repo.get("calexp", did, runs=[RUN])
        meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
        # a SIP polynomial when the fit kept degree >= 2 (it is lowered with few matches), plain TAN otherwise
        has_sip = meta["astrom_sip_degree"] >= 2
        assert (calexp.wcs.sip is not None) == has_sip, meta["astrom_sip_degree"]
        assert calexp.wcs.wcs.ctype[0] == ("RA---TAN-SIP" if has_sip else "RA---TAN")
        tw = true_wcs(dict(zip(row.colnames, row.as_void())), tiny_repo.config)
        g = np.linspace(0, calexp.image.shape[1] - 1, 9)
        x, y = np.meshgrid(g, g)
        ra, dec = calexp.wcs.all_pix2world(x.ravel(), y.ravel(), 0)
        rt, dt = tw.all_pix2world(x.ravel(), y.ravel(), 0)
        dra, ddec = astrometric_offsets(ra, dec, rt, dt)
        n = meta["astrom_n_matches"]
        d = max(1, meta["astrom_sip_degree"])
        sigma = meta["astrom_rms_mas"] / math.sqrt(2.0) * math.sqrt((d + 1) * (d + 2) / 2 / n)
        for name, off in (("RA", dra), ("Dec", ddec)):
            what = f"visit {did['visit']} {name} (mas), fitted - true WCS over the sensor"
            assert_within(float(np.mean(off)), 0.0, meta["astrom_rms_mas"] / math.sqrt(2.0 * n), 4.0, "mean " + what)
            assert float(np.sqrt(np.mean(off ** 2))) < 4.0 * sigma, ("rms " + what, off, sigma)
            assert float(np.max(np.abs(off))) < 8.0 * sigma, ("max " + what, off, sigma)


def test_header_wcs_off_by_5_arcsec_and_rotated(tiny_repo, truth):
    """Perturb the header WCS further (5" and 0.1 deg on top of the simulated error): same astrometry."""
    tcat, visits = truth
    did = {"visit": int(visits[0]["visit"]), "detector": 0}
    exp = tiny_repo.get("eimage", did)
    w = exp.wcs.deepcopy()
    w.wcs.crval = [w.wcs.crval[0] + 4.0 / 3600 / math.cos(math.radians(w.wcs.crval[1])), w.wcs.crval[1] - 3.0 / 3600]
    th = math.radians(0.1)
    w.wcs.pc = w.wcs.get_pc() @ np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    w.wcs.set()
    exp.wcs = w
    res = run(exp, tiny_repo.get("ref_cat"), Config(), did)
    # the same pixels, another starting WCS: the fit must land on the same solution, so the positions of the
    # same sources agree with the run from the simulated header far within the fit's own error per axis
    base = tiny_repo.get("src", did, runs=[RUN])
    meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
    wcs_err = meta["astrom_rms_mas"] / math.sqrt(2.0 * meta["astrom_n_matches"])
    i_a, i_b, _ = match_sky(res.src["ra"], res.src["dec"], base["ra"], base["dec"], 0.5)
    assert len(i_a) > 0.95 * len(base)
    dra, ddec = astrometric_offsets(res.src["ra"][i_a], res.src["dec"][i_a], base["ra"][i_b], base["dec"][i_b])
    bright = np.asarray(base["snr"])[i_b] > 20
    for name, d in (("RA", dra[bright]), ("Dec", ddec[bright])):
        assert_within(float(np.mean(d)), 0.0, wcs_err, 1.0, f"mean {name} shift (mas) from the perturbed header")
        assert float(np.sqrt(np.mean(d ** 2))) < 2.0 * wcs_err, (name, d)


def _expect_failure(exposure, ref_cat, words, config=None):
    with pytest.raises(ProcessingError) as info:
        run(exposure, ref_cat, config or Config(), {"visit": 840, "detector": 0})
    msg = str(info.value)
    assert "visit 840" in msg
    for w in words:
        assert w in msg, msg


def test_bad_input_fails_with_reason(tiny_repo, truth):
    did = {"visit": 840, "detector": 0}
    ref = tiny_repo.get("ref_cat")
    exp = tiny_repo.get("eimage", did)
    bad = exp.copy()
    bad.image[:] = np.nan
    _expect_failure(bad, ref, ["NaN"])
    bad = exp.copy()
    bad.wcs = None
    _expect_failure(bad, ref, ["WCS"])
    # no stars: pure sky noise
    bad = exp.copy()
    rng = np.random.default_rng(3)
    bad.image = rng.normal(1000.0, 32.0, bad.image.shape).astype(np.float32)
    bad.variance[:] = 1024.0
    _expect_failure(bad, ref, ["no sources detected"])
    # reference catalog from another part of the sky: too few matches
    far = ref.copy()
    far["coord_dec"] = far["coord_dec"] + 0.5
    _expect_failure(exp, far, ["astrometry", "reference"])


def test_failure_paths_name_the_reason(tiny_repo, monkeypatch):
    """Each refusal of process_eimage names the visit, what was wrong and the option to change: no visit
    information, an unknown band, < 5% finite pixels, too few PSF stars, a failed aperture correction, and fits
    beyond the astrometric and photometric RMS limits (never a calexp with a wrong WCS or zero point)."""
    import dataclasses
    from twinkles.algorithms.photocal import PhotoCalError
    import twinkles.stages.process_eimage as pe
    did = {"visit": 840, "detector": 0}
    ref = tiny_repo.get("ref_cat")
    exp = tiny_repo.get("eimage", did)
    bad = exp.copy()
    bad.visit_info = None
    _expect_failure(bad, ref, ["no visit information", "re-ingest"])
    bad = exp.copy()
    bad.visit_info = dataclasses.replace(exp.visit_info, band="q")
    _expect_failure(bad, ref, ["unknown band 'q'"])
    bad = exp.copy()
    bad.image[:500] = np.nan  # 12 of 512 rows left: 2.3% finite
    _expect_failure(bad, ref, ["only 2.3% of the pixels are finite"])

    def cfg(**kw):
        return apply_config_overrides(Config(), {k: str(v) for k, v in kw.items()})
    _expect_failure(exp, ref, ["usable PSF stars", "psf.min_snr"], cfg(**{"psf.min_snr": 1e7}))
    _expect_failure(exp, ref, ["astrometry.max_rms_mas=0.01", "refusing to write a wrong WCS"],
                    cfg(**{"astrometry.max_rms_mas": 0.01}))
    _expect_failure(exp, ref, ["photocal.max_rms_mag=1e-05", "refusing to write a wrong zero point"],
                    cfg(**{"photocal.max_rms_mag": 1e-5}))

    def no_apcorr(*a, **k):
        raise PhotoCalError("2 stars for the aperture correction (need >= 3)")
    monkeypatch.setattr(pe, "aperture_correction", no_apcorr)
    _expect_failure(exp, ref, ["aperture correction: 2 stars"])


def test_partial_nan_and_missing_variance(tiny_repo, truth):
    """A NaN stripe is masked NO_DATA and the rest processed; an image without a variance plane gets one from
    its counts (Poisson + read noise). Both against the run on the intact eimage: the zero point within 4 of its
    errors (the two fits share most stars, so this is generous), the positions of the same sources within the
    WCS fit's error, the same point sources found."""
    tcat, visits = truth
    did = {"visit": 840, "detector": 0}
    ref = tiny_repo.get("ref_cat")
    base_src = tiny_repo.get("src", did, runs=[RUN])
    base_meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
    base_v = validate_visit(base_src, tcat, visits[0], base_meta)
    wcs_err = base_meta["astrom_rms_mas"] / math.sqrt(2.0 * base_meta["astrom_n_matches"])

    def compare(res, what):
        assert_within(res.metadata["zero_point"] * 1000, base_meta["zero_point"] * 1000,
                      base_meta["zero_point_err"] * 1000, 4.0, f"{what}: zero point (mmag) vs the intact run")
        i_a, i_b, _ = match_sky(res.src["ra"], res.src["dec"], base_src["ra"], base_src["dec"], 0.5)
        dra, ddec = astrometric_offsets(res.src["ra"][i_a], res.src["dec"][i_a], base_src["ra"][i_b],
                                        base_src["dec"][i_b])
        bright = np.asarray(base_src["snr"])[i_b] > 20
        for name, d in (("RA", dra[bright]), ("Dec", ddec[bright])):
            assert_within(float(np.mean(d)), 0.0, wcs_err, 4.0, f"{what}: mean {name} shift (mas)")
        return validate_visit(res.src, tcat, visits[0], res.metadata)

    exp = tiny_repo.get("eimage", did)
    exp.image[:, 200:230] = np.nan
    res = run(exp, ref, Config(), did)
    assert (res.calexp.mask[:, 200:230] & mask_bit("NO_DATA")).all()
    assert np.isfinite(res.calexp.image).all()
    assert res.metadata["n_no_data_pixels"] >= 512 * 30
    compare(res, "NaN stripe")
    exp = tiny_repo.get("eimage", did)
    exp.variance[:] = 1.0
    res = run(exp, ref, Config(), did)
    assert res.metadata["variance_from_image"]
    v = compare(res, "variance from the image")
    # the same S/N >= 10 point sources are found (at most one more or fewer: the variance differs slightly)
    found = round(v["completeness_snr10"] * v["n_point_sources_snr10"])
    base_found = round(base_v["completeness_snr10"] * base_v["n_point_sources_snr10"])
    assert abs(found - base_found) <= 1, (found, base_found)


def test_failed_quantum_writes_nothing(tiny_repo, tmp_path):
    """run_quantum raises before writing: no calexp with a wrong WCS reaches the repository."""
    did = {"visit": 841, "detector": 0}
    butler = QuantumButler(tiny_repo, "runs/failtest", ["raw"])

    class BadButler:
        outputs = butler.outputs

        def get(self, name, data_id=None, columns=None):
            obj = butler.get(name, data_id, columns)
            if name == "ref_cat":
                obj = obj[:3]
            return obj

        def put(self, *a, **k):
            return butler.put(*a, **k)

    with pytest.raises(ProcessingError, match="visit 841"):
        run_quantum(BadButler(), did, Config())
    assert butler.outputs == []
    assert not (tiny_repo.root / "runs" / "failtest").exists()


def test_config_overrides_from_command_line(tiny_repo):
    module = load_stage("process_eimage")
    cfg = apply_config_overrides(module.Config(), {"process_eimage.detection.threshold": "6",
                                                   "process_eimage.psf.order": "1"}, "process_eimage")
    assert cfg.detection.threshold == 6.0 and cfg.psf.order == 1
    assert module.Config().detection.threshold == 5.0
    rc = cli_main(["stage", "process_eimage", str(tiny_repo.root), "--id", "visit=841", "--run", "runs/thr6",
                   "--config", "process_eimage.detection.threshold=6"])
    assert rc == 0
    n6 = len(tiny_repo.get("src", {"visit": 841, "detector": 0}, runs=["runs/thr6"]))
    n5 = len(tiny_repo.get("src", {"visit": 841, "detector": 0}, runs=[RUN]))
    assert n6 < n5


def test_validation_report_sections(tiny_repo, tmp_path):
    from twinkles.validate.report import validation_sections
    sections = validation_sections(tiny_repo.root, RUN, tmp_path)
    assert len(sections) == 1
    sec = sections[0]
    assert sec["metrics"]["n_visits"] == 6
    assert sec["metrics"]["astrometry_median_offset_mas"] < 5
    for fig in sec["figures"]:
        assert (tmp_path / fig).stat().st_size > 1000


@pytest.mark.slow
def test_demo_field_against_truth(tmp_path):
    """The demo preset (1k x 1k, g r i), 6 visits: the same requirements on a bigger, deeper field."""
    from twinkles.sim.simulate import simulate_field
    from twinkles.validate.report import validation_sections
    root = tmp_path / "demo"
    simulate_field(root, preset="demo", seed=2, n_visits=6)
    assert cli_main(["stage", "process_eimage", str(root), "--run", RUN]) == 0
    sec = validation_sections(root, RUN, tmp_path / "val")[0]
    m = sec["metrics"]
    assert m["n_visits"] == 6
    assert m["astrometry_median_offset_mas"] < 5 and m["astrometry_rms_offset_mas"] < 10
    assert 0.8 < m["psf_flux_pull_sd"] < 1.3
    assert abs(m["zero_point_offset_median_mmag"]) < 5
    assert abs(m["psf_fwhm_ratio_median"] - 1) < 0.02 and m["psf_fwhm_ratio_max_dev_pct"] < 2.5
    assert m["completeness_snr10_median"] > 0.95
    assert m["spurious_fraction_median"] < 0.02


def test_piff_psf_option(tiny_repo, truth):
    """psf.algorithm=piff: a Piff model, stored in the calexp and read back, as good as the pixel model."""
    from twinkles.psf import PiffPSF
    tcat, visits = truth
    did = {"visit": int(visits[1]["visit"]), "detector": 0}
    cfg = apply_config_overrides(Config(), {"psf.algorithm": "piff"})
    res = run(tiny_repo.get("eimage", did), tiny_repo.get("ref_cat"), cfg, did)
    assert isinstance(res.calexp.psf, PiffPSF)
    v = validate_visit(res.src, tcat, visits[1], res.metadata)
    assert abs(v["psf_fwhm_ratio"] - 1) < 0.02
    # against the pixel-model run of the same visit: zero point within 4 of its errors, the same positions
    base_meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
    base_src = tiny_repo.get("src", did, runs=[RUN])
    assert_within(res.metadata["zero_point"] * 1000, base_meta["zero_point"] * 1000,
                  base_meta["zero_point_err"] * 1000, 4.0, "piff: zero point (mmag) vs the pixel PSF's")
    wcs_err = base_meta["astrom_rms_mas"] / math.sqrt(2.0 * base_meta["astrom_n_matches"])
    i_a, i_b, _ = match_sky(res.src["ra"], res.src["dec"], base_src["ra"], base_src["dec"], 0.5)
    dra, ddec = astrometric_offsets(res.src["ra"][i_a], res.src["dec"][i_a], base_src["ra"][i_b],
                                    base_src["dec"][i_b])
    for name, d in (("RA", dra), ("Dec", ddec)):
        assert_within(float(np.mean(d)), 0.0, wcs_err, 4.0, f"piff: mean {name} shift (mas)")
    from twinkles.image import Exposure
    back = Exposure.from_hdulist(res.calexp.to_hdulist())
    assert isinstance(back.psf, PiffPSF)
    assert np.allclose(back.psf.kernel_image(200, 300, 25), res.calexp.psf.kernel_image(200, 300, 25), atol=1e-6)


def test_rerun_writes_identical_files(tiny_repo):
    """The workflow's resume guarantee: a job re-done (e.g. after an interruption) writes byte-identical calexp,
    calexp_background, src and metadata files; the timings are returned to the caller, never written."""
    did = {"visit": 842, "detector": 0}
    files = []
    for run_name in ("runs/rerun1", "runs/rerun2"):
        butler = QuantumButler(tiny_repo, run_name, ["raw"])
        returned = run_quantum(butler, did, Config())
        assert "cpu_s" in returned and "timings_s" in returned
        files.append({ref.dataset_type: (tiny_repo.root / ref.path).read_bytes() for ref in butler.outputs})
    assert sorted(files[0]) == sorted(OUTPUTS)
    for name in OUTPUTS:
        assert files[0][name] == files[1][name], f"{name} differs between two runs of the same job"
    meta = tiny_repo.get("process_eimage_metadata", did, runs=[RUN])
    assert not {"timings_s", "cpu_s"} & set(meta)
