"""Run the commands of every cookbook recipe (docs/cookbook/*.md), as a user would.

Each ```bash block of a recipe runs in order, in one bash session (set -euo pipefail) in a fresh directory, with
this environment's `twinkles` first on PATH. The recipes are written for the demo field; here `--preset demo` is
replaced by `--preset tiny` so that the suite stays fast (same commands, smaller images). Blocks fenced as
```text are shown to the reader but not run.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

COOKBOOK = Path(__file__).resolve().parents[1] / "docs" / "cookbook"
BLOCK_RE = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)


def recipe_script(path: Path) -> str:
    blocks = BLOCK_RE.findall(path.read_text())
    script = "\n".join(blocks)
    return script.replace("--preset demo", "--preset tiny")


RECIPES = sorted(COOKBOOK.glob("*.md"))


def test_every_recipe_has_commands():
    for path in RECIPES:
        assert recipe_script(path).strip(), f"{path.name} has no ```bash block to run"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs(recipe, tmp_path):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    script = "set -euo pipefail\nset -x\n" + recipe_script(recipe)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (f"recipe {recipe.name} failed (exit {proc.returncode})\n--- stdout\n"
                                  f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
