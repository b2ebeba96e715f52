"""The real pipeline end to end: `twinkles simulate`, `twinkles run` (local executor, the real stages) and
`twinkles report` on a tiny field; the outputs against the truth, and the report's numbers against a computation
of our own from the catalogs and the raw job records (SQL on the registry, not the report's loaders)."""

from __future__ import annotations

import json
import math
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

from twinkles.cli import main as cli_main
from twinkles.repo import Repository
from twinkles.validate import stats
from twinkles.validate.science import field_measurements

RUN = "runs/l2"


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "repo"
    assert cli_main(["simulate", str(root), "--preset", "tiny", "--seed", "7"]) == 0
    assert cli_main(["run", str(root), "--workers", "2", "--no-progress"]) == 0
    assert cli_main(["report", str(root)]) == 0
    repo = Repository(root)
    visits = repo.get("visit_table", runs=["truth"])
    dids = [{"visit": int(r["visit"]), "detector": 0} for r in visits]
    field = SimpleNamespace(repo=repo, truth=repo.get("truth_catalog", runs=["truth"]), visits=visits,
                            ref_cat=repo.get("ref_cat"), srcs=[repo.get("src", d, runs=[RUN]) for d in dids],
                            metas=[repo.get("process_eimage_metadata", d, runs=[RUN]) for d in dids])
    summary = json.loads((root / "report" / "summary.json").read_text())
    return field, summary


def _sql(root, query, args=()):
    con = sqlite3.connect(f"file:{root / 'registry.sqlite3'}?mode=ro", uri=True)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def test_outputs_against_truth(pipeline_repo):
    """Every visit processed; zero points (- the reference catalogue's error) and the mean astrometric offsets
    per axis within 4 standard errors of the truth (errors as in test_process_eimage_science)."""
    field, _ = pipeline_repo
    for name in ("calexp", "src", "calexp_background", "process_eimage_metadata"):
        assert len(field.repo.query(name, runs=[RUN])) == len(field.visits), name
    m = field_measurements(field.srcs, field.metas, field.visits, field.truth, field.ref_cat)
    d = m.visits["zp_offset_mmag"] - m.visits["ref_offset_mmag"]
    e = np.asarray(m.visits["zp_err_mmag"])
    stats.assert_within(float(np.mean(d)), 0.0, float(np.sqrt(np.sum(e ** 2)) / len(e)), 4.0,
                        "mean zero-point offset (mmag)")
    b = m.snr > 50
    wcs = float(np.median(m.visits["wcs_err_mas"]))  # conservative: the whole per-visit fit error as common
    for axis, off in (("RA", m.dra_mas), ("Dec", m.ddec_mas)):
        mean, err, n = stats.grouped_mean_and_error(off[b], m.star_id[b])
        stats.assert_within(mean, 0.0, stats.combine(err, wcs), 4.0, f"mean {axis} offset (mas) of {n} stars")


def test_report_science_numbers_match_our_computation(pipeline_repo):
    """The report's zero-point, astrometry and PA1 numbers equal ours from the catalogs (same selection:
    S/N > 50 clean isolated stars for astrometry; PA1 as the rms of each star's magnitudes about its mean over
    the band's visits, S/N >= 200 in every visit used)."""
    field, summary = pipeline_repo
    root = field.repo.root
    html = (root / "report" / "index.html").read_text()
    assert "process_eimage" in html
    from twinkles.validate.report import validation_sections
    sec = validation_sections(root, RUN, root / "report", raise_errors=True)[0]
    met = sec["metrics"]
    zp = [(meta["zero_point"] - float(row["zeroPoint"])) * 1000 for meta, row in zip(field.metas, field.visits)]
    assert met["zero_point_offset_median_mmag"] == pytest.approx(float(np.median(zp)), abs=1e-3)
    m = field_measurements(field.srcs, field.metas, field.visits, field.truth, field.ref_cat)
    b = m.snr > 50
    assert met["astrometry_median_offset_mas"] == pytest.approx(float(np.median(np.hypot(m.dra_mas[b],
                                                                                          m.ddec_mas[b]))),
                                                                rel=1e-3)
    for band in np.unique(m.band):
        s = (m.band == band) & (m.snr >= 200)
        ids, mags = m.star_id[s], -2.5 * np.log10(m.flux_njy[s])
        res, dof = [], 0
        for i in np.unique(ids):
            v = mags[ids == i]
            if len(v) >= 2:
                res.append(v - v.mean())
                dof += len(v) - 1
        ours = math.sqrt(np.sum(np.concatenate(res) ** 2) / dof) * 1000
        assert met[f"pa1_{band}_mmag"] == pytest.approx(ours, rel=1e-3), band


def test_report_cpu_numbers_match_the_raw_job_records(pipeline_repo):
    """CPU seconds = the sum of the attempts' CPU times in the registry; CPU efficiency = that / (each
    invocation's wall time x its workers); one done job per visit, each with its own CPU time recorded."""
    field, summary = pipeline_repo
    root = field.repo.root
    cpu = _sql(root, "SELECT sum(cpu_s), count(*) FROM job_attempts WHERE run=?", (RUN,))[0]
    assert summary["cpu_seconds"] == pytest.approx(cpu[0], rel=1e-9)
    inv = _sql(root, "SELECT start, end, workers FROM workflow_invocations WHERE run=?", (RUN,))
    slots = sum((end - start) * w for start, end, w in inv)
    assert summary["cpu_efficiency"] == pytest.approx(cpu[0] / slots, rel=1e-6)
    assert 0 < summary["cpu_efficiency"] <= 1
    jobs = _sql(root, "SELECT visit, status, cpu_s, wall_s FROM jobs WHERE run=? AND stage='process_eimage'",
                (RUN,))
    assert sorted(j[0] for j in jobs) == sorted(int(v) for v in field.visits["visit"])
    assert all(j[1] == "done" and 0 < j[2] and 0 < j[3] for j in jobs), jobs
    assert summary["images"] == len(field.visits)
