"""The view of the repository that one job (one stage on one quantum) gets.

``get`` reads inputs from the output run first, then from the input runs (``raw`` by default); ``put`` writes a
file atomically into the output run and remembers its :class:`DatasetRef`, without touching the registry. The
caller (the ``twinkles stage`` command or the workflow orchestrator) registers ``butler.outputs`` in one
transaction once the job has succeeded: a job that fails or is killed leaves nothing registered.

Truth isolation is enforced here, not by convention: a processing run is never ``raw`` or ``truth`` (nor a run
under them), and a stage's butler never resolves a dataset from the ``truth`` run (only ``twinkles.validate``,
which reads the repository directly, sees the simulator's truth).
"""

from __future__ import annotations

from .repository import RAW_RUN, TRUTH_RUN, DatasetRef, Repository, RepositoryError, validate_run_name

__all__ = ["QuantumButler", "TruthIsolationError", "PROTECTED_RUNS", "validate_processing_run"]

#: runs no stage writes: the inputs and the simulator's truth
PROTECTED_RUNS = (RAW_RUN, TRUTH_RUN)


class TruthIsolationError(RepositoryError):
    """A stage was asked to write into ``raw``/``truth`` or to read the simulator's truth."""


def validate_processing_run(run: str) -> str:
    """``run`` if a stage may write into it; refuses ``raw``, ``truth`` and the runs under them."""
    validate_run_name(run)
    top = run.split("/", 1)[0]
    if top in PROTECTED_RUNS:
        raise TruthIsolationError(
            f"run {run!r} cannot be a processing run: {'the inputs' if top == RAW_RUN else 'the simulator truth'} "
            f"live in {top!r}, which no stage writes{' or reads' if top == TRUTH_RUN else ''}; give another "
            "--run, e.g. runs/l2")
    return run


class QuantumButler:
    def __init__(self, repo: Repository | str, output_run: str, input_runs: list[str] | None = None):
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.output_run = validate_processing_run(output_run)
        inputs = list(input_runs or [RAW_RUN])
        truth = [r for r in inputs if r.split("/", 1)[0] == TRUTH_RUN]
        if truth:
            raise TruthIsolationError(f"input run(s) {', '.join(map(repr, truth))}: a stage never reads the "
                                      "simulator's truth (only validation does); read from raw and processing "
                                      "runs")
        self.input_runs = [self.output_run] + [r for r in inputs if r != self.output_run]
        self.outputs: list[DatasetRef] = []

    def get(self, dataset_type: str, data_id: dict | None = None, columns: list[str] | None = None):
        return self.repo.get(dataset_type, data_id or {}, runs=self.input_runs, columns=columns)

    def exists(self, dataset_type: str, data_id: dict | None = None) -> bool:
        return self.repo.exists(dataset_type, data_id or {}, runs=self.input_runs)

    def query(self, dataset_type: str, where: dict | None = None) -> list[DatasetRef]:
        return self.repo.query(dataset_type, where, runs=self.input_runs)

    def read(self, ref: DatasetRef, columns: list[str] | None = None):
        if ref.run.split("/", 1)[0] == TRUTH_RUN:
            raise TruthIsolationError(f"{ref.dataset_type} {ref.data_id} is in the truth run: a stage never reads "
                                      "the simulator's truth (only validation does)")
        return self.repo.read(ref, columns)

    def put(self, obj, dataset_type: str, data_id: dict | None = None) -> DatasetRef:
        ref = self.repo.write(obj, dataset_type, data_id or {}, self.output_run)
        self.outputs = [r for r in self.outputs if not (r.dataset_type == ref.dataset_type and r.key == ref.key)]
        self.outputs.append(ref)
        return ref

    @property
    def config(self) -> dict:
        return self.repo.config
