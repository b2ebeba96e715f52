"""Tile-compressed image datasets: round trips (masks exact, quantization within sigma/16), readers other than
astropy, reproducible files, configuration, and a kill -9 during a compressed write."""

import math
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import fitsio
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from twinkles.compression import QUANTIZE_FRACTION, VARIANCE_RELATIVE_STEP, exposure_steps
from twinkles.image import Exposure, PhotoCalib, VisitInfo, mask_bit
from twinkles.psf import GaussianPSF
from twinkles.repo import Repository, RepositoryError

DID = {"visit": 840, "detector": 0}


def _wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0091, -27.4389]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600.0
    return w


def _sky_exposure(shape=(300, 400), sky=1200.0, read_noise=9.0, seed=3, n_stars=60):
    """A sky-dominated e-image like the simulator's: Poisson sky and stars, variance = counts + read noise^2,
    a mask with several planes, a NaN pixel and a no-data corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    model = np.full(shape, sky) * (1 + 0.01 * xx / shape[1])
    for _ in range(n_stars):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        flux = 10 ** rng.uniform(3, 6)
        model += flux / (2 * np.pi * 2.0**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2))
    image = (rng.poisson(model) + rng.normal(0, read_noise, shape)).astype(np.float32)
    variance = (np.maximum(image, 0) + read_noise**2).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    mask[image > sky + 500] |= mask_bit("DETECTED")
    mask[:, :4] |= mask_bit("EDGE")
    mask[10:12, 20:40] |= mask_bit("SAT", "BAD")
    mask[rng.integers(0, shape[0], 50), rng.integers(0, shape[1], 50)] |= mask_bit("CR", "INTRP")
    image[5, 7] = np.nan
    return Exposure(image, mask, variance, _wcs(shape), GaussianPSF(3.1), PhotoCalib(0.0631, 1e-4),
                    VisitInfo(840, "r", 60000.25, 30.0, 1.1, 0.7, sky), {"gain": 1.0})


@pytest.fixture()
def repo(tmp_path):
    return Repository.create(tmp_path / "repo", {"field": {"ra_deg": 53.0091, "dec_deg": -27.4389}})


def _path(repo, dataset_type="calexp", did=DID, run="runs/t"):
    return repo.root / repo.relative_path(dataset_type, did, run)


def test_lossy_round_trip_within_sigma_over_16(repo):
    exp = _sky_exposure()
    repo.put(exp, "calexp", DID, run="runs/t")
    back = repo.get("calexp", DID)
    # masks bit-identical
    assert back.mask.dtype == np.int32 and np.array_equal(back.mask, exp.mask)
    # image: per-pixel error at most half a step (sigma_floor/32), below sigma/16 everywhere, RMS < 0.02 sigma
    sigma = np.sqrt(exp.variance)
    step_image, step_var = exposure_steps(exp.variance)
    finite = np.isfinite(exp.image)
    assert np.isnan(back.image[5, 7]) and np.array_equal(finite, np.isfinite(back.image))
    err = (back.image - exp.image)[finite] / sigma[finite]
    assert np.abs(back.image - exp.image)[finite].max() <= step_image / 2 * (1 + 1e-5) + 1e-4
    assert np.abs(err).max() < 1 / 16
    assert np.sqrt(np.mean(err**2)) < 0.02
    assert abs(np.mean(err)) < 5 * 0.02 / math.sqrt(err.size)  # dithered quantization is unbiased
    # variance: half a step at most, below 1/16 of its own noise (Poisson: sqrt(V)) and 1/1024 of the variance
    verr = np.abs(back.variance - exp.variance)
    assert verr.max() <= step_var / 2 * (1 + 1e-5) + 1e-4
    assert np.all(verr < np.sqrt(exp.variance) / 16) and np.all(verr < exp.variance * VARIANCE_RELATIVE_STEP)
    # everything else as before
    assert back.visit_info == exp.visit_info and back.photo_calib == exp.photo_calib
    assert back.psf.fwhm() == pytest.approx(3.1)
    assert np.allclose(back.wcs.pixel_to_world_values(10.5, 40.25), exp.wcs.pixel_to_world_values(10.5, 40.25),
                       atol=1e-12)


def test_lossy_file_layout_and_steps(repo):
    """The file follows the tiled-image convention: RICE, SUBTRACTIVE_DITHER_1, one ZSCALE per tile at most the
    noise floor / 16; the PSF HDU is not compressed; it is several times smaller than the uncompressed file."""
    exp = _sky_exposure()
    repo.put(exp, "calexp", DID, run="runs/t")
    path = _path(repo)
    step_image, step_var = exposure_steps(exp.variance)
    assert step_image <= math.sqrt(np.percentile(exp.variance, 1)) * QUANTIZE_FRACTION * 1.05
    with fits.open(path, disable_image_compression=True) as raw:
        names = [h.name for h in raw]
        assert names[:4] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"] and "PSF" in names
        for name, step in (("IMAGE", step_image), ("VARIANCE", step_var)):
            h = raw[name].header
            assert h["ZCMPTYPE"] == "RICE_1" and h["ZQUANTIZ"] == "SUBTRACTIVE_DITHER_1"
            assert np.allclose(raw[name].data["ZSCALE"], step)
        assert raw["MASK"].header["ZCMPTYPE"] == "RICE_1" and "ZQUANTIZ" not in raw["MASK"].header
        assert not isinstance(raw["PSF"], fits.BinTableHDU) or "ZIMAGE" not in raw["PSF"].header
        assert "ZIMAGE" not in raw["PSF"].header
    plain = Repository.create(repo.root.parent / "plain", {"storage": {"compression": "none"}})
    plain.put(exp, "calexp", DID, run="runs/t")
    assert path.stat().st_size < 0.35 * _path(plain).stat().st_size


def test_other_readers_read_the_compressed_file(repo):
    """fitsio (cfitsio, as ds9 and fpack read it) decodes the same pixels as astropy; headers keep the WCS."""
    exp = _sky_exposure()
    repo.put(exp, "calexp", DID, run="runs/t")
    back = repo.get("calexp", DID)
    with fitsio.FITS(str(_path(repo))) as f:
        assert np.array_equal(f["MASK"].read(), back.mask)
        img = f["IMAGE"].read()
        assert np.array_equal(np.isnan(img), np.isnan(back.image))
        assert np.array_equal(img[np.isfinite(img)], back.image[np.isfinite(back.image)])
        assert np.array_equal(f["VARIANCE"].read(), back.variance)
        assert f["IMAGE"].read_header()["CTYPE1"].startswith("RA---TAN")


@pytest.mark.parametrize("mode", ["lossy", "lossless"])
def test_rewrite_gives_identical_bytes(repo, mode):
    """A re-run writes the same bytes (a second later: gzip headers written by astropy would carry the time)."""
    repo.write_config(dict(repo.config, storage={"compression": mode}))
    exp = _sky_exposure()
    counts = np.random.default_rng(0).integers(0, 30, (50, 60)).astype(np.float32)
    did = {"tract": 0, "patch": 1, "band": "r"}
    repo.put(exp, "calexp", DID, run="runs/t")
    repo.put(counts, "deepCoadd_nImage", did, run="runs/t")
    first = [_path(repo).read_bytes(), _path(repo, "deepCoadd_nImage", did).read_bytes()]
    time.sleep(1.05)
    repo.put(exp, "calexp", DID, run="runs/t")
    repo.put(counts, "deepCoadd_nImage", did, run="runs/t")
    assert _path(repo).read_bytes() == first[0]
    assert _path(repo, "deepCoadd_nImage", did).read_bytes() == first[1]


def test_dither_seeds_follow_the_data_id(repo):
    exp = _sky_exposure()
    repo.put(exp, "calexp", DID, run="runs/t")
    other = {"visit": 841, "detector": 0}
    repo.put(exp, "calexp", other, run="runs/t")
    seeds = []
    for did in (DID, other):
        with fits.open(_path(repo, did=did), disable_image_compression=True) as raw:
            seeds.append(raw["IMAGE"].header["ZDITHER0"])
    assert seeds[0] != seeds[1] and all(1 <= s <= 10000 for s in seeds)


def test_per_dataset_type_modes(repo):
    repo.write_config(dict(repo.config, storage={"compression": {"default": "lossy", "eimage": "lossless",
                                                                 "deepCoadd": "none"}}))
    exp = _sky_exposure()
    repo.put(exp, "eimage", DID)
    repo.put(exp, "calexp", DID, run="runs/t")
    back = repo.get("eimage", DID)
    for plane in ("image", "mask", "variance"):
        assert np.array_equal(getattr(back, plane), getattr(exp, plane), equal_nan=plane == "image")
    with fits.open(_path(repo, "eimage", run="raw"), disable_image_compression=True) as raw:
        assert raw["IMAGE"].header["ZCMPTYPE"] == "GZIP_2"
    with fits.open(_path(repo), disable_image_compression=True) as raw:
        assert raw["IMAGE"].header["ZQUANTIZ"] == "SUBTRACTIVE_DITHER_1"


@pytest.mark.parametrize("storage, message", [
    ({"compression": "fast"}, "'fast' is not a compression mode"),
    ({"compression": {"calexp": "lossles"}}, "calexp: 'lossles' is not a compression mode"),
    ({"compression": {"src": "lossless"}}, "'src' is not an image dataset type"),
    ("lossy", "storage must be a mapping"),
])
def test_bad_compression_config_is_explained(repo, storage, message):
    repo.write_config(dict(repo.config, storage=storage))
    with pytest.raises(RepositoryError, match=message):
        repo.put(_sky_exposure(), "calexp", DID, run="runs/t")
    assert repo.query("calexp") == []


def test_image_f_round_trips(repo):
    """ImageF: counts (integer values) exactly; a float image within cfitsio's per-tile step (sigma_tile/16)."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 40, (200, 300)).astype(np.float32)
    repo.put(counts, "deepCoadd_nImage", {"tract": 0, "patch": 3, "band": "r"}, run="runs/t")
    assert np.array_equal(repo.get("deepCoadd_nImage", {"tract": 0, "patch": 3, "band": "r"}), counts)
    noisy = rng.normal(50.0, 4.0, (200, 300)).astype(np.float32)
    repo.put(noisy, "deepCoadd_nImage", {"tract": 0, "patch": 4, "band": "r"}, run="runs/t")
    back = repo.get("deepCoadd_nImage", {"tract": 0, "patch": 4, "band": "r"})
    assert back.dtype == np.float32 and np.abs(back - noisy).max() < 4.0 / 16


