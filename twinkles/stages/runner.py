"""Run one stage on the quanta matching a data ID query, outside the workflow (``twinkles stage``)."""

from __future__ import annotations

import time

from ..repo import QuantumButler, Repository, validate_processing_run
from . import apply_config_overrides, load_stage

__all__ = ["find_quanta", "run_quantum_once", "run_stage", "default_output_run"]

DEFAULT_RUN = "runs/l2"


def default_output_run(repo: Repository) -> str:
    """The configured processing run (``output_run`` in twinkles.yaml), else ``runs/l2``."""
    return repo.config.get("output_run", DEFAULT_RUN)


def find_quanta(repo: Repository, stage_module, query: dict, runs: list[str]) -> list[dict]:
    """Data IDs of the quanta a stage can run on: those of its first input that match the query.

    Stages may define ``find_quanta(repo, query, runs)`` themselves (e.g. per-patch stages whose quanta
    come from the sky map); otherwise the quanta are the distinct projections of the first input's data IDs
    on ``QUANTUM``.
    """
    if hasattr(stage_module, "find_quanta"):
        return stage_module.find_quanta(repo, query, runs)
    first = stage_module.INPUTS[0]
    dims = stage_module.QUANTUM
    seen, out = set(), []
    for ref in repo.query(first, query, runs=runs):
        did = {d: ref.data_id[d] for d in dims if d in ref.data_id}
        key = tuple(sorted(did.items()))
        if key not in seen:
            seen.add(key)
            out.append(did)
    return out


def run_quantum_once(repo: Repository, stage_module, data_id: dict, config, output_run: str,
                     input_runs: list[str] | None = None) -> tuple[list, dict]:
    """Run one stage on one quantum without registering anything: returns (written DatasetRefs, metadata).

    The caller (``run_stage`` here, or the workflow orchestrator after the job came back) registers the refs in
    one transaction; a quantum that raises leaves only unregistered files (or none).
    """
    butler = QuantumButler(repo, output_run, list(input_runs or ["raw"]))
    meta = stage_module.run_quantum(butler, data_id, config) or {}
    return list(butler.outputs), meta


def run_stage(repo_path, stage: str, query: dict, overrides: dict[str, str] | None = None,
              output_run: str | None = None, progress=None) -> list[dict]:
    """Run ``stage`` on every matching quantum, registering each quantum's outputs as it finishes.

    Returns one record per quantum: data ID, status ("done" or "failed"), seconds, metadata or error.
    """
    repo = Repository(repo_path)
    module = load_stage(stage)
    config = apply_config_overrides(module.Config(), overrides or {}, stage)
    run = validate_processing_run(output_run or default_output_run(repo))  # never raw or truth
    repo.ensure_run(run)
    butler_runs = [run, "raw"]
    quanta = find_quanta(repo, module, query, butler_runs)
    records = []
    for i, did in enumerate(quanta):
        t0 = time.time()
        try:
            outputs, meta = run_quantum_once(repo, module, did, config, run)
        except Exception as exc:  # noqa: BLE001 - reported per quantum, the loop goes on
            records.append({"data_id": did, "status": "failed", "seconds": time.time() - t0,
                            "error": f"{type(exc).__name__}: {exc}"})
        else:
            repo.register(outputs)
            records.append({"data_id": did, "status": "done", "seconds": time.time() - t0, "metadata": meta})
        if progress is not None:
            progress(i + 1, len(quanta), records[-1])
    return records
