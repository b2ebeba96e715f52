"""Repository: round trips, data-ID validation, atomic writes, crash consistency, queries."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from twinkles.image import Exposure, PhotoCalib, VisitInfo, mask_bit
from twinkles.psf import GaussianPSF, ImageGridPSF
from twinkles.repo import (DataIdError, DatasetNotFoundError, QuantumButler, Repository, RepositoryError,
                           parse_id_args, validate_data_id)
from twinkles.repo.storage import DatasetReadError


def _wcs(ra=53.0091, dec=-27.4389, shape=(64, 64)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600.0
    return w


def _exposure(visit=840, seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, shape)
    mask = np.zeros(shape, np.int32)
    mask[3, 5] = mask_bit("SAT", "CR")
    return Exposure(image, mask, image + 25.0, _wcs(shape=shape), GaussianPSF(3.1), PhotoCalib(0.0631, 1e-4),
                    VisitInfo(visit, "r", 60000.25, 30.0, 1.1, 0.7, 1200.0), {"gain": 1.0})


@pytest.fixture()
def repo(tmp_path):
    return Repository.create(tmp_path / "repo", {"field": {"ra_deg": 53.0091, "dec_deg": -27.4389}})


@pytest.mark.parametrize("mode", ["lossless", "none"])
def test_exposure_round_trip_is_lossless(repo, mode):
    """With storage.compression lossless (tile-compressed) or none, every plane comes back bit for bit (the lossy
    default: tests/repo/test_compression.py)."""
    repo.write_config(dict(repo.config, storage={"compression": mode}))
    exp = _exposure()
    repo.put(exp, "eimage", {"visit": 840, "detector": 0})
    back = repo.get("eimage", {"visit": 840, "detector": 0})
    assert np.array_equal(back.image, exp.image)
    assert np.array_equal(back.mask, exp.mask)
    assert np.array_equal(back.variance, exp.variance)
    assert back.visit_info == exp.visit_info
    assert back.photo_calib == exp.photo_calib
    assert back.psf.fwhm() == pytest.approx(3.1)
    assert back.metadata["gain"] == 1.0
    # WCS survives: same sky position for the same pixel
    for x, y in [(0, 0), (10.5, 40.25), (63, 63)]:
        assert np.allclose(back.wcs.pixel_to_world_values(x, y), exp.wcs.pixel_to_world_values(x, y),
                           atol=1e-12)


def test_image_grid_psf_round_trip(repo):
    exp = _exposure()
    stamps = np.stack([np.stack([GaussianPSF(f).kernel_image(0, 0, 21) for f in (3.0, 3.4)]) for _ in range(2)])
    exp.psf = ImageGridPSF(stamps, [0, 63], [0, 63])
    repo.put(exp, "calexp", {"visit": 840, "detector": 0}, run="runs/test")
    psf = repo.get("calexp", {"visit": 840, "detector": 0}).psf
    assert psf.fwhm(0, 0) == pytest.approx(exp.psf.fwhm(0, 0), rel=1e-5)
    assert psf.fwhm(63, 0) > psf.fwhm(0, 0)
    assert np.allclose(psf.kernel_image(31.5, 10), exp.psf.kernel_image(31.5, 10), atol=1e-7)


def test_catalog_round_trip(repo):
    t = Table({"sourceId": np.arange(5, dtype=np.int64), "psfFlux": np.linspace(1, 2, 5),
               "band": ["r"] * 5, "flag": [True, False, True, False, False]})
    t["psfFlux"].unit = "nJy"
    t.meta["visit"] = 840
    repo.put(t, "src", {"visit": 840, "detector": 0}, run="runs/test")
    back = repo.get("src", {"visit": 840, "detector": 0})
    assert back.colnames == t.colnames
    for c in t.colnames:
        assert list(back[c]) == list(t[c])
    assert str(back["psfFlux"].unit) == "nJy"
    assert back.meta["visit"] == 840
    assert back["flag"].dtype == bool
    some = repo.get("src", {"visit": 840, "detector": 0}, columns=["psfFlux", "sourceId"])
    assert some.colnames == ["psfFlux", "sourceId"] and str(some["psfFlux"].unit) == "nJy"
    with pytest.raises(DatasetReadError, match="no column.s. nope; its columns: sourceId, psfFlux"):
        repo.get("src", {"visit": 840, "detector": 0}, columns=["psfFlux", "nope"])


@pytest.mark.parametrize("bad", [
    {"visit": "../etc"}, {"visit": "84/0"}, {"visit": 1.5}, {"visit": -3}, {"band": "q"}, {"band": "../r"},
    {"visit": True}, {"colour": 1},
])
def test_bad_data_ids_are_refused(repo, bad):
    with pytest.raises(DataIdError):
        validate_data_id(bad)
    did = {"visit": 840, "detector": 0}
    did.update(bad)
    with pytest.raises(DataIdError):
        repo.put(_exposure(), "eimage", did)
    assert repo.query("eimage") == []


def test_bad_run_names_are_refused(repo):
    for run in ["../x", "/abs", "a/../b", "a b", ""]:
        with pytest.raises(DataIdError):
            repo.put(_exposure(), "eimage", {"visit": 1, "detector": 0}, run=run)


def test_missing_dimension_is_refused(repo):
    with pytest.raises(DataIdError, match="lacks 'detector'"):
        repo.put(_exposure(), "eimage", {"visit": 840})


def test_query_ranges_lists_and_runs(repo):
    for v in range(838, 845):
        repo.put(_exposure(v, seed=v), "eimage", {"visit": v, "detector": 0})
    q = parse_id_args("visit=840..842")
    assert [r.data_id["visit"] for r in repo.query("eimage", q)] == [840, 841, 842]
    assert [r.data_id["visit"] for r in repo.query("eimage", parse_id_args("visit=838,844"))] == [838, 844]
    with pytest.raises(DataIdError):
        parse_id_args("visit=842..840")
    with pytest.raises(DatasetNotFoundError, match="no calexp"):
        repo.get("calexp", {"visit": 840, "detector": 0})
    # the same data ID in two runs: explicit run order decides, else the newest registration
    repo.put(_exposure(840, seed=1), "calexp", {"visit": 840, "detector": 0}, run="runs/a")
    repo.put(_exposure(840, seed=2), "calexp", {"visit": 840, "detector": 0}, run="runs/b")
    assert repo.find("calexp", {"visit": 840, "detector": 0}).run == "runs/b"
    assert repo.find("calexp", {"visit": 840, "detector": 0}, runs=["runs/a", "runs/b"]).run == "runs/a"


def test_quantum_butler_writes_without_registering(repo):
    repo.put(_exposure(), "eimage", {"visit": 840, "detector": 0})
    butler = QuantumButler(repo, "runs/l2")
    exp = butler.get("eimage", {"visit": 840, "detector": 0})
    ref = butler.put(exp, "calexp", {"visit": 840, "detector": 0})
    assert (repo.root / ref.path).exists()
    assert not repo.exists("calexp", {"visit": 840, "detector": 0})  # only the orchestrator registers
    repo.register(butler.outputs)
    assert repo.exists("calexp", {"visit": 840, "detector": 0})


def test_register_refuses_refs_without_files(repo):
    butler = QuantumButler(repo, "runs/l2")
    ref = butler.put(_exposure(), "calexp", {"visit": 840, "detector": 0})
    os.unlink(repo.root / ref.path)
    with pytest.raises(RepositoryError, match="does not exist"):
        repo.register(butler.outputs)
    assert repo.query("calexp") == []


def test_exception_during_write_leaves_nothing(repo, monkeypatch):
    exp = _exposure()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(exp), "to_hdulist", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        repo.put(exp, "eimage", {"visit": 840, "detector": 0})
    assert repo.query("eimage") == []
    assert [p for p in repo.root.rglob("*") if p.is_file() and p.suffix == ".fits"] == []
    assert repo.check() == {"missing_files": 0, "damaged_files": 0, "damaged_inputs": 0, "temporary_files": 0}


def test_killed_writer_leaves_repository_consistent(repo, tmp_path):
    """SIGKILL a process half-way through writing a large file: no final file, no registry row."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        from twinkles.repo import Repository
        import twinkles.repo.storage as storage
        from twinkles.image import Exposure
        repo = Repository({str(repo.root)!r})
        exp = Exposure(np.zeros((64, 64)))
        def half_written(hdul, path):
            with open(path, "wb") as f:
                f.write(b"SIMPLE  =                    T" + b" " * 5000)
                f.flush()
                print("half", flush=True)
                signal.pause()
        storage._write_fits = half_written
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


