"""Errors shared by the command's verbs (``twinkles.cli``, ``twinkles.sim.cli``, ``twinkles.workflow.cli``)."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(RuntimeError):
    """An error caused by the command's input: printed as one message, without a traceback (exit status 2)."""