def test_kill_during_compressed_write_leaves_no_final_file(repo):
    """SIGKILL a process while astropy is compressing and writing a real Exposure: the temporary file holds a
    part of it, nothing is under the final name, nothing is registered; check(fix=True) removes the leftover."""
    script = textwrap.dedent(f"""
        import os, sys, threading, time
        import numpy as np
        from twinkles.image import Exposure
        from twinkles.repo import Repository
        import twinkles.repo.storage as storage
        from twinkles.repo.storage import TMP_MARKER
        repo = Repository({str(repo.root)!r})
        rng = np.random.default_rng(0)
        image = rng.normal(1000.0, 30.0, (1500, 1500)).astype(np.float32)
        exp = Exposure(image, np.zeros(image.shape, np.int32), np.full(image.shape, 900.0, np.float32))
        folder = repo.root / "raw" / "eimage" / "visit7"
        def watch():  # tell the parent once a part of the file is on disk, the rest still to come
            while True:
                for p in (folder.glob("*" + TMP_MARKER + "*") if folder.exists() else []):
                    if p.stat().st_size > 0:
                        print("half", flush=True)
                        return
                time.sleep(0.0005)
        real = storage._write_fits
        def slow_write(hdul, path):  # the real compressed write, then a pause so the kill lands before rename
            real(hdul, path)
            time.sleep(60)
        threading.Thread(target=watch, daemon=True).start()
        storage._write_fits = slow_write
        repo.put(exp, "eimage", {{"visit": 7, "detector": 0}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert repo.query("eimage") == []
    final = repo.root / repo.relative_path("eimage", {"visit": 7, "detector": 0}, "raw")
    assert not final.exists()
    status = repo.check()
    assert status["missing_files"] == 0 and status["temporary_files"] == 1
    repo.check(fix=True)
    assert repo.check()["temporary_files"] == 0


@pytest.mark.parametrize("mode", ["lossy", "lossless"])
def test_cfitsio_funpack_decompresses_the_file(repo, tmp_path, mode):
    """Debian's cfitsio tools (funpack: the fpack convention that ds9 also reads) get the same pixels."""
    funpack = shutil.which("funpack")
    if funpack is None:
        pytest.skip("funpack is absent: apt-get install libcfitsio-bin to run this test")
    repo.write_config(dict(repo.config, storage={"compression": mode}))
    repo.put(_sky_exposure(), "calexp", DID, run="runs/t")
    back = repo.get("calexp", DID)
    out = tmp_path / "unpacked.fits"
    subprocess.run([funpack, "-O", str(out), str(_path(repo))], check=True, capture_output=True)
    with fits.open(out) as h:
        assert not isinstance(h["IMAGE"], fits.CompImageHDU)
        assert np.array_equal(h["IMAGE"].data, back.image, equal_nan=True)
        assert np.array_equal(h["MASK"].data, back.mask) and np.array_equal(h["VARIANCE"].data, back.variance)
