"""Fixtures of the workflow tests: the test-only stages (registered for this process and for Parsl workers and
`twinkles run` subprocesses through TWINKLES_STAGE_MODULES and PYTHONPATH) and tiny repositories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import wf_common  # noqa: E402


@pytest.fixture(autouse=True)
def wf_stage_env(monkeypatch):
    """Register the test stages in this process and in every process it starts (undone after the test)."""
    wf_common.register_test_stages(monkeypatch)
    yield
