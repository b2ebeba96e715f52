"""Estimates with their standard errors, and the assertion the science tests make with them.

Every science check of a stage states the figure's expected value and its standard error computed from the data
(how many stars, their S/N, the same stars recurring over visits) and allows a few standard errors::

    value, err = mean_and_error(dra_mas)
    assert_within(value, 0.0, err, 4.0, "mean RA offset of bright stars (mas)")

The standard errors are the large-sample ones for Gaussian data:

* mean: ``s / sqrt(n)``;
* median: ``sqrt(pi / 2) s / sqrt(n)`` (efficiency 2 / pi);
* standard deviation: ``s / sqrt(2 (n - 1))``;
* robust sigma ``1.4826 MAD``: ``1.1664 s / sqrt(n)`` (efficiency 0.3675, Huber & Ronchetti 2009, sec. 5.5);
* a mean of group means (the same star over several visits, the visits of one field): the scatter of the group
  means / sqrt(number of groups), which counts every error the groups share.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["finite", "mean_and_error", "median_and_error", "sd_and_error", "robust_sigma_and_error",
           "grouped_mean_and_error", "combine", "assert_within", "within"]

MAD_TO_SIGMA = 1.4826
MEDIAN_EFFICIENCY_FACTOR = math.sqrt(math.pi / 2.0)  # se(median) / se(mean) for Gaussian data
MAD_SIGMA_SE_FACTOR = 1.1664  # se(1.4826 MAD) * sqrt(n) / sigma for Gaussian data


def finite(x) -> np.ndarray:
    x = np.asarray(x, float).ravel()
    return x[np.isfinite(x)]


def mean_and_error(x) -> tuple[float, float]:
    """Mean of the finite values and its standard error ``sd / sqrt(n)`` (NaN, inf for fewer than 2)."""
    x = finite(x)
    if len(x) < 2:
        return (float(x[0]) if len(x) else float("nan")), float("inf")
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def median_and_error(x) -> tuple[float, float]:
    """Median of the finite values and its standard error ``sqrt(pi/2) sigma / sqrt(n)``, sigma the robust one."""
    x = finite(x)
    if len(x) < 2:
        return (float(x[0]) if len(x) else float("nan")), float("inf")
    med = float(np.median(x))
    sig = MAD_TO_SIGMA * float(np.median(np.abs(x - med)))
    return med, MEDIAN_EFFICIENCY_FACTOR * sig / math.sqrt(len(x))


def sd_and_error(x) -> tuple[float, float]:
    """Standard deviation (ddof 1) and its standard error ``sd / sqrt(2 (n - 1))``."""
    x = finite(x)
    if len(x) < 3:
        return float("nan"), float("inf")
    sd = float(np.std(x, ddof=1))
    return sd, sd / math.sqrt(2.0 * (len(x) - 1))


def robust_sigma_and_error(x, centre: float | None = None) -> tuple[float, float]:
    """1.4826 x the median absolute deviation about ``centre`` (default: the median) and its standard error.

    Give ``centre`` (e.g. 0 for pulls) to measure the spread about the expected value, so that a bias widens it
    instead of being hidden by the median."""
    x = finite(x)
    if len(x) < 3:
        return float("nan"), float("inf")
    c = float(np.median(x)) if centre is None else float(centre)
    sig = MAD_TO_SIGMA * float(np.median(np.abs(x - c)))
    return sig, MAD_SIGMA_SE_FACTOR * sig / math.sqrt(len(x))


def grouped_mean_and_error(values, groups) -> tuple[float, float, int]:
    """Mean of the per-group means of ``values`` and its standard error from their scatter.

    Use when the values are not independent within a group (the same star in several visits, the stars of one
    visit sharing its calibration): the error then counts what the members of a group share. Returns
    ``(mean, error, number of groups)``."""
    v = np.asarray(values, float).ravel()
    g = np.asarray(groups).ravel()
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    _, inv = np.unique(g, return_inverse=True)
    means = np.bincount(inv, weights=v) / np.bincount(inv)
    m, e = mean_and_error(means)
    return m, e, len(means)


def combine(*errors: float) -> float:
    """Quadrature sum of independent standard errors."""
    return float(math.sqrt(sum(float(e) ** 2 for e in errors)))


def within(value: float, expected: float, stderr: float, nsigma: float) -> bool:
    """True when ``|value - expected| <= nsigma * stderr`` (False for a NaN value)."""
    return bool(abs(float(value) - float(expected)) <= float(nsigma) * float(stderr))


def assert_within(value: float, expected: float, stderr: float, nsigma: float = 4.0, what: str = "value",
                  slack: float = 0.0) -> None:
    """Assert ``|value - expected| <= nsigma * stderr + slack``, with a message that gives all four numbers.

    ``slack``: a stated requirement (not a fudge) by which the value may differ from its expectation, e.g. the
    SRD's 5 mmag of zero-point error; keep it 0 where the expectation is exact."""
    dev = float(value) - float(expected)
    limit = float(nsigma) * float(stderr) + float(slack)
    if not abs(dev) <= limit:
        z = dev / float(stderr) if stderr > 0 else float("inf")
        raise AssertionError(f"{what}: {value:.4g}, expected {expected:.4g} +- {stderr:.3g} (standard error); "
                             f"off by {dev:+.3g} = {z:+.1f} sigma, allowed {nsigma:g} sigma"
                             + (f" + {slack:g}" if slack else ""))
