"""The moment kernels give bit-identical results whether numba compiles them or loads them from its cache.

A job re-run in a fresh worker (resume, retry, another node) must write identical files; a kernel whose floating-
point order depends on how it was compiled (fastmath reassociation) broke that by ~1e-14.
"""

import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import sys
import numpy as np
from twinkles.measure.moments import moments_from_stamps
rng = np.random.default_rng(1)
y, x = np.mgrid[:31, :31]
stamps = (np.exp(-((x - 15.3) ** 2 + (y - 14.8) ** 2) / (2 * 2.1 ** 2))[None] * rng.uniform(0.5, 2, (50, 1, 1))
          + rng.normal(0, 0.01, (50, 31, 31)))
m = moments_from_stamps(stamps, None, 2.0)
np.save(sys.argv[1], np.stack([np.asarray(m[k], float) for k in ("ixx", "iyy", "ixy")]))
"""


def test_moments_identical_compiled_and_cached(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    out = []
    for i in range(2):  # the first process compiles and fills the cache, the second loads it
        path = tmp_path / f"m{i}.npy"
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True)
        out.append(np.load(path))
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "numba wrote no cache: the test would prove nothing"
    assert np.array_equal(out[0], out[1], equal_nan=True), np.nanmax(np.abs(out[0] - out[1]))
