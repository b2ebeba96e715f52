"""`twinkles run` end to end with Parsl's thread executor: failure isolation (corrupt, NaN and WCS-less inputs
among good ones), retries, job records and logs, resume, and the CLI verbs run/status."""

from __future__ import annotations

import numpy as np
import pytest
from wf_common import job_rows, make_eimage, make_repo

from twinkles.cli import main
from twinkles.workflow import run_pipeline
from twinkles.workflow.records import load_attempts
from twinkles.workflow.status import collect_status

VISITS = list(range(1, 10))
BAD = {3: "corrupt", 5: "nan", 7: "nowcs"}
PIPE = "wf_check,wf_down,wf_agg"


def attempts_by_job(repo):
    out = {}
    for a in load_attempts(repo, "runs/l2"):
        out.setdefault((a["stage"], a["visit"]), []).append(a)
    return out


@pytest.fixture
def bad_run(tmp_path):
    repo = make_repo(tmp_path / "repo", VISITS, BAD)
    summary = run_pipeline(repo.root, PIPE, executor="threads", workers=2, retries=1, progress=False)
    return repo, summary


def test_failures_are_isolated_retried_and_recorded(bad_run):
    repo, summary = bad_run
    rows = {(r["stage"], r["visit"]): r for r in job_rows(repo)}
    good = [v for v in VISITS if v not in BAD]
    # the bad inputs fail with their own message, after 1 retry; nothing else fails
    assert {v for (s, v), r in rows.items() if r["status"] == "failed"} == set(BAD)
    assert "cannot read" in rows[("wf_check", 3)]["error"]
    assert "non-finite" in rows[("wf_check", 5)]["error"]
    assert "no celestial WCS" in rows[("wf_check", 7)]["error"]
    att = attempts_by_job(repo)
    for v in BAD:
        assert rows[("wf_check", v)]["attempt"] == 2
        assert [a["status"] for a in att[("wf_check", v)]] == ["failed", "failed"]
        assert rows[("wf_down", v)]["status"] == "skipped-upstream"
        assert f"wf_check visit={v}" in rows[("wf_down", v)]["error"]
    for v in good:
        for stage in ("wf_check", "wf_down"):
            r = rows[(stage, v)]
            assert r["status"] == "done" and r["attempt"] == 1 and len(att[(stage, v)]) == 1
            assert r["start"] <= r["end"] and r["wall_s"] == pytest.approx(r["end"] - r["start"])
            assert r["cpu_s"] >= 0 and r["peak_rss_mb"] > 10 and r["host"] and r["pid"]
            assert (repo.root / r["log_path"]).is_file()
    # every attempt's log is kept, with the traceback of the failures
    assert "ProcessingError" in (repo.root / "logs/runs/l2/wf_check/wf_check_visit5_detector0_a1.log").read_text()
    assert (repo.root / "logs/runs/l2/wf_check/wf_check_visit5_detector0_a2.log").is_file()
    # the aggregate ran on the good visits only, and its numbers are those of the images
    agg = rows[("wf_agg", None)]
    assert agg["status"] == "done"
    summary_out = repo.get("wftest_summary", {}, runs="runs/l2")
    assert sorted(int(v) for v in summary_out["visits"]) == good
    for v in good:
        img = make_eimage(v).image.astype(np.float64)
        assert summary_out["visits"][str(v)] == pytest.approx(img.mean(), rel=1e-12)
    # outputs registered only for the good visits
    assert sorted(r.data_id["visit"] for r in repo.query("wftest_stats", runs="runs/l2")) == good
    assert not summary.ok and summary.n_failed == 3 and summary.n_skipped == 3
    st = collect_status(repo)
    assert st["stages"]["wf_check"]["done"] == 6 and st["stages"]["wf_check"]["failed"] == 3
    assert st["state"] == "finished"


def test_resume_does_only_what_is_missing(bad_run):
    repo, _ = bad_run
    before = {k: len(v) for k, v in attempts_by_job(repo).items()}
    # fix one bad input; run again: done jobs are not redone, the failed ones are tried again
    repo.put(make_eimage(5), "eimage", {"visit": 5, "detector": 0})
    summary = run_pipeline(repo.root, PIPE, executor="threads", workers=2, retries=0, progress=False)
    after = attempts_by_job(repo)
    for (stage, v), n in before.items():
        if stage != "wf_agg" and v not in BAD:
            assert len(after[(stage, v)]) == n, (stage, v)
    assert len(after[("wf_check", 5)]) == 3 and after[("wf_check", 5)][-1]["status"] == "done"
    assert len(after[("wf_check", 3)]) == 3  # still corrupt: one more failed attempt (retries=0)
    assert summary.resumed == 2 * 6 + 0  # wf_check and wf_down of the 6 good visits; wf_agg is redone
    agg = repo.get("wftest_summary", {}, runs="runs/l2")
    assert sorted(int(v) for v in agg["visits"]) == [1, 2, 4, 5, 6, 8, 9]
    # a third run has nothing new to do but the two still-bad visits; a changed config is pointed out
    summary = run_pipeline(repo.root, PIPE, executor="threads", workers=2, retries=0, progress=False,
                           overrides={"wf_check.sleep_s": "0.01"})
    assert summary.counts["wf_check"]["done"] == 7 and summary.n_failed == 2
    assert any("config of wf_check changed" in n and "sleep_s" in n for n in summary.notes)


