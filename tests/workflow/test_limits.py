"""Per-job limits on the local executor: a job over its memory or time limit is stopped by its worker, recorded
failed with the reason, not retried unless asked; the other jobs of the run finish; nothing is left running."""

from __future__ import annotations

import os
import re

import pytest
from wf_common import job_rows, make_repo, register_test_stages

from twinkles.cli import main
from twinkles.workflow import run_pipeline
from twinkles.workflow.limits import LimitError, format_memory, parse_duration, parse_memory, stage_limits
from twinkles.workflow.records import load_attempts

VISITS = [1, 2, 3, 4, 5]
HOG, SLEEPER = 2, 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_parse_and_format_limits():
    assert parse_memory("4GB") == 4 * 2**30 == parse_memory("4G") == parse_memory("4 GiB")
    assert parse_memory("500MB") == 500 * 2**20 and parse_memory("1.5gb") == int(1.5 * 2**30)
    assert format_memory(4 * 2**30) == "4.0 GB" and format_memory(4.3 * 2**30) == "4.3 GB"
    assert format_memory(300 * 2**20) == "300 MB"
    assert parse_duration("30m") == 1800 == parse_duration("00:30:00") == parse_duration("0.5h")
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("2:30") == 150
    for bad in ("lots", "4XB", "-1GB", "0"):
        with pytest.raises(LimitError, match="--job-memory"):
            parse_memory(bad)
    for bad in ("30", "soon", "5 parsecs", 30):
        with pytest.raises(LimitError, match="--job-time"):
            parse_duration(bad)
    cfg = {"workflow": {"job_time": "1h", "stages": {"b": {"job_memory": "8GB"}}}}
    lim = stage_limits(cfg, ["a", "b"], job_memory="2GB")
    assert lim["a"] == {"memory_bytes": 2 * 2**30, "time_s": 3600.0}
    assert lim["b"] == {"memory_bytes": 8 * 2**30, "time_s": 3600.0}  # the stage's own entry wins
    with pytest.raises(LimitError, match="workflow.stages.b.job_time"):
        stage_limits({"workflow": {"stages": {"b": {"job_time": "often"}}}}, ["b"])


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    """One local-executor run: visit 2 allocates without bound (limit 400 MB), visit 4 sleeps (limit 3 s)."""
    root = tmp_path_factory.mktemp("limits") / "repo"
    repo = make_repo(root, VISITS)
    # the time limit from twinkles.yaml, for this stage; the memory limit from the command line
    repo.write_config({**repo.config, "workflow": {"job_time": "1h", "stages": {"wf_limits": {"job_time": "3s"}}}})
    mp = pytest.MonkeyPatch()
    try:
        register_test_stages(mp)  # (the autouse fixture is per test; this run is shared by the module's tests)
        summary = run_pipeline(repo.root, "wf_limits", executor="local", workers=2, retries=1, progress=False,
                               job_memory="400MB",
                               overrides={"wf_limits.hog_visit": str(HOG), "wf_limits.sleep_visit": str(SLEEPER)})
    finally:
        mp.undo()
    return repo, summary


def test_runaway_jobs_are_stopped_recorded_and_not_retried(limited_run):
    repo, summary = limited_run
    rows = {r["visit"]: r for r in job_rows(repo)}
    hog, sleeper = rows[HOG], rows[SLEEPER]
    assert hog["status"] == "failed" and hog["attempt"] == 1
    m = re.fullmatch(r"exceeded memory limit 400 MB \(peak (\d+) MB\)", hog["error"])
    assert m and 400 < int(m.group(1)) < 400 + 200, hog["error"]  # stopped within a few 50 MB steps
    assert hog["peak_rss_mb"] == pytest.approx(int(m.group(1)), abs=1)
    assert sleeper["status"] == "failed" and sleeper["attempt"] == 1
    m = re.fullmatch(r"exceeded time limit 3\.0 s \(ran (\d+\.\d) s\)", sleeper["error"])
    assert m and 3.0 <= float(m.group(1)) < 4.5, sleeper["error"]  # polled every 50 ms (on a busy machine)
    # not retried: one attempt each (retries=1 applies to other failures)
    att = [a for a in load_attempts(repo, "runs/l2") if a["visit"] in (HOG, SLEEPER)]
    assert len(att) == 2 and {a["status"] for a in att} == {"failed"}
    # the reason is in the log too, under its final name
    for r in (hog, sleeper):
        text = (repo.root / r["log_path"]).read_text()
        assert "stopped by its worker" in text and r["error"] in text
    # the other jobs of the run finished, their worker went on
    for v in VISITS:
        if v not in (HOG, SLEEPER):
            r = rows[v]
            assert r["status"] == "done", r
            # measured as without limits: the job's own process (a child of the worker), its CPU, memory, log
            assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 10 and r["host"]
            assert (repo.root / r["log_path"]).read_text().startswith("# twinkles job")
    assert summary.n_failed == 2 and summary.counts["wf_limits"]["done"] == 3
    # no process left behind: the stopped jobs' processes are gone
    assert not _alive(hog["pid"]) and not _alive(sleeper["pid"])


def test_retry_exceeded_and_cli(tmp_path, capsys):
    """--retry-exceeded retries them; the CLI takes the flags and prints the reasons."""
    repo = make_repo(tmp_path / "repo", [1, 2])
    code = main(["run", str(repo.root), "--pipeline", "wf_limits", "--workers", "1", "--no-progress",
                 "--job-time", "2s", "--retry-exceeded", "--retries", "1",
                 "--config", "wf_limits.sleep_visit=2"])
    assert code == 1
    rows = {r["visit"]: r for r in job_rows(repo)}
    assert rows[1]["status"] == "done" and rows[2]["status"] == "failed" and rows[2]["attempt"] == 2
    assert "exceeded time limit 2.0 s" in capsys.readouterr().err
    # the thread executor cannot enforce limits: a clear error, before anything runs
    assert main(["run", str(repo.root), "--pipeline", "wf_limits", "--executor", "threads", "--job-memory",
                 "1GB"]) == 2
    assert "use --executor local" in capsys.readouterr().err
