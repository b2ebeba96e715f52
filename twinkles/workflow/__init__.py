"""The workflow engine: pipelines of stages, the job graph, execution on Parsl, job records, status page, report.

The engine knows no astronomy: it knows stages by name (:func:`twinkles.stages.load_stage`), their quanta and
dataset types, and the repository. ``twinkles run | status | serve | report`` are in :mod:`.cli`.

Names are imported lazily: a Parsl worker unpickling :func:`twinkles.workflow.job.execute_batch` imports only
that module, and the heavy imports happen inside the first job (where their CPU time is measured).
"""

from __future__ import annotations

import importlib

__all__ = ["run_pipeline", "RunSummary", "WorkflowError", "Job", "JobGraph", "PIPELINES", "resolve_pipeline"]

_WHERE = {"run_pipeline": "execute", "RunSummary": "execute", "WorkflowError": "execute", "Job": "graph",
          "JobGraph": "graph", "PIPELINES": "pipeline", "resolve_pipeline": "pipeline"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
