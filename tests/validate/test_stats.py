"""The standard errors of validate.stats against Monte Carlo, assert_within's message, and the validation
sections' strict mode (a recipe's comparison step must fail when the comparison cannot be made)."""

import numpy as np
import pytest

from twinkles.validate import stats

N, TRIALS = 200, 4000


@pytest.mark.parametrize("estimator", [stats.mean_and_error, stats.median_and_error, stats.sd_and_error,
                                       lambda x: stats.robust_sigma_and_error(x - 3.0, 0.0)],
                         ids=["mean", "median", "sd", "robust_sigma"])
def test_standard_errors_match_monte_carlo(estimator):
    """Over 4000 Gaussian samples of 200, the scatter of the estimate equals the median quoted standard error
    within 5% (the scatter's own relative error: 1 / sqrt(2 x 4000) = 1.1%)."""
    rng = np.random.default_rng(7)
    vals, errs = zip(*(estimator(rng.normal(3.0, 2.0, N)) for _ in range(TRIALS)))
    assert np.std(vals) == pytest.approx(np.median(errs), rel=0.05)


def test_grouped_mean_counts_what_groups_share():
    """Values sharing a per-group offset (sd 1) and their own noise (sd 1): the grouped error follows the group
    scatter, while the naive error sd / sqrt(n) would be too small by sqrt((members + 1) / 2) = 2.3."""
    rng = np.random.default_rng(3)
    means, errs, naive = [], [], []
    for _ in range(1000):
        g = np.repeat(np.arange(30), 10)
        v = rng.normal(0, 1, 30)[g] + rng.normal(0, 1, len(g))
        m, e, n = stats.grouped_mean_and_error(v, g)
        assert n == 30
        means.append(m)
        errs.append(e)
        naive.append(stats.mean_and_error(v)[1])
    assert np.std(means) == pytest.approx(np.median(errs), rel=0.08)
    assert np.std(means) > 2 * np.median(naive)


def test_assert_within_message():
    stats.assert_within(1.3, 1.0, 0.1, 4.0, "x")
    with pytest.raises(AssertionError, match=r"pull sd: 1.5, expected 1 \+- 0.1 .* \+5.0 sigma, allowed 4 sigma"):
        stats.assert_within(1.5, 1.0, 0.1, 4.0, "pull sd")
    stats.assert_within(6.0, 0.0, 0.5, 4.0, "zp", slack=5.0)
    with pytest.raises(AssertionError, match=r"allowed 4 sigma \+ 5"):
        stats.assert_within(7.5, 0.0, 0.5, 4.0, "zp", slack=5.0)
    with pytest.raises(AssertionError):
        stats.assert_within(float("nan"), 0.0, 1.0, 4.0, "nan is never within")
    assert stats.combine(3.0, 4.0) == pytest.approx(5.0)
    assert stats.within(0.5, 0.0, 0.1, 5.0) and not stats.within(0.51, 0.0, 0.1, 5.0)


def test_validation_sections_strict_mode_raises(tmp_path, monkeypatch):
    """The report keeps a failed section's error; ``raise_errors=True`` (the cookbook's comparison step) raises
    it, so the recipe exits non-zero."""
    from twinkles.repo import Repository
    from twinkles.validate import report

    def broken(repo, run, outdir):
        """broken builder"""
        raise ValueError("truth catalog unreadable")

    monkeypatch.setattr(report, "SECTION_BUILDERS", [broken])
    repo = Repository.create(tmp_path / "repo")
    secs = report.validation_sections(repo, "runs/l2", tmp_path / "out")
    assert secs[0]["error"] == "ValueError: truth catalog unreadable"
    with pytest.raises(ValueError, match="truth catalog unreadable"):
        report.validation_sections(repo, "runs/l2", tmp_path / "out", raise_errors=True)
