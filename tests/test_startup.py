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
        "frozen = gc.get_freeze_count()\n"
        "import_frozen('astropy.table')\n"  # imported already: nothing new is frozen
        "assert gc.get_freeze_count() == frozen\n"
        "gc.disable()\n"
        "import_frozen('json')\n"
        "assert not gc.isenabled()\n"  # left as it was
        "print('ok')\n")
    _prints_ok_in_a_fresh_python(code)


def _prints_ok_in_a_fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter (imports are the point of these tests); it must print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_reentering_without_imports_freezes_nothing_so_later_cycles_are_still_freed():
    import gc
    import weakref

    from twinkles.startup import frozen_imports

    class Node:
        pass

    with frozen_imports():
        pass  # (a worker's later job: its modules are imported already)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle, garbage once dropped
    alive = weakref.ref(a)
    del a, b
    with frozen_imports():
        pass
    gc.collect()
    assert alive() is None
