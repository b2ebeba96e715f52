"""`twinkles report`: the numbers and figures come from the recorded jobs; validation sections are included and
their errors shown."""

from __future__ import annotations

import json
import sys
import types

import matplotlib.image as mpimg
import numpy as np
import pytest
from wf_common import make_repo

from twinkles.cli import main
from twinkles.workflow import run_pipeline
from twinkles.workflow.report import concurrency_series, rate_series, write_report

FIGURES = ["throughput.png", "success_rate.png", "efficiency.png", "resources.png", "timeline.png"]


@pytest.fixture
def ran(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2, 3, 4, 5, 6], {2: "nan", 5: "corrupt"})
    run_pipeline(repo.root, "wf_check,wf_down", executor="threads", workers=2, retries=0, progress=False,
                 overrides={"wf_check.burn_s": "0.05"})
    return repo


def _db(repo, sql):
    with repo.read_only() as conn:
        return [dict(r) for r in conn.execute(sql).fetchall()]


def test_report_numbers_are_those_of_the_job_records(ran, monkeypatch):
    fake = types.ModuleType("twinkles.validate.report")

    def validation_sections(repo, run, outdir):
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        fig.savefig(outdir / "astrometry.png")
        plt.close(fig)
        return [{"title": "Astrometry", "metrics": {"rms_mas": 12.5}, "figures": ["astrometry.png"]}]

    fake.validation_sections = validation_sections
    monkeypatch.setitem(sys.modules, "twinkles.validate.report", fake)
    index = write_report(ran.root)
    assert index == ran.root / "report" / "index.html"
    summary = json.loads((index.parent / "summary.json").read_text())

    attempts = _db(ran, "SELECT * FROM job_attempts")
    invs = _db(ran, "SELECT * FROM workflow_invocations")
    cpu = sum(a["cpu_s"] for a in attempts)
    slots = sum((i["end"] - i["start"]) * i["workers"] for i in invs)
    assert summary["cpu_seconds"] == pytest.approx(cpu)
    assert summary["cpu_efficiency"] == pytest.approx(cpu / slots)
    assert summary["occupancy"] == pytest.approx(sum(a["wall_s"] for a in attempts) / slots)
    assert 0 < summary["cpu_efficiency"] <= summary["occupancy"] * 1.05 and summary["occupancy"] <= 1.0
    assert cpu >= 4 * 0.05  # four good visits burnt 0.05 s of CPU each
    assert summary["images"] == 4 and summary["visits"] == 4 and summary["first_stage"] == "wf_check"
    st = summary["stages"]
    assert st["wf_check"]["success_rate"] == pytest.approx(4 / 6) and st["wf_down"]["success_rate"] == 4 / 6
    assert st["wf_check"]["failed"] == 2 and st["wf_down"]["skipped-upstream"] == 2
    hours = sum(i["end"] - i["start"] for i in invs) / 3600
    assert summary["jobs_per_hour"] == pytest.approx(8 / hours)

    html = index.read_text()
    body = html.split("<body>", 1)[1].lstrip()
    first_line = body.splitlines()[0]
    assert (f"processed 4 images in {cpu / 3600:.3g} CPU hours at {100 * cpu / slots:.1f}% efficiency"
            in first_line)
    for name in FIGURES + ["astrometry.png"]:
        path = index.parent / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(path).ndim == 3
        assert f'src="{name}"' in html
    assert "Astrometry" in html and "rms_mas" in html
    assert "non-finite" in html  # the failures table


def test_validation_errors_are_shown_not_raised(ran, monkeypatch):
    fake = types.ModuleType("twinkles.validate.report")

    def validation_sections(repo, run, outdir):
        raise ValueError("no truth catalog in this repository")

    fake.validation_sections = validation_sections
    monkeypatch.setitem(sys.modules, "twinkles.validate.report", fake)
    html = write_report(ran.root).read_text()
    assert "no truth catalog in this repository" in html and "ValueError" in html


def test_concurrency_and_rates_from_records(ran):
    attempts = _db(ran, "SELECT * FROM job_attempts")
    t, n = concurrency_series(attempts)
    assert n.min() >= 0 and n[-1] == 0 and n.max() <= 2  # never more jobs at once than the 2 workers
    # synthetic: two overlapping jobs and one after
    t, n = concurrency_series([{"start": 0, "end": 2}, {"start": 1, "end": 3}, {"start": 5, "end": 6}])
    assert list(t) == [0, 1, 2, 3, 5, 6] and list(n) == [1, 2, 1, 0, 1, 0]
    x, rate = rate_series([10, 20, 30, 3590], 0, 3600, nbins=4)
    assert rate.sum() * (3600 / 4 / 3600) == 4 and np.allclose(rate, [12, 0, 0, 4])


def test_cli_report(ran, capsys):
    assert main(["report", str(ran.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("processed 4 images in ") and "report/index.html" in out
