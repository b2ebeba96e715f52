"""twinkles.startup: imports without cycle collections, then frozen."""

from __future__ import annotations

import subprocess
import sys


def test_import_frozen_collects_nothing_while_importing_and_freezes_what_it_imported():
    code = (
        "import gc, sys\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: runs.append(info['generation']) if phase == 'stop' else None)\n"
        "from twinkles.startup import import_frozen\n"
        "before = gc.get_freeze_count()\n"
        "n = len(runs)\n"
        "m = import_frozen('astropy.table')\n"  # ~100k objects: collections would run without the freeze
        "assert m is sys.modules['astropy.table']\n"
        "assert len(runs) == n, f'{len(runs) - n} collections while importing'\n"
        "assert gc.isenabled() and gc.get_freeze_count() > before + 50000, gc.get_freeze_count()\n"
        "gc.disable()\n"
        "import_frozen('json')\n"
        "assert not gc.isenabled()\n"  # left as it was
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
