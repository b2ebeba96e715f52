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
from ..stages import STAGE_MODULES, StageError, apply_config_overrides, available_stages, load_stage

__all__ = ["PIPELINES", "DESIGN_OUTPUTS", "StageSpec", "Pipeline", "resolve_pipeline", "register_env_stages",
           "stage_overrides"]

STATIC = ["process_eimage", "make_skymap", "warp", "assemble_coadd", "detect_coadd", "merge_detections", "deblend",
          "measure_coadd", "merge_measurements", "forced_phot_ccd"]
DIA = ["process_eimage", "make_skymap", "warp", "make_template", "image_difference", "associate",
       "forced_phot_dia"]
#: pipeline name -> stages in execution order (DESIGN.md section 4); l2 = static sky followed by DIA.
PIPELINES: dict[str, list[str]] = {
    "static": STATIC,
    "dia": DIA,
    "l2": STATIC + [s for s in DIA if s not in STATIC],
}

#: What each DESIGN stage makes (DESIGN.md section 2), used to explain what an unimplemented stage blocks.
DESIGN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "process_eimage": ("calexp", "calexp_background", "src"),
    "make_skymap": ("skyMap",),
    "warp": ("deepCoadd_directWarp", "deepCoadd_psfMatchedWarp"),
    "assemble_coadd": ("deepCoadd", "deepCoadd_nImage", "deepCoadd_inputs"),
    "detect_coadd": ("deepCoadd_det",),
    "merge_detections": ("deepCoadd_mergeDet",),
    "deblend": ("deepCoadd_deblendedFlux",),
    "measure_coadd": ("deepCoadd_meas",),
    "merge_measurements": ("deepCoadd_ref", "objectTable"),
    "forced_phot_ccd": ("forcedSourceTable",),
    "make_template": ("goodSeeingCoadd",),
    "image_difference": ("differenceExp", "diaSourceTable"),
    "associate": ("diaObjectTable",),
    "forced_phot_dia": ("forcedSourceOnDiaObjectTable",),
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
            for out in DESIGN_OUTPUTS.get(name, ()):
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
