"""The built-in DDF-like cadence and the OpSim reader."""

import sqlite3

import numpy as np
import pytest

from twinkles.cli import main
from twinkles.repo import Repository
from twinkles.sim import SimulationInputError
from twinkles.sim.cadence import OPSIM_COLUMNS, generate_cadence, read_opsim
from twinkles.sim.lsst import M5_DARK, opsim_m5
from twinkles.sim.presets import FIELD_DEC_DEG, FIELD_RA_DEG, get_preset


def test_opsim_m5_formula_reproduces_smtn002_dark_zenith_depths():
    for band, m5 in M5_DARK.items():
        from twinkles.sim.lsst import DARK_SKY, FWHM_EFF_MEDIAN
        assert opsim_m5(band, DARK_SKY[band], FWHM_EFF_MEDIAN[band], 30.0, 1.0) == pytest.approx(m5, abs=0.1)


def test_generated_cadence_is_lsst_like():
    cfg = get_preset("twinkles1")
    t = generate_cadence(cfg, np.random.default_rng(4))
    assert len(t) == cfg["n_visits"]
    assert np.all(np.diff(t["mjd"]) > 0) and len(set(t["visit"])) == len(t)
    assert set(t["band"]) == set("ugrizy")
    assert np.all((t["airmass"] >= 1.0) & (t["airmass"] < 2.0))
    for band in "ugrizy":
        sel = t["band"] == band
        # median depth within ~0.5 mag of SMTN-002's dark-sky zenith m5 (moon and airmass make it shallower)
        assert M5_DARK[band] - 0.8 < np.median(t["fiveSigmaDepth"][sel]) < M5_DARK[band] + 0.2
        assert 0.6 < np.median(t["seeingFwhmEff"][sel]) < 1.2
    nights = np.unique(np.floor(t["mjd"] - 0.5))
    gaps = np.diff(nights)
    assert gaps.min() >= 1 and np.median(gaps) <= 4
    assert gaps.max() > 100  # seasons: the field sets for months


def _make_opsim(path, rows, columns=OPSIM_COLUMNS):
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE observations ({', '.join(c + ' REAL' if c != 'filter' else c + ' TEXT' for c in columns)})")
    for r in rows:
        conn.execute(f"INSERT INTO observations VALUES ({','.join('?' * len(columns))})", [r[c] for c in columns])
    conn.commit()
    conn.close()


def _opsim_rows():
    rows = []
    base = dict(visitExposureTime=30.0, seeingFwhmEff=0.8, airmass=1.1, skyBrightness=21.0, fiveSigmaDepth=24.3,
                rotSkyPos=10.0)
    specs = [(1001, 0.0, 0.0, 60300.30, "r"), (1003, 0.05, -0.03, 60300.10, "i"), (1002, 0.0, 0.0, 60300.20, "g"),
             (1004, 3.0, 0.0, 60300.40, "r"), (1005, 0.0, 1.5, 60300.50, "i"), (1006, 0.01, 0.01, 60301.10, "r")]
    for oid, dra, ddec, mjd, band in specs:
        rows.append(dict(base, observationId=oid, fieldRA=FIELD_RA_DEG + dra, fieldDec=FIELD_DEC_DEG + ddec,
                         observationStartMJD=mjd, filter=band))
    return rows


def test_opsim_reader_selects_visits_near_the_field(tmp_path):
    db = tmp_path / "opsim.db"
    _make_opsim(db, _opsim_rows())
    t = read_opsim(db, FIELD_RA_DEG, FIELD_DEC_DEG, radius_deg=0.25)
    assert list(t["visit"]) == [1003, 1002, 1001, 1006]  # time order; 1004 and 1005 are too far
    assert t["mjd"][0] == pytest.approx(60300.10 + 15.0 / 86400.0)
    t = read_opsim(db, FIELD_RA_DEG, FIELD_DEC_DEG, bands="ri", n_visits=2)
    assert list(t["visit"]) == [1003, 1001]
    assert t["seeingFwhmEff"][0] == 0.8 and t["rotSkyPos"][0] == 10.0


def test_opsim_reader_errors(tmp_path):
    db = tmp_path / "bad.db"
    _make_opsim(db, _opsim_rows(), columns=[c for c in OPSIM_COLUMNS if c != "seeingFwhmEff"])
    with pytest.raises(SimulationInputError, match="seeingFwhmEff"):
        read_opsim(db, FIELD_RA_DEG, FIELD_DEC_DEG)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all\n" * 100)
    with pytest.raises(SimulationInputError, match="SQLite"):
        read_opsim(junk, FIELD_RA_DEG, FIELD_DEC_DEG)
    with pytest.raises(SimulationInputError, match="no such file"):
        read_opsim(tmp_path / "missing.db", FIELD_RA_DEG, FIELD_DEC_DEG)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(SimulationInputError, match="observations"):
        read_opsim(empty, FIELD_RA_DEG, FIELD_DEC_DEG)
    good = tmp_path / "far.db"
    _make_opsim(good, [r for r in _opsim_rows() if r["observationId"] in (1004, 1005)])
    with pytest.raises(SimulationInputError, match="no visits within"):
        read_opsim(good, FIELD_RA_DEG, FIELD_DEC_DEG)


def test_simulate_cli_with_opsim(tmp_path, capsys):
    db = tmp_path / "opsim.db"
    _make_opsim(db, _opsim_rows())
    repo_path = tmp_path / "repo"
    rc = main(["simulate", str(repo_path), "--preset", "tiny", "--opsim", str(db), "--bands", "ri", "--size", "128",
               "--visits", "2", "--seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[1/2] visit" in out and "[2/2] visit" in out
    repo = Repository(repo_path)
    refs = repo.query("eimage")
    assert [r.data_id["visit"] for r in refs] == [1001, 1003]
    exp = repo.get("eimage", {"visit": 1003, "detector": 0})
    assert exp.visit_info.band == "i" and exp.visit_info.seeing_arcsec == 0.8
    assert exp.visit_info.rot_sky_pos_deg == 10.0 and exp.image.shape == (128, 128)


def test_simulate_cli_user_errors(tmp_path, capsys):
    repo = str(tmp_path / "r")
    assert main(["simulate", repo, "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 100)
    assert main(["simulate", repo, "--opsim", str(junk)]) == 2
    assert "OpSim file" in capsys.readouterr().err
    bad = tmp_path / "nocol.db"
    _make_opsim(bad, _opsim_rows(), columns=[c for c in OPSIM_COLUMNS if c != "airmass"])
    assert main(["simulate", repo, "--opsim", str(bad)]) == 2
    assert "lacks column(s) airmass" in capsys.readouterr().err
    assert main(["simulate", repo, "--bands", "rx"]) == 2
    assert "ugrizy" in capsys.readouterr().err
    assert main(["simulate", repo, "--set", "no_such_option=3"]) == 2
    assert "unknown simulation option" in capsys.readouterr().err


def test_simulate_cli_option_type_errors(tmp_path, capsys):
    repo = str(tmp_path / "r")
    for args, message in ((["--seed", "-3"], "non-negative integer"), (["--set", "size=abc"], "expected a number"),
                          (["--set", "cosmic_rays=3"], "true or false"),
                          (["--set", "night_gap_days=[1]"], "list of 2 numbers")):
        assert main(["simulate", repo, "--quiet", *args]) == 2
        assert message in capsys.readouterr().err