def test_check_finds_files_truncated_after_registration(repo):
    """A machine crash can leave a registered file shorter than written (job outputs are not fsync'ed): check()
    compares each file with the size recorded at registration. fix=True drops a processing output's row and file
    (its job is done again); a damaged input (raw) is only reported: nothing can make it again."""
    out = repo.write(_exposure(), "calexp", {"visit": 840, "detector": 0}, "runs/x")
    repo.register(out)
    good = repo.put(_exposure(visit=841, seed=1), "eimage", {"visit": 841, "detector": 0})
    raw = repo.put(_exposure(visit=842, seed=2), "eimage", {"visit": 842, "detector": 0})
    for ref in (out, raw):
        data = repo.abspath(ref).read_bytes()
        repo.abspath(ref).write_bytes(data[: len(data) // 3])
    assert repo.check() == {"missing_files": 0, "damaged_files": 1, "damaged_inputs": 1, "temporary_files": 0}
    repo.check(fix=True)
    assert not repo.abspath(out).exists() and repo.query("calexp", runs="runs/x") == []
    assert repo.abspath(raw).exists() and repo.abspath(good).exists()
    assert repo.check() == {"missing_files": 0, "damaged_files": 0, "damaged_inputs": 1, "temporary_files": 0}


def test_registry_of_an_earlier_version_gets_the_size_column(repo):
    """Registries made before sizes were recorded: their rows are not size-checked, new ones are."""
    import sqlite3
    old = repo.put(_exposure(), "eimage", {"visit": 840, "detector": 0})
    with sqlite3.connect(repo.registry_path) as conn:
        conn.execute("ALTER TABLE datasets DROP COLUMN size")
    assert repo.check()["damaged_inputs"] == 0
    new = repo.put(_exposure(visit=841), "eimage", {"visit": 841, "detector": 0})  # adds the column
    repo.abspath(new).write_bytes(b"SIMPLE")
    repo.abspath(old).write_bytes(b"SIMPLE")  # no recorded size: only missing files are found for it
    assert repo.check() == {"missing_files": 0, "damaged_files": 0, "damaged_inputs": 1, "temporary_files": 0}


def test_corrupt_file_read_gives_clear_error(repo):
    ref = repo.put(_exposure(), "eimage", {"visit": 840, "detector": 0})
    with open(repo.root / ref.path, "r+b") as f:
        f.truncate(3000)
    with pytest.raises(Exception, match="corrupt"):
        repo.get("eimage", {"visit": 840, "detector": 0})


def test_not_a_repository(tmp_path):
    with pytest.raises(RepositoryError, match="not a twinkles repository"):
        Repository(tmp_path)
