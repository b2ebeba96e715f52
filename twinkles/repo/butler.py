"""The view of the repository that one job (one stage on one quantum) gets.

``get`` reads inputs from the output run first, then from the input runs (``raw`` by default); ``put`` writes a
file atomically into the output run and remembers its :class:`DatasetRef`, without touching the registry. The
caller (the ``twinkles stage`` command or the workflow orchestrator) registers ``butler.outputs`` in one
transaction once the job has succeeded: a job that fails or is killed leaves nothing registered.
"""

from __future__ import annotations

from .repository import RAW_RUN, DatasetRef, Repository, validate_run_name

__all__ = ["QuantumButler"]


class QuantumButler:
    def __init__(self, repo: Repository | str, output_run: str, input_runs: list[str] | None = None):
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.output_run = validate_run_name(output_run)
        self.input_runs = [self.output_run] + [r for r in (input_runs or [RAW_RUN]) if r != self.output_run]
        self.outputs: list[DatasetRef] = []

    def get(self, dataset_type: str, data_id: dict | None = None, columns: list[str] | None = None):
        return self.repo.get(dataset_type, data_id or {}, runs=self.input_runs, columns=columns)

    def exists(self, dataset_type: str, data_id: dict | None = None) -> bool:
        return self.repo.exists(dataset_type, data_id or {}, runs=self.input_runs)

    def query(self, dataset_type: str, where: dict | None = None) -> list[DatasetRef]:
        return self.repo.query(dataset_type, where, runs=self.input_runs)

    def read(self, ref: DatasetRef, columns: list[str] | None = None):
        return self.repo.read(ref, columns)

    def put(self, obj, dataset_type: str, data_id: dict | None = None) -> DatasetRef:
        ref = self.repo.write(obj, dataset_type, data_id or {}, self.output_run)
        self.outputs = [r for r in self.outputs if not (r.dataset_type == ref.dataset_type and r.key == ref.key)]
        self.outputs.append(ref)
        return ref

    @property
    def config(self) -> dict:
        return self.repo.config
