"""Plots of the validation metrics (matplotlib, Agg), each written to a PNG path."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_astrometric_offsets", "plot_pulls", "plot_completeness", "plot_visit_truth", "plot_pa1"]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def plot_astrometric_offsets(dra_mas, ddec_mas, path, title="Astrometric offsets of bright stars vs truth"):
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(dra_mas, ddec_mas, s=6, alpha=0.6)
    for r in (5, 10, 20):
        ax.add_patch(plt.Circle((0, 0), r, fill=False, ls="--", lw=0.7, color="gray"))
    lim = max(25.0, float(np.nanpercentile(np.abs(np.r_[dra_mas, ddec_mas]), 98)) if len(dra_mas) else 25.0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("dRA cos(Dec) (mas)")
    ax.set_ylabel("dDec (mas)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_pulls(pull, path, title="PSF-flux pulls of isolated stars vs truth"):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pull = np.asarray(pull, float)
    pull = pull[np.isfinite(pull)]
    bins = np.linspace(-6, 6, 49)
    ax.hist(np.clip(pull, -6, 6), bins=bins, density=True, alpha=0.7, label=f"n={len(pull)}")
    xx = np.linspace(-6, 6, 200)
    ax.plot(xx, np.exp(-xx ** 2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0,1)")
    ax.set_xlabel("(psfFlux - true) / psfFluxErr")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_completeness(pred_snr, detected, path, title="Detection completeness of point sources"):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pred_snr = np.asarray(pred_snr, float)
    detected = np.asarray(detected, bool)
    bins = np.array([1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100, 1e6])
    idx = np.digitize(pred_snr, bins) - 1
    c = [detected[idx == k].mean() if (idx == k).any() else np.nan for k in range(len(bins) - 1)]
    centres = np.sqrt(bins[1:] * bins[:-1])
    centres[-1] = 200
    ax.semilogx(centres, c, "o-")
    ax.axvline(10, color="gray", ls="--", lw=0.7)
    ax.axhline(0.95, color="gray", ls=":", lw=0.7)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("predicted S/N (from the visit's 5-sigma depth)")
    ax.set_ylabel("fraction detected")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_visit_truth(visits, zp_offset_mmag, fwhm_ratio, path, title="Per-visit zero point and PSF FWHM vs truth"):
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    a1.plot(visits, zp_offset_mmag, "o")
    a1.axhspan(-5, 5, color="green", alpha=0.1)
    a1.set_ylabel("ZP - true ZP (mmag)")
    a2.plot(visits, (np.asarray(fwhm_ratio) - 1) * 100, "o")
    a2.axhspan(-2, 2, color="green", alpha=0.1)
    a2.set_ylabel("FWHM / true - 1 (%)")
    a2.set_xlabel("visit")
    a1.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_pa1(residuals_by_band: dict, path, title="Repeatability of bright stars (PA1)"):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(-50, 50, 41)
    for band, r in residuals_by_band.items():
        ax.hist(np.clip(r, -50, 50), bins=bins, histtype="step", label=band)
    ax.set_xlabel("mag - mean mag (mmag)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
