"""The stage list is defined once (twinkles.stages): the pipelines, the module table and what a missing stage
blocks are derived from it."""

from __future__ import annotations

from twinkles.repo.datasets import get_dataset_type
from twinkles.stages import (DIA_STAGES, PLANNED_OUTPUTS, STAGE_MODULES, STATIC_STAGES, available_stages,
                             load_stage, stage_outputs)
from twinkles.workflow.pipeline import PIPELINES


def test_pipelines_and_modules_come_from_the_one_stage_list():
    assert PIPELINES["static"] == list(STATIC_STAGES) and PIPELINES["dia"] == list(DIA_STAGES)
    assert list(STAGE_MODULES)[:len(set(STATIC_STAGES) | set(DIA_STAGES))] == list(
        dict.fromkeys(STATIC_STAGES + DIA_STAGES))
    assert set(PLANNED_OUTPUTS) <= set(STAGE_MODULES)
    for outputs in PLANNED_OUTPUTS.values():
        for dt in outputs:
            get_dataset_type(dt)  # a known dataset type


def test_a_stage_that_exists_says_what_it_makes():
    for name in available_stages():
        assert stage_outputs(name) == tuple(load_stage(name).OUTPUTS)
    assert "process_eimage_metadata" in stage_outputs("process_eimage")
    missing = [n for n in PLANNED_OUTPUTS if n not in available_stages()]
    for name in missing:
        assert stage_outputs(name) == PLANNED_OUTPUTS[name]
