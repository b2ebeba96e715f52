"""`twinkles simulate --opsim FILE`: the bands default to the file's, and the visits left out are counted and said."""

from __future__ import annotations

import sqlite3

from twinkles.cli import main
from twinkles.repo import Repository
from twinkles.sim.cadence import OPSIM_COLUMNS, read_opsim
from twinkles.sim.presets import FIELD_DEC_DEG, FIELD_RA_DEG


def _make_opsim(path):
    base = dict(visitExposureTime=30.0, seeingFwhmEff=0.8, airmass=1.1, skyBrightness=21.0, fiveSigmaDepth=24.3,
                rotSkyPos=10.0)
    specs = [(1001, 0.0, 0.0, 60300.30, "r"), (1003, 0.05, -0.03, 60300.10, "u"), (1002, 0.0, 0.0, 60300.20, "g"),
             (1004, 3.0, 0.0, 60300.40, "r"), (1005, 0.0, 1.5, 60300.50, "i"), (1006, 0.01, 0.01, 60301.10, "z")]
    conn = sqlite3.connect(path)
    columns = ", ".join(c + (" TEXT" if c == "filter" else " REAL") for c in OPSIM_COLUMNS)
    conn.execute(f"CREATE TABLE observations ({columns})")
    for oid, dra, ddec, mjd, band in specs:
        r = dict(base, observationId=oid, fieldRA=FIELD_RA_DEG + dra, fieldDec=FIELD_DEC_DEG + ddec,
                 observationStartMJD=mjd, filter=band)
        conn.execute(f"INSERT INTO observations VALUES ({','.join('?' * len(OPSIM_COLUMNS))})",
                     [r[c] for c in OPSIM_COLUMNS])
    conn.commit()
    conn.close()


def test_reader_counts_what_it_leaves_out_and_why(tmp_path):
    db = tmp_path / "opsim.db"
    _make_opsim(db)
    t = read_opsim(db, FIELD_RA_DEG, FIELD_DEC_DEG, radius_deg=0.25)
    assert list(t["visit"]) == [1003, 1002, 1001, 1006]
    assert t.meta["left_out"] == {"off_field": 2, "filter": 0, "band": 0, "n_visits": 0}  # 1004, 1005
    t = read_opsim(db, FIELD_RA_DEG, FIELD_DEC_DEG, radius_deg=0.25, bands="gr", n_visits=1)
    assert list(t["visit"]) == [1002]
    assert t.meta["left_out"] == {"off_field": 2, "filter": 0, "band": 2, "n_visits": 1}


def test_simulate_with_opsim_uses_the_files_bands_and_says_what_it_left_out(tmp_path, capsys):
    db = tmp_path / "opsim.db"
    _make_opsim(db)
    # the tiny preset observes r and i only: with --opsim and no --bands, the file's bands (u, g, r, z) are kept
    assert main(["simulate", str(tmp_path / "repo"), "--preset", "tiny", "--opsim", str(db), "--size", "64",
                 "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 visit(s) in bands ugrz kept; 2 left out: 2 boresight more than 0.25 deg from the field" in out, out
    repo = Repository(tmp_path / "repo")
    assert sorted(r.data_id["visit"] for r in repo.query("eimage")) == [1001, 1002, 1003, 1006]
    # --bands still chooses, and the visits of other bands are counted
    assert main(["simulate", str(tmp_path / "repo2"), "--preset", "tiny", "--opsim", str(db), "--size", "64",
                 "--bands", "r", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 visit(s) in bands r kept; 5 left out: 2 boresight more than 0.25 deg from the field, 3 band not " \
           "in --bands r" in out, out
