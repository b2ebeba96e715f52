"""Test stage that fails its first ``fail_times`` attempts on each quantum (counted in files under state_dir);
with ``die`` a failing attempt kills its worker process (``os._exit``) instead of raising."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import wf_common  # noqa: F401

QUANTUM = ("visit", "detector")
INPUTS = ("eimage",)
OUTPUTS = ("wftest_flaky",)


@dataclass
class Config:
    state_dir: str = ""  # folder counting attempts per quantum
    fail_times: int = 1  # attempts that fail before one succeeds
    die: bool = False  # a failing attempt ends its worker process abruptly (as an OOM kill or a segfault would)


def run_quantum(butler, data_id, config: Config) -> dict:
    counter = Path(config.state_dir) / f"visit{int(data_id['visit'])}"
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    if n < config.fail_times:
        if config.die:
            os._exit(137)
        raise RuntimeError(f"visit {data_id['visit']}: transient failure {n + 1} of {config.fail_times}")
    butler.put({"attempts": n + 1}, "wftest_flaky", data_id)
    return {"attempts": n + 1}