def test_output_truncated_by_a_crash_is_redone(tmp_path):
    """Jobs write without fsync; a machine crash may leave a registered output shorter than written. The next run
    finds it (size recorded at registration), drops it and does that job again -- and only that one."""
    repo = make_repo(tmp_path / "repo", [1, 2, 3])
    assert run_pipeline(repo.root, "wf_check", executor="threads", workers=2, retries=0, progress=False).ok
    (ref,) = repo.query("wftest_image", {"visit": 2}, runs="runs/l2")
    path = repo.abspath(ref)
    path.write_bytes(path.read_bytes()[:100])
    messages = []
    s = run_pipeline(repo.root, "wf_check", executor="threads", workers=2, retries=0, progress=False,
                     echo=messages.append)
    assert s.ok and s.resumed == 2
    assert any("1 truncated or damaged output" in m for m in messages), messages
    after = attempts_by_job(repo)
    assert [len(after[("wf_check", v)]) for v in (1, 2, 3)] == [1, 2, 1]
    assert repo.check()["damaged_files"] == 0
    assert repo.get("wftest_image", {"visit": 2, "detector": 0}, runs="runs/l2").image.shape


def test_retries_then_success(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2])
    state = tmp_path / "state"
    state.mkdir()
    cfg = {"wf_flaky.state_dir": str(state), "wf_flaky.fail_times": "2"}
    s = run_pipeline(repo.root, "wf_flaky", executor="threads", workers=1, retries=2, overrides=cfg,
                     progress=False)
    assert s.ok
    rows = job_rows(repo)
    assert [r["attempt"] for r in rows] == [3, 3] and all(r["status"] == "done" for r in rows)
    # with fewer retries than needed the job is failed with the message of its last attempt
    repo2 = make_repo(tmp_path / "repo2", [1])
    state2 = tmp_path / "state2"
    state2.mkdir()
    cfg2 = {"wf_flaky.state_dir": str(state2), "wf_flaky.fail_times": "2"}
    s = run_pipeline(repo2.root, "wf_flaky", executor="threads", workers=1, retries=1, overrides=cfg2,
                     progress=False)
    (row,) = job_rows(repo2)
    assert row["status"] == "failed" and row["attempt"] == 2 and "transient failure 2 of 2" in row["error"]
    assert s.failures and "transient failure 2 of 2" in s.failures[0][1]


def test_cli_run_status_and_exit_codes(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo", [1, 2, 3], {2: "nan"})
    code = main(["run", str(repo.root), "--pipeline", "wf_check,wf_down", "--executor", "threads", "--workers",
                 "2", "--retries", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "wf_check: 2 done, 1 failed" in out and "wf_down: 2 done, 0 failed, 1 skipped-upstream" in out
    assert "non-finite" in err and "what to do" in err
    assert main(["status", str(repo.root)]) == 0
    out, _ = capsys.readouterr()
    line = next(x for x in out.splitlines() if x.strip().startswith("wf_check"))
    assert line.split()[1:4] == ["2", "1", "0"]  # done, failed, skipped
    assert "wf_check visit=2,detector=0" in out and "non-finite" in out
    # a good repository exits 0; the unimplemented stages of l2 are named, not fatal
    good = make_repo(tmp_path / "good", [1, 2])
    assert main(["run", str(good.root), "--pipeline", "wf_check", "--executor", "threads", "--no-progress"]) == 0
    # bad arguments are user errors (exit 2) with a message
    assert main(["run", str(good.root), "--pipeline", "nope", "--executor", "threads"]) == 2
    assert main(["run", str(good.root), "--pipeline", "wf_check", "--executor", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage(s) nope" in err and "use local, threads, slurm, perlmutter or a CONFIG.py" in err


def test_l2_pipeline_names_stages_not_implemented(tmp_path):
    from twinkles.stages import available_stages
    from twinkles.workflow.pipeline import PIPELINES, resolve_pipeline

    p = resolve_pipeline("l2")
    assert p.names == [s for s in PIPELINES["l2"] if s in available_stages()]
    assert p.missing == [s for s in PIPELINES["l2"] if s not in available_stages()]
    assert set(PIPELINES["l2"]) == set(PIPELINES["static"]) | set(PIPELINES["dia"])


def test_slurm_without_sbatch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import shutil
    import sys
    from pathlib import Path
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sbatch, even where Slurm is installed
    assert shutil.which("sbatch") is None
    repo = make_repo(tmp_path / "repo", [1])
    assert main(["run", str(repo.root), "--pipeline", "wf_check", "--executor", "slurm"]) == 2
    assert "`sbatch` is not on PATH" in capsys.readouterr().err


def test_second_run_on_the_same_repository_is_refused(tmp_path):
    import fcntl

    from twinkles.workflow import WorkflowError

    repo = make_repo(tmp_path / "repo", [1])
    with open(repo.root / ".workflow.lock", "a+") as f:  # as a running `twinkles run` holds it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("pid 12345 on elsewhere\n")
        f.flush()
        with pytest.raises(WorkflowError, match="another `twinkles run` is working on this repository"):
            run_pipeline(repo.root, "wf_check", executor="threads", progress=False)
    assert run_pipeline(repo.root, "wf_check", executor="threads", progress=False).ok  # released: runs
