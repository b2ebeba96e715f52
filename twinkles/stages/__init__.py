"""The DM stages, one module each, named after the DM task in snake case.

Every stage module defines:

* ``Config``: a dataclass (nested dataclasses allowed) whose fields carry their unit in a comment;
* ``QUANTUM``: the dimensions of the data ID one job runs on, e.g. ``("visit", "detector")``;
* ``INPUTS`` / ``OUTPUTS``: the dataset types it reads and writes;
* ``run(...)``: the pure algorithmic step on in-memory objects, returning a small result object;
* ``run_quantum(butler, data_id, config) -> dict``: reads inputs through a
  :class:`~twinkles.repo.QuantumButler`, calls ``run``, writes outputs with ``butler.put``, returns metadata.

Stages run alone (``twinkles stage NAME REPO --id ...``, see :func:`run_stage`) or from the workflow.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType

__all__ = ["STAGE_MODULES", "load_stage", "available_stages", "apply_config_overrides", "parse_overrides",
           "ProcessingError", "StageError"]

#: stage name -> module (DESIGN.md section 4 order)
STAGE_MODULES: dict[str, str] = {
    name: f"twinkles.stages.{name}"
    for name in ["process_eimage", "make_skymap", "warp", "assemble_coadd", "detect_coadd", "merge_detections",
                 "deblend", "measure_coadd", "merge_measurements", "forced_phot_ccd", "make_template",
                 "image_difference", "associate", "forced_phot_dia"]
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
