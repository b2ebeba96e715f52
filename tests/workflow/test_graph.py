"""The job graph alone (no Parsl, no repository): dependencies, failure isolation, deferred quanta, resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from twinkles.workflow.graph import JobGraph
from twinkles.workflow.pipeline import Pipeline, StageSpec

VISITS = [10, 11, 12, 13]


def spec(name, quantum, inputs, outputs, producers, find_quanta=None):
    module = SimpleNamespace(__name__=f"fake.{name}")
    if find_quanta is not None:
        module.find_quanta = find_quanta
    return StageSpec(name, module.__name__, module, tuple(quantum), tuple(inputs), tuple(outputs), None, {},
                     dict(producers))


@pytest.fixture
def calls():
    return []


@pytest.fixture
def pipeline(calls):
    def warp_quanta(repo, query, runs):
        calls.append("warp")
        return [{"tract": 0, "patch": p, "visit": v} for p in (1, 2) for v in VISITS]

    stages = [
        spec("A", ("visit", "detector"), ["eimage"], ["calexp"], {}),
        spec("B", ("visit", "detector"), ["calexp"], ["src"], {"calexp": "A"}),
        spec("C", (), ["calexp"], ["skyMap"], {"calexp": "A"}),
        spec("D", ("tract", "patch", "visit"), ["calexp", "skyMap"], ["deepCoadd_directWarp"],
             {"calexp": "A", "skyMap": "C"}, find_quanta=warp_quanta),
    ]
    return Pipeline("test", stages, [])


def discover_first(spec):
    if spec.find_quanta is not None:
        return spec.find_quanta(None, {}, [])
    assert spec.name == "A"
    return [{"visit": v, "detector": 0} for v in VISITS]


def drain(graph):
    out = []
    while graph.ready:
        out.append(graph.ready.popleft())
    return out


def by(graph, stage):
    return {j.data_id.get("visit", j.key): j for j in graph.jobs(stage)}


def test_per_visit_chain_and_aggregate(pipeline, calls):
    g = JobGraph(pipeline, discover_first)
    # A's quanta come from the registry; B and C are projections of A, known at once; D waits for A and C
    assert {j.stage for j in g.jobs()} == {"A", "B", "C"}
    assert len(g.jobs("B")) == len(VISITS) and len(g.jobs("C")) == 1 and calls == []
    first = drain(g)
    assert [j.stage for j in first] == ["A"] * 4
    a = by(g, "A")
    g.settle(a[10], "failed", "boom")
    # only B of visit 10 is excluded; C still waits for the other visits
    assert by(g, "B")[10].status == "skipped-upstream"
    assert "A visit=10" in by(g, "B")[10].error
    assert g.jobs("C")[0].status == "pending" and not g.ready
    g.settle(a[11], "done")
    b11 = drain(g)
    assert [j.label for j in b11] == ["B visit=11 detector=0"]  # B runs as soon as its visit is done
    g.settle(a[12], "done")
    g.settle(a[13], "done")
    ready = drain(g)
    assert sorted(j.label for j in ready) == ["B visit=12 detector=0", "B visit=13 detector=0", "C (no data ID)"]
    assert calls == []  # D's quanta are asked for only once A and C have finished
    c = g.jobs("C")[0]
    g.settle(c, "done")
    assert calls == ["warp"]
    d = drain(g)
    # D (tract, patch, visit) depends on A of the same visit and on C: visit 10 has no calexp -> skipped
    assert len(d) == 6 and all(j.data_id["visit"] != 10 for j in d)
    assert all(j.status == "skipped-upstream" for j in g.jobs("D") if j.data_id["visit"] == 10)
    for j in b11 + ready + d:
        if j.stage != "C":
            g.settle(j, "done")
    assert g.finished
    counts = g.counts()
    assert counts["A"]["failed"] == 1 and counts["B"]["skipped-upstream"] == 1
    assert counts["D"]["skipped-upstream"] == 2 and counts["D"]["done"] == 6
    assert g.n_total == 4 + 4 + 1 + 8 and g.n_settled == g.n_total and g.n_failed == 1


def test_all_upstream_failed_skips_aggregate_and_everything_below(pipeline, calls):
    g = JobGraph(pipeline, discover_first)
    for j in drain(g):
        g.settle(j, "failed", "bad input")
    assert all(j.status == "skipped-upstream" for j in g.jobs("B") + g.jobs("C"))
    # D's quanta are still discovered (from the sky map) and all skipped: nothing upstream succeeded
    assert calls == ["warp"] and all(j.status == "skipped-upstream" for j in g.jobs("D"))
    assert g.finished and not g.ready


def test_retry_requeues_without_releasing_downstream(pipeline):
    g = JobGraph(pipeline, discover_first)
    a = drain(g)[0]
    g.requeue(a)
    assert g.ready[0] is a and by(g, "B")[a.data_id["visit"]].status == "pending"


def test_resume_skips_done_jobs(pipeline):
    previous = {("A", "visit=10,detector=0"): ("done", 1), ("A", "visit=11,detector=0"): ("failed", 2)}
    g = JobGraph(pipeline, discover_first, lambda stage, key: previous.get((stage, key)))
    ready = drain(g)
    labels = sorted(j.label for j in ready)
    # A of visit 10 is not redone, and its B is ready at once; the failed one is tried again (attempt 3 next)
    assert "A visit=10 detector=0" not in labels and "B visit=10 detector=0" in labels
    assert by(g, "A")[11].attempt == 2 and by(g, "A")[10].resumed
    assert g.n_settled == 1


def test_query_restricts_quanta(pipeline):
    g = JobGraph(pipeline, discover_first, query={"visit": range(11, 13)})
    assert sorted(j.data_id["visit"] for j in g.jobs("A")) == [11, 12]
    assert sorted(j.data_id["visit"] for j in g.jobs("B")) == [11, 12]


def test_resume_redoes_aggregate_when_an_upstream_job_runs_again(pipeline):
    previous = {("A", f"visit={v},detector=0"): ("done", 1) for v in VISITS if v != 12}
    previous[("A", "visit=12,detector=0")] = ("failed", 2)
    previous[("C", "")] = ("done", 1)  # made from three visits; visit 12 is tried again, so C must be redone
    previous[("B", "visit=10,detector=0")] = ("done", 1)
    g = JobGraph(pipeline, discover_first, lambda stage, key: previous.get((stage, key)))
    c = g.jobs("C")[0]
    assert c.status == "pending" and not c.resumed
    assert by(g, "B")[10].status == "done"  # its own visit is done: kept
    assert c in g.take_new_jobs()  # recorded as pending again


def test_quanta_without_the_stage_dimensions_are_refused():
    from twinkles.stages import StageError

    stages = [spec("A", ("visit", "detector"), ["eimage"], ["calexp"], {}),
              spec("T", ("tract",), ["calexp"], ["diaObjectTable"], {"calexp": "A"})]

    def discover(s):
        if s.name == "A":
            return [{"visit": 1, "detector": 0}]
        return [{}]  # what projecting calexp data IDs on (tract,) gives: nothing

    g = JobGraph(Pipeline("t", stages, []), discover)
    with pytest.raises(StageError, match="give the stage a find_quanta"):
        g.settle(drain(g)[0], "done")


def test_removed_intermediates_are_made_again_only_for_jobs_reading_them():
    """A's outputs calexp were removed (--no-keep) after its readers were done: a resumed run leaves A alone,
    unless a job still to run reads calexp (then A is done again first); a job reading only A's other output
    (src, still there) does not bring A back."""
    stages = [spec("A", ("visit", "detector"), ["eimage"], ["calexp", "src"], {}),
              spec("B", ("visit", "detector"), ["calexp"], ["forcedSourceTable"], {"calexp": "A"}),
              spec("S", ("visit", "detector"), ["src"], ["diaSourceTable"], {"src": "A"})]
    pipe = Pipeline("test", stages, [])
    previous = {("A", f"visit={v},detector=0"): ("done", 1, ("calexp",)) for v in VISITS}
    previous.update({("B", f"visit={v},detector=0"): ("done", 1) for v in VISITS if v != 11})
    previous.update({("S", f"visit={v},detector=0"): ("done", 1) for v in VISITS if v != 12})
    g = JobGraph(pipe, discover_first, lambda stage, key: previous.get((stage, key)))
    a = by(g, "A")
    assert a[11].status == "pending" and not a[11].outputs_removed  # B of visit 11 reads calexp: redo A first
    assert all(a[v].status == "done" for v in VISITS if v != 11)  # S of visit 12 reads only src: A stays done
    ready = drain(g)
    assert [j.label for j in ready] == ["A visit=11 detector=0", "S visit=12 detector=0"]
    assert by(g, "B")[11].waiting == 1
    g.settle(ready[0], "done")
    # (S of visit 11, done before, is done again too: its upstream job ran again -- the engine's usual rule)
    assert sorted(j.label for j in drain(g)) == ["B visit=11 detector=0", "S visit=11 detector=0"]
