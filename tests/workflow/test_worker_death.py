"""`twinkles run` with the local executor (Parsl HighThroughputExecutor, worker processes) when a worker process
dies in the middle of a job: the job is retried on a new worker and finishes; so do the other quanta of the
batch the dead worker was running."""

from __future__ import annotations

from wf_common import job_rows, make_repo

from twinkles.workflow import run_pipeline


def test_local_executor_retries_after_a_worker_dies(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2, 3, 4])
    state = tmp_path / "state"
    state.mkdir()
    # every quantum's first attempt kills its worker; batches of 2 quanta per Parsl task
    cfg = {"wf_flaky.state_dir": str(state), "wf_flaky.fail_times": "1", "wf_flaky.die": "true"}
    s = run_pipeline(repo.root, "wf_flaky", executor="local", workers=2, retries=2, overrides=cfg,
                     progress=False, batch=2)
    assert s.ok, s.failures
    rows = job_rows(repo)
    assert [r["visit"] for r in rows] == [1, 2, 3, 4]
    assert all(r["status"] == "done" for r in rows), rows
    assert all(r["attempt"] >= 2 for r in rows), [r["attempt"] for r in rows]
    for v in (1, 2, 3, 4):
        assert repo.get("wftest_flaky", {"visit": v, "detector": 0}, runs="runs/l2")["attempts"] >= 2


def test_local_executor_records_a_dead_worker_when_out_of_retries(tmp_path):
    repo = make_repo(tmp_path / "repo", [1])
    state = tmp_path / "state"
    state.mkdir()
    cfg = {"wf_flaky.state_dir": str(state), "wf_flaky.fail_times": "5", "wf_flaky.die": "true"}
    s = run_pipeline(repo.root, "wf_flaky", executor="local", workers=1, retries=1, overrides=cfg, progress=False)
    assert not s.ok
    (row,) = job_rows(repo)
    assert row["status"] == "failed" and row["attempt"] == 2, row
    assert "worker lost" in row["error"] and "WorkerLost" in row["error"], row["error"]
