"""Validation against the simulator's truth: matching, metrics (astrometry, photometry/PA1, PSF, completeness and
purity) and their plots. The only package that reads the truth datasets; pure functions on tables except
:mod:`twinkles.validate.report`, which reads a repository and writes figures."""

from .match import match_sky
from .metrics import (astrometric_offsets, astrometry_summary, completeness_purity, pa1, photometric_pulls,
                      robust_sigma)

__all__ = ["match_sky", "astrometric_offsets", "astrometry_summary", "completeness_purity", "pa1",
           "photometric_pulls", "robust_sigma"]
