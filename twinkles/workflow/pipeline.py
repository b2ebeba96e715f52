"""Pipelines: ordered sets of stages (DESIGN.md section 4), resolved against the stages that exist.

The engine knows stages only by name, through :func:`twinkles.stages.load_stage`: a stage module gives its
``QUANTUM`` (dimensions of one job's data ID), ``INPUTS``/``OUTPUTS`` (dataset types), ``Config`` and
``run_quantum``, and optionally ``find_quanta(repo, query, runs)``. Stage-to-stage dependencies follow from the
dataset types: a stage depends on the earlier stage of the pipeline that makes one of its inputs.

Extra stage modules (a site's own stages, or the tests' no-op stages) can be added without editing the package
with the environment variable ``TWINKLES_STAGE_MODULES="name=package.module,other=package.other"``; worker
processes import stages by module path, so they need only the module to be importable (PYTHONPATH).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType

from ..repo.datasets import get_dataset_type
from ..stages import (DIA_STAGES, STAGE_MODULES, STATIC_STAGES, StageError, apply_config_overrides,
                      available_stages, load_stage, stage_outputs)

__all__ = ["PIPELINES", "StageSpec", "Pipeline", "resolve_pipeline", "register_env_stages",
           "stage_overrides"]

#: pipeline name -> stages in execution order (DESIGN.md section 4, defined in twinkles.stages); l2 = static sky
#: followed by DIA.
PIPELINES: dict[str, list[str]] = {
    "static": list(STATIC_STAGES),
    "dia": list(DIA_STAGES),
    "l2": list(STATIC_STAGES) + [s for s in DIA_STAGES if s not in STATIC_STAGES],
}


ENV_STAGES = "TWINKLES_STAGE_MODULES"


def register_env_stages() -> list[str]:
    """Add the stages named in ``$TWINKLES_STAGE_MODULES`` (``name=module,...``) to the stage table."""
    added = []
    for item in os.environ.get(ENV_STAGES, "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, module = item.partition("=")
        if not sep or not name.strip().isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise StageError(f"{ENV_STAGES}: cannot parse {item!r}; write name=package.module[,name2=...]")
        STAGE_MODULES[name.strip()] = module.strip()
        added.append(name.strip())
    return added


@dataclass
class StageSpec:
    """One stage of a pipeline, as the engine sees it (no astronomy: names, dimensions, dataset types)."""

    name: str
    module_name: str
    module: ModuleType
    quantum: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: object
    overrides: dict = field(default_factory=dict)
    #: producer stage of each input made inside this pipeline: {input dataset type: stage name}
    producers: dict = field(default_factory=dict)

    @property
    def producer_stages(self) -> list[str]:
        return list(dict.fromkeys(self.producers.values()))

    @property
    def find_quanta(self):
        return getattr(self.module, "find_quanta", None)


@dataclass
class Pipeline:
    name: str
    stages: list[StageSpec]
    #: DESIGN stages of the pipeline that do not exist yet
    missing: list[str]
    #: {stage: [(input dataset type, unimplemented producer)]}: inputs only an unimplemented stage makes
    blocked_inputs: dict = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]


def stage_overrides(overrides: dict[str, str], stage: str) -> dict[str, str]:
    """The ``stage.field=value`` overrides that belong to ``stage``."""
    return {k: v for k, v in (overrides or {}).items() if k.split(".", 1)[0] == stage}


def resolve_pipeline(spec: str = "l2", overrides: dict[str, str] | None = None) -> Pipeline:
    """Resolve a pipeline name (l2, static, dia) or a comma-separated list of stage names.

    Stages that do not exist yet are listed in ``missing``; the others are loaded and linked to their producers.
    """
    register_env_stages()
    if spec in PIPELINES:
        names = PIPELINES[spec]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in STAGE_MODULES]
        if not names or unknown:
            raise StageError(f"--pipeline {spec!r}: unknown stage(s) {', '.join(unknown) or '(none given)'}; give "
                             f"one of {', '.join(PIPELINES)} or a comma-separated list of stages from: "
                             f"{', '.join(STAGE_MODULES)}")
    overrides = overrides or {}
    known_prefixes = set(names)
    for key in overrides:
        if key.split(".", 1)[0] not in known_prefixes:
            raise StageError(f"--config {key}: the first part must name a stage of this pipeline "
                             f"({', '.join(names)})")
    present = set(available_stages())
    stages, missing = [], []
    made_by: dict[str, str] = {}
    missing_made_by: dict[str, str] = {}
    blocked: dict[str, list] = {}
    for name in names:
        if name not in present:
            missing.append(name)
            for out in stage_outputs(name):  # what the missing stage will make
                missing_made_by.setdefault(out, name)
            continue
        module = load_stage(name)
        for attr in ("QUANTUM", "INPUTS", "OUTPUTS", "Config", "run_quantum"):
            if not hasattr(module, attr):
                raise StageError(f"stage {name} ({module.__name__}) has no {attr}: every stage module defines "
                                 "QUANTUM, INPUTS, OUTPUTS, Config and run_quantum (see twinkles/stages/__init__.py)")
        for dt in tuple(module.INPUTS) + tuple(module.OUTPUTS):
            get_dataset_type(dt)  # raises a clear error for an unknown dataset type
        mine = stage_overrides(overrides, name)
        config = apply_config_overrides(module.Config(), mine, name)
        producers = {dt: made_by[dt] for dt in module.INPUTS if dt in made_by}
        blocked[name] = [(dt, missing_made_by[dt]) for dt in module.INPUTS
                         if dt not in made_by and dt in missing_made_by]
        stages.append(StageSpec(name, module.__name__, module, tuple(module.QUANTUM), tuple(module.INPUTS),
                                tuple(module.OUTPUTS), config, mine, producers))
        for dt in module.OUTPUTS:
            made_by.setdefault(dt, name)
    return Pipeline(spec, stages, missing, {k: v for k, v in blocked.items() if v})
