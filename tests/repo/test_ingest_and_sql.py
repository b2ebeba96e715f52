"""Ingest of external FITS images and SQL over catalogs."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from twinkles.cli import main
from twinkles.repo import Repository
from twinkles.repo.ingest import IngestError, ingest_files, read_external_image
from twinkles.repo.sql import run_sql


def _write_fits(path, band="r", wcs=True, data=None, extra=None):
    data = np.random.default_rng(1).normal(500, 22, (40, 50)) if data is None else data
    hdr = fits.Header()
    if wcs:
        hdr.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 53.0, "CRVAL2": -27.4,
                    "CRPIX1": 25.5, "CRPIX2": 20.5, "CD1_1": -0.2 / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                    "CD2_2": 0.2 / 3600})
    if band is not None:
        hdr["FILTER"] = band
    hdr["MJD-OBS"] = 60310.1
    hdr["EXPTIME"] = 30.0
    hdr.update(extra or {})
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return str(path)


def test_ingest_good_and_bad_files(tmp_path):
    good = [_write_fits(tmp_path / "a.fits", "LSST-r"), _write_fits(tmp_path / "b.fits", "i",
                                                                    extra={"VISIT": 1234, "GAIN": 2.0})]
    nowcs = _write_fits(tmp_path / "nowcs.fits", wcs=False)
    badband = _write_fits(tmp_path / "badband.fits", band="Halpha")
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_bytes(open(good[0], "rb").read()[:3000])
    nan = _write_fits(tmp_path / "nan.fits", data=np.full((10, 10), np.nan))
    refs, failures = ingest_files(tmp_path / "repo", good + [nowcs, badband, str(corrupt), nan])
    assert len(refs) == 2
    reasons = dict(failures)
    assert "no celestial WCS" in reasons[nowcs]
    assert "unknown band 'Halpha'" in reasons[badband]
    assert "corrupt" in reasons[str(corrupt)]
    assert "NaN" in reasons[nan]
    repo = Repository(tmp_path / "repo")
    eimages = repo.query("eimage")
    assert sorted(r.data_id["visit"] for r in eimages) == [0, 1234]
    b = repo.get("eimage", {"visit": 1234, "detector": 0})
    assert b.visit_info.band == "i"
    src = fits.getdata(good[1])
    # ADU -> electrons with GAIN, to within the lossy storage's quantization (at most sigma/32 per pixel)
    assert np.all(np.abs(b.image - src * 2.0) <= np.sqrt(b.variance) / 32 * 1.0001)
    assert np.mean(b.image) / np.mean(src * 2.0) == pytest.approx(1.0, abs=1e-4)
    assert b.visit_info.mjd_tai == pytest.approx(60310.1 + 15 / 86400)
    assert np.allclose(b.wcs.pixel_to_world_values(24.5, 19.5), (53.0, -27.4))
    # the robust read-noise estimate recovers the scatter beyond Poisson: sqrt(44^2 - 1000) ~ 30.6 e-
    assert b.metadata["readnoise"] == pytest.approx(np.sqrt(44.0**2 - 1000.0), rel=0.15)
    # ingesting the same visit twice is refused and registers nothing new
    refs2, failures2 = ingest_files(tmp_path / "repo", [good[1]])
    assert refs2 == [] and "already in the repository" in failures2[0][1]
    assert len(repo.query("eimage")) == 2


def test_band_needed(tmp_path):
    path = _write_fits(tmp_path / "x.fits", band=None)
    with pytest.raises(IngestError, match="--band"):
        read_external_image(path)
    assert read_external_image(path, band="g").visit_info.band == "g"


def test_ingest_cli_exit_codes(tmp_path, capsys):
    good = _write_fits(tmp_path / "a.fits")
    bad = _write_fits(tmp_path / "b.fits", wcs=False)
    assert main(["ingest", str(tmp_path / "repo"), good]) == 0
    assert main(["ingest", str(tmp_path / "repo"), bad]) == 1
    assert "REFUSED" in capsys.readouterr().err


def test_sql_over_catalogs(tmp_path, capsys):
    repo = Repository.create(tmp_path / "repo")
    for visit in (1, 2):
        t = Table({"sourceId": np.arange(3) + 10 * visit, "visit": [visit] * 3, "psfFlux": [1.0, 2.0, 3.0]})
        repo.put(t, "src", {"visit": visit, "detector": 0}, run="runs/l2")
    repo.put(Table({"visit": [1, 2], "seeing": [0.7, 0.9]}), "visit_table", run="truth")
    out = run_sql(repo, "SELECT s.visit, sum(psfFlux) AS f, max(v.seeing) AS seeing FROM Source s "
                        "JOIN Visit v USING (visit) GROUP BY s.visit ORDER BY s.visit")
    assert out.to_pydict() == {"visit": [1, 2], "f": [6.0, 6.0], "seeing": [0.7, 0.9]}
    # registry tables are visible too
    assert run_sql(repo, "SELECT count(*) AS n FROM datasets").to_pydict()["n"] == [3]
    assert main(["sql", str(tmp_path / "repo"), "SELECT count(*) AS n FROM Source"]) == 0
    assert "6" in capsys.readouterr().out
    assert main(["sql", str(tmp_path / "repo"), "SELECT * FROM Object"]) == 2
    assert "Tables in this repository" in capsys.readouterr().err
