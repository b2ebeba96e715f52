"""The disk budget: bytes per dataset type and per visit (status, report), and `twinkles run --no-keep` removing
intermediate datasets once every job reading them is done, with resumed runs redoing what they still need."""

from __future__ import annotations

import pytest
from wf_common import job_rows, make_repo

from twinkles.cli import main
from twinkles.workflow import run_pipeline
from twinkles.workflow.execute import WorkflowError, resolve_no_keep
from twinkles.workflow.pipeline import resolve_pipeline
from twinkles.workflow.records import load_attempts
from twinkles.workflow.status import collect_status, format_status

VISITS = [1, 2, 3, 4]
PIPE = "wf_check,wf_down,wf_agg"
RUN = "runs/l2"


def _run(repo, **kw):
    return run_pipeline(repo.root, PIPE, executor="threads", workers=2, retries=0, progress=False, **kw)


def _files(repo, dataset_type):
    return sorted(p.name for p in (repo.root / RUN / dataset_type).rglob("*") if p.is_file()) \
        if (repo.root / RUN / dataset_type).exists() else []


def test_status_shows_bytes_per_dataset_type_and_visit(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo", VISITS)
    _run(repo)
    disk = collect_status(repo)["disk"]
    sizes = {}
    with repo.read_only() as conn:
        for r in conn.execute("SELECT dataset_type, visit, size FROM datasets"):
            sizes.setdefault(r["dataset_type"], []).append((r["visit"], r["size"]))
    for name in ("eimage", "wftest_stats", "wftest_image", "wftest_down", "wftest_summary"):
        assert disk["types"][name]["files"] == len(sizes[name])
        assert disk["types"][name]["bytes"] == sum(s for _, s in sizes[name]) > 0
    assert disk["types"]["eimage"]["bytes_per_visit"] == pytest.approx(disk["types"]["eimage"]["bytes"] / 4)
    assert disk["types"]["wftest_summary"]["bytes_per_visit"] is None  # no visit dimension
    for v in VISITS:
        assert disk["visits"][v] == sum(s for rows in sizes.values() for vv, s in rows if vv == v)
    assert disk["total_bytes"] == sum(s for rows in sizes.values() for _, s in rows)
    text = format_status(collect_status(repo))
    assert "disk (run and its inputs)" in text and "wftest_stats" in text and "per visit:" in text
    assert main(["status", str(repo.root)]) == 0
    assert "dataset type" in capsys.readouterr().out


def test_no_keep_removes_intermediates_once_read_and_resume_does_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo", VISITS)
    summary = _run(repo, no_keep=["wf_check"])
    assert summary.ok
    # wftest_stats (read by wf_down and wf_agg) is gone, rows and files; wftest_image (read by nobody) is kept
    assert repo.query("wftest_stats", runs=RUN) == [] and _files(repo, "wftest_stats") == []
    assert len(repo.query("wftest_image", runs=RUN)) == 4
    assert len(repo.query("wftest_down", runs=RUN)) == 4 and repo.exists("wftest_summary", {}, runs=RUN)
    disk = repo.disk_usage(RUN)
    assert disk["removed"]["wftest_stats"]["files"] == 4 and disk["removed"]["wftest_stats"]["bytes"] > 0
    assert "wftest_stats" not in disk["types"]
    assert any("intermediates removed once read" in n for n in summary.notes)
    assert repo.check()["missing_files"] == 0
    # resuming finds every job done: nothing is redone to make the removed datasets again
    before = len(load_attempts(repo, RUN))
    again = _run(repo, no_keep=["wf_check"])
    assert again.ok and again.resumed == 9 and len(load_attempts(repo, RUN)) == before
    assert repo.query("wftest_stats", runs=RUN) == []


def test_a_failed_reader_keeps_its_inputs(tmp_path):
    repo = make_repo(tmp_path / "repo", VISITS)
    # wf_down fails on visit 3 (its config says so): the stats of visit 3 stay for a later retry, the others go
    summary = run_pipeline(repo.root, PIPE, executor="threads", workers=2, retries=0, progress=False,
                           no_keep=["wftest_stats"], overrides={"wf_down.fail_visits": "3"})
    assert not summary.ok
    assert [r.data_id["visit"] for r in repo.query("wftest_stats", runs=RUN)] == [3]


def test_resumed_run_redoes_removed_inputs_it_needs(tmp_path):
    """A reader to be done again (its output lost) makes the run redo the removed intermediates it reads, and
    those are removed again at the end; the products are those of an uninterrupted run."""
    repo = make_repo(tmp_path / "repo", VISITS)
    assert _run(repo, no_keep=["wf_check"]).ok
    first = repo.get("wftest_summary", {}, runs=RUN)
    down2 = repo.find("wftest_down", {"visit": 2, "detector": 0}, runs=RUN)
    (repo.root / down2.path).unlink()  # lost: wf_down visit 2 must be done again, and needs wftest_stats visit 2
    summary = _run(repo, no_keep=["wf_check"])
    assert summary.ok
    rows = {(r["stage"], r["visit"]): r for r in job_rows(repo)}
    assert rows[("wf_check", 2)]["attempt"] == 2 and rows[("wf_down", 2)]["attempt"] == 2
    assert rows[("wf_down", 1)]["attempt"] == 1  # its own output is there: not redone
    assert repo.exists("wftest_down", {"visit": 2, "detector": 0}, runs=RUN)
    assert repo.get("wftest_summary", {}, runs=RUN) == first
    assert repo.query("wftest_stats", runs=RUN) == []  # removed again once read


def test_no_keep_names_are_checked():
    pipe = resolve_pipeline(PIPE)
    assert resolve_no_keep(pipe, ["wf_check"]) == ["wftest_stats"]  # (wftest_image: nobody reads it)
    assert resolve_no_keep(pipe, "wftest_stats,wf_down") == ["wftest_stats"]  # (wftest_down: read by nobody)
    with pytest.raises(WorkflowError, match="neither a stage of pipeline"):
        resolve_no_keep(pipe, ["warp"])
    with pytest.raises(WorkflowError, match="final product of this pipeline"):
        resolve_no_keep(pipe, ["wftest_summary"])
    with pytest.raises(WorkflowError, match="not made by any stage"):
        resolve_no_keep(pipe, ["eimage"])


def test_cli_no_keep_and_report_disk_section(tmp_path, capsys):
    import json

    from twinkles.workflow.report import write_report
    repo = make_repo(tmp_path / "repo", VISITS)
    assert main(["run", str(repo.root), "--pipeline", PIPE, "--executor", "threads", "--workers", "2",
                 "--no-progress", "--no-keep", "wf_check"]) == 0
    assert "intermediates removed once read (--no-keep): wftest_stats 4 file(s)" in capsys.readouterr().out
    assert repo.query("wftest_stats", runs=RUN) == []
    index = write_report(repo.root)
    page = index.read_text()
    assert "<h2>Disk</h2>" in page and "wftest_image" in page and "removed once read" in page
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["disk"]["removed"]["wftest_stats"]["files"] == 4
    assert summary["disk"]["types"]["eimage"]["files"] == 4
