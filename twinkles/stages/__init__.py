"""The DM stages, one module each, named after the DM task in snake case.

Every stage module defines:

* ``Config``: a dataclass (nested dataclasses allowed) whose fields carry their unit in a comment;
* ``QUANTUM``: the dimensions of the data ID one job runs on, e.g. ``("visit", "detector")``;
* ``INPUTS`` / ``OUTPUTS``: the dataset types it reads and writes;
* ``run(...)``: the pure algorithmic step on in-memory objects, returning a small result object. ``run`` is a
  short sequence of named steps, one function per DM sub-task (``process_eimage``: ``prepare_frame``,
  ``subtract_background``, ``repair_cosmic_rays``, ``detect``, ``characterize_psf``, ``measure``,
  ``correct_apertures``, ``calibrate_astrometry``, ``calibrate_photometry``, ``source_table``), each timed with
  ``with timer("step"):`` (:class:`~twinkles.stages.timing.StepTimer`); the numerical work lives in
  :mod:`twinkles.algorithms` and :mod:`twinkles.measure`;
* ``run_quantum(butler, data_id, config) -> dict``: reads inputs through a
  :class:`~twinkles.repo.QuantumButler`, calls ``run``, writes outputs with ``butler.put``, returns metadata.

Stages run alone (``twinkles stage NAME REPO --id ...``, see :func:`run_stage`) or from the workflow.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType

__all__ = ["STATIC_STAGES", "DIA_STAGES", "STAGE_MODULES", "PLANNED_OUTPUTS", "load_stage", "available_stages",
           "stage_outputs", "apply_config_overrides", "parse_overrides", "ProcessingError", "StageError"]

#: The cookbook's recipes (DESIGN.md section 4), the one list of the DM stages: static sky ...
STATIC_STAGES = ("process_eimage", "make_skymap", "warp", "assemble_coadd", "detect_coadd", "merge_detections",
                 "deblend", "measure_coadd", "merge_measurements", "forced_phot_ccd")
#: ... and difference imaging (the first three shared)
DIA_STAGES = ("process_eimage", "make_skymap", "warp", "make_template", "image_difference", "associate",
              "forced_phot_dia")

#: stage name -> module, in DESIGN.md section 4 order (sites and tests add theirs: TWINKLES_STAGE_MODULES)
STAGE_MODULES: dict[str, str] = {name: f"twinkles.stages.{name}"
                                  for name in dict.fromkeys(STATIC_STAGES + DIA_STAGES)}

#: What the stages not written yet will make (DESIGN.md section 2), to say what a missing stage blocks; a stage
#: that exists says it itself (its OUTPUTS), and its entry here is no longer read.
PLANNED_OUTPUTS: dict[str, tuple[str, ...]] = {
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


class StageError(RuntimeError):
    """A stage cannot be found or configured."""


class ProcessingError(RuntimeError):
    """A stage failed on its input data; the message names the data ID, what was wrong and what to do."""


def available_stages() -> list[str]:
    return [name for name in STAGE_MODULES if _module_exists(STAGE_MODULES[name])]


def _module_exists(modname: str) -> bool:
    try:
        return importlib.util.find_spec(modname) is not None
    except ModuleNotFoundError:
        return False


def stage_outputs(name: str) -> tuple[str, ...]:
    """The dataset types a stage makes: its module's OUTPUTS if it exists, else what it is planned to make."""
    if name in STAGE_MODULES and _module_exists(STAGE_MODULES[name]):
        return tuple(load_stage(name).OUTPUTS)
    return PLANNED_OUTPUTS.get(name, ())


def load_stage(name: str) -> ModuleType:
    if name not in STAGE_MODULES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGE_MODULES)}")
    if not _module_exists(STAGE_MODULES[name]):
        raise StageError(f"stage {name!r} is not implemented yet; implemented: {', '.join(available_stages())}")
    return importlib.import_module(STAGE_MODULES[name])


def _coerce(value: str, current):
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, (list, tuple)):
        items = [v for v in value.split(",") if v]
        if current:
            items = [_coerce(v, current[0]) for v in items]
        return type(current)(items)
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return None if value.lower() == "none" else value
    return value


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["stage.field=value", ...]`` (the command line's ``--config`` values) -> ``{"stage.field": "value"}``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise StageError(f"--config {item!r}: write stage.field=value, e.g. "
                             "--config process_eimage.detection.threshold=5")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def apply_config_overrides(config, overrides: dict[str, str], stage: str = ""):
    """Return a copy of ``config`` with dotted overrides applied: ``{"detection.threshold": "5"}``.

    Keys may start with the stage name (``process_eimage.detection.threshold``), as on the command line.
    """
    config = dataclasses.replace(config)
    for key, value in overrides.items():
        parts = key.split(".")
        if stage and parts[0] == stage:
            parts = parts[1:]
        if not parts:
            raise StageError(f"config override {key!r} names no field")
        obj = config
        for i, part in enumerate(parts[:-1]):
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
                raise StageError(f"config override {key!r}: {'.'.join(parts[:i + 1])} is not a config section of "
                                 f"{stage or type(config).__name__}")
            child = dataclasses.replace(getattr(obj, part))
            setattr(obj, part, child)
            obj = child
        last = parts[-1]
        if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
            names = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
            raise StageError(f"config override {key!r}: no field {last!r} (fields here: {names})")
        try:
            setattr(obj, last, _coerce(str(value), getattr(obj, last)))
        except ValueError as exc:
            raise StageError(f"config override {key}={value!r}: {exc}") from None
    return config
