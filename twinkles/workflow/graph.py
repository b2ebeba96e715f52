"""The job graph: one job per quantum of each stage, linked to the upstream jobs it depends on.

Dependencies come from data IDs. A job of stage S depends on the jobs of each producer stage P (the earlier stage
that makes one of S's inputs) whose data IDs agree with its own on the dimensions they share (a per-visit stage
on the per-visit job of the same visit and detector; a per-patch stage on every warp of that patch; a field-wide
stage on every job of P).

Failure isolation: a job runs once every upstream job has finished, with whatever its upstream jobs produced. It
is skipped (status ``skipped-upstream``) only when, for some producer stage, *none* of its upstream jobs
succeeded -- so a failed visit is dropped from its patch's coadd but a failed coadd does not stop other patches,
and only what depends on a failure is excluded.

The graph grows as the run goes. A stage's quanta are known

* at once when they are the projection of an upstream stage's quanta (no ``find_quanta``, and its first input is
  made by a producer whose quantum determines that input's data ID: e.g. a per-visit stage reading ``calexp``);
* otherwise when all its producer stages have finished, by asking the stage (``find_quanta(repo, query, runs)``,
  e.g. per-patch quanta from the sky map) or the registry (distinct data IDs of its first input).

This module knows nothing of Parsl or the registry tables: :mod:`twinkles.workflow.execute` drives it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..repo.dataid import data_id_key, format_data_id
from ..repo.datasets import get_dataset_type
from ..stages import StageError
from .pipeline import Pipeline, StageSpec

__all__ = ["Job", "JobGraph", "TERMINAL", "STATUSES"]

STATUSES = ("pending", "running", "done", "failed", "skipped-upstream")
TERMINAL = frozenset({"done", "failed", "skipped-upstream"})


@dataclass(eq=False)
class Job:
    stage: str
    data_id: dict
    status: str = "pending"
    #: attempts in this invocation of the engine (retries count against --retries)
    attempts: int = 0
    #: attempts ever recorded in the registry (the attempt number of the next try is this + 1)
    attempt: int = 0
    error: str = ""
    upstream: dict = field(default_factory=dict)  # producer stage -> [Job]
    downstream: list = field(default_factory=list)
    waiting: int = 0  # upstream jobs not yet finished
    resumed: bool = False  # done in an earlier invocation
    #: done earlier, and its outputs of these dataset types were since removed as intermediates (``--no-keep``):
    #: done again if a job that is still to run reads one of them
    outputs_removed: tuple = ()
    #: jobs linked to this one as readers of its outputs (kept after they finish, unlike ``downstream``)
    readers: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return data_id_key(self.data_id)

    @property
    def label(self) -> str:
        return f"{self.stage} {format_data_id(self.data_id)}"

    def __repr__(self) -> str:
        return f"Job({self.label}, {self.status})"


class _StageState:
    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.planned = False
        self.linked = False
        self.jobs: dict[str, Job] = {}
        self.open = 0  # jobs not yet finished

    @property
    def settled(self) -> bool:
        return self.planned and self.open == 0


def _project(data_id: dict, dims) -> dict:
    return {d: data_id[d] for d in dims if d in data_id}


class JobGraph:
    """Jobs of a pipeline and their dependencies.

    ``discover(spec) -> list[dict]`` returns a stage's quanta when they cannot be projected from upstream jobs
    (called once per stage, when its producers have finished). ``previous(stage, key) -> (status, attempt[,
    outputs_removed]) | None`` tells which jobs an earlier invocation finished (``"done"`` with registered
    outputs, or outputs of the dataset types ``outputs_removed`` removed as intermediates once read) so a resumed
    run does only what is missing. ``query`` restricts every stage's quanta (``{"visit": range(...)}``).
    """

    def __init__(self, pipeline: Pipeline, discover, previous=None, query: dict | None = None):
        self.pipeline = pipeline
        self.discover = discover
        self.previous = previous or (lambda stage, key: None)
        self.query = query or {}
        self.stages: dict[str, _StageState] = {s.name: _StageState(s) for s in pipeline.stages}
        self.ready: deque[Job] = deque()
        self.new_jobs: list[Job] = []  # planned since the caller last took them (to record as pending)
        self.changed: list[Job] = []  # jobs that became skipped-upstream since the caller last took them
        self._planning = False
        self._replan = False
        self.n_total = 0  # jobs planned so far
        self.n_settled = 0  # of which finished (done, failed, skipped-upstream)
        self.n_failed = 0
        self.plan()

    # ----------------------------------------------------------------------------------------- planning
    def _projection_source(self, spec: StageSpec) -> str | None:
        """The producer stage whose quanta project onto this stage's quanta, if there is one."""
        if spec.find_quanta is not None or not spec.inputs:
            return None
        first = spec.inputs[0]
        producer = spec.producers.get(first)
        if producer is None:
            return None
        pdims = set(self.stages[producer].spec.quantum)
        tdims = set(get_dataset_type(first).dimensions)
        if tdims <= pdims and set(spec.quantum) <= tdims:
            return producer
        return None

    def _matches_query(self, data_id: dict) -> bool:
        for dim, want in self.query.items():
            if dim not in data_id:
                continue
            value = data_id[dim]
            if isinstance(want, range | list | tuple | set):
                if value not in want:
                    return False
            elif value != want:
                return False
        return True

    def plan(self) -> None:
        """Plan every stage whose quanta can now be known; link and release what became ready."""
        if self._planning:  # called again from a release inside this loop: go round once more
            self._replan = True
            return
        self._planning = True
        try:
            progress = True
            while progress or self._replan:
                self._replan = False
                progress = self._plan_pass()
        finally:
            self._planning = False

    def _plan_pass(self) -> bool:
        progress = False
        for st in self.stages.values():
            if st.planned:
                continue
            spec = st.spec
            source = self._projection_source(spec)
            if source is not None:
                if not self.stages[source].planned:
                    continue
                quanta, seen = [], set()
                for job in self.stages[source].jobs.values():
                    did = _project(job.data_id, spec.quantum)
                    k = data_id_key(did)
                    if k not in seen:
                        seen.add(k)
                        quanta.append(did)
            else:
                if not all(self.stages[p].settled for p in spec.producer_stages):
                    continue
                quanta = self.discover(spec)
            self._add_jobs(st, [q for q in quanta if self._matches_query(q)])
            st.planned = True
            progress = True
        for st in self.stages.values():
            progress = self._link(st) or progress
        return progress

    def _add_jobs(self, st: _StageState, quanta: list[dict]) -> None:
        dims = st.spec.quantum
        for did in quanta:
            if set(did) != set(dims):
                raise StageError(f"stage {st.spec.name}: quantum {format_data_id(did)} does not have the stage's "
                                 f"dimensions ({', '.join(dims) or 'none'}); its quanta cannot be projected from "
                                 f"its first input {st.spec.inputs[0] if st.spec.inputs else '(none)'}: give the "
                                 "stage a find_quanta(repo, query, runs)")
            job = Job(st.spec.name, dict(did))
            prev = self.previous(st.spec.name, job.key)
            if prev is not None:
                status, attempt, *removed = prev
                job.attempt = attempt or 0
                if status == "done":
                    job.status = "done"
                    job.resumed = True
                    job.outputs_removed = tuple(removed[0]) if removed and removed[0] else ()
                    self.n_settled += 1
            st.jobs[job.key] = job
            st.open += job.status not in TERMINAL
            self.n_total += 1
            self.new_jobs.append(job)

    def _link(self, st: _StageState) -> bool:
        spec = st.spec
        if st.linked or not st.planned or not all(self.stages[p].planned for p in spec.producer_stages):
            return False
        for pname in spec.producer_stages:
            pstage = self.stages[pname]
            common = [d for d in spec.quantum if d in pstage.spec.quantum]
            index: dict[tuple, list[Job]] = {}
            for up in pstage.jobs.values():
                index.setdefault(tuple(up.data_id[d] for d in common), []).append(up)
            for job in st.jobs.values():
                ups = index.get(tuple(job.data_id[d] for d in common), [])
                job.upstream[pname] = ups
                if job.resumed and any(u.status != "done" for u in ups):
                    self._invalidate(job)
                for up in ups:
                    up.readers.append(job)
                    if up.status not in TERMINAL:
                        up.downstream.append(job)
                        job.waiting += 1
        # a job still to run whose upstream job's outputs were removed as intermediates: that job is done again
        for job in st.jobs.values():
            if job.status == "pending":
                self._revive_upstream(job)
        st.linked = True
        for job in list(st.jobs.values()):
            if job.waiting == 0:
                self._release(job)
        return True

    def _invalidate(self, job: Job) -> None:
        """A job done earlier whose upstream jobs run again (e.g. a coadd made while a visit had failed, the
        visit since fixed) is done again, so a resumed run ends as an uninterrupted one would."""
        job.status = "pending"
        job.resumed = False
        self.n_settled -= 1
        self.stages[job.stage].open += 1
        self.new_jobs.append(job)  # recorded as pending again

    def _revive_upstream(self, job: Job) -> None:
        reads = set(self.stages[job.stage].spec.inputs)
        for ups in job.upstream.values():
            for up in ups:
                if up.status == "done" and reads & set(up.outputs_removed):
                    self._revive(up)
                    up.downstream.append(job)
                    job.waiting += 1

    def _revive(self, job: Job) -> None:
        """A job done earlier whose outputs were removed (``--no-keep``) is needed again: make it pending, waiting
        on its own upstream jobs (revived in turn if their outputs are gone too)."""
        job.status = "pending"
        job.resumed = False
        job.outputs_removed = ()
        self.n_settled -= 1
        self.stages[job.stage].open += 1
        self.new_jobs.append(job)
        self._revive_upstream(job)
        if job.waiting == 0 and self.stages[job.stage].linked:
            self._release(job)

    def _release(self, job: Job) -> None:
        """All upstream jobs have finished: queue the job, or skip it if a producer gave it nothing."""
        if job.status != "pending":
            return
        for pname, ups in job.upstream.items():
            if ups and not any(u.status == "done" for u in ups):
                failed = [u for u in ups if u.status == "failed"] or ups
                names = "; ".join(u.label for u in failed[:3]) + (f" and {len(failed) - 3} more"
                                                                  if len(failed) > 3 else "")
                self.settle(job, "skipped-upstream", f"no input from {pname}: upstream job(s) {names} "
                                                     f"{failed[0].status}")
                return
        self.ready.append(job)

    # ----------------------------------------------------------------------------------------- progress
    def settle(self, job: Job, status: str, error: str = "") -> None:
        """Record that a job reached a terminal status and release what waited on it."""
        assert status in TERMINAL, status
        if job.status not in TERMINAL:
            self.n_settled += 1
            self.stages[job.stage].open -= 1
        self.n_failed += status == "failed"
        job.status = status
        job.error = error
        if status == "skipped-upstream":
            self.changed.append(job)
        for child in job.downstream:
            child.waiting -= 1
            if child.waiting == 0:
                self._release(child)
        job.downstream = []
        if any(not st.planned for st in self.stages.values()):
            self.plan()

    def requeue(self, job: Job) -> None:
        """Put a failed attempt back in the queue (a retry)."""
        job.status = "pending"
        self.ready.append(job)

    def take_new_jobs(self) -> list[Job]:
        out, self.new_jobs = self.new_jobs, []
        return out

    def take_changed(self) -> list[Job]:
        out, self.changed = self.changed, []
        return out

    # ----------------------------------------------------------------------------------------- views
    def jobs(self, stage: str | None = None) -> list[Job]:
        if stage is not None:
            return list(self.stages[stage].jobs.values())
        return [j for st in self.stages.values() for j in st.jobs.values()]

    @property
    def finished(self) -> bool:
        return all(st.settled for st in self.stages.values()) and not self.ready

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, st in self.stages.items():
            c = dict.fromkeys(STATUSES, 0)
            for j in st.jobs.values():
                c[j.status] += 1
            out[name] = c
        return out
