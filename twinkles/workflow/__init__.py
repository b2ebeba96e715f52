"""The workflow engine: pipelines of stages, the job graph, execution on Parsl, job records, status page, report.

The engine knows no astronomy: it knows stages by name (:func:`twinkles.stages.load_stage`), their quanta and
dataset types, and the repository. ``twinkles run | status | serve | report`` are in :mod:`.cli`.
"""

from .execute import RunSummary, WorkflowError, run_pipeline
from .graph import Job, JobGraph
from .pipeline import PIPELINES, resolve_pipeline

__all__ = ["run_pipeline", "RunSummary", "WorkflowError", "Job", "JobGraph", "PIPELINES", "resolve_pipeline"]
