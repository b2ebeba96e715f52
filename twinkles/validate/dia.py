"""Validation of difference imaging (make_template, image_difference) against the truth, for the run report.

Per difference image: the robust sd of ``difference / sqrt(variance)`` over its valid pixels (1 for a right
variance plane; visits that are inputs of the template have correlated noise and come out below 1), the number
of DIASources, and, over all visits, the detection efficiency of the simulator's supernova epochs against their
true difference S/N (the epoch's flux minus the template's weighted mix of its inputs' fluxes, over the PSF-flux
error on the difference at the true position).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..measure import forced_psf_flux

__all__ = ["difference_noise_ratio", "supernova_efficiency", "plot_dia"]


def difference_noise_ratio(diff) -> float:
    ok = np.isfinite(diff.image) & np.isfinite(diff.variance) & (diff.variance > 0)
    chi = (diff.image[ok] / np.sqrt(diff.variance[ok])).astype(np.float64)
    if chi.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(chi - np.median(chi))))


def supernova_efficiency(diff, dia, truth, lightcurves, template_visits, template_weights, visit: int,
                         match_px: float = 5.0) -> list[tuple[float, bool]]:
    """(true difference S/N, detected) for every supernova inside the difference image."""
    out = []
    sn = np.nonzero(np.asarray(truth["type"]) == "sn")[0]
    if not len(sn):
        return out
    x, y = diff.wcs.all_world2pix(np.asarray(truth["ra"][sn], float), np.asarray(truth["dec"][sn], float), 0)
    inside = (x > 20) & (x < diff.width - 20) & (y > 20) & (y < diff.height - 20)
    if not inside.any():
        return out
    img, var = np.nan_to_num(diff.image), np.nan_to_num(diff.variance)
    f, e, flag = forced_psf_flux(img, var, diff.mask, diff.psf, x[inside], y[inside])
    for j, k in enumerate(sn[inside]):
        rows = lightcurves[lightcurves["id"] == truth["id"][k]]
        flux = {int(r["visit"]): float(r["flux"]) for r in rows}
        if visit not in flux or any(u not in flux for u in template_visits) or flag[j]:
            continue
        true_diff = flux[visit] - sum(w * flux[u] for u, w in zip(template_visits, template_weights))
        xs, ys = x[inside][j], y[inside][j]
        det = bool(len(dia) and np.min(np.hypot(np.asarray(dia["x"]) - xs, np.asarray(dia["y"]) - ys)) < match_px)
        out.append((float(true_diff / e[j]), det))
    return out


def plot_dia(visits, ratios, in_template, snr_det, path) -> str:
    """Noise ratio per visit and the supernova detection efficiency against the true difference S/N."""
    from .plots import _save, plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = ["tab:orange" if t else "tab:blue" for t in in_template]
    axes[0].bar(range(len(visits)), ratios, color=colors)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_xticks(range(len(visits)), [str(v) for v in visits], rotation=90, fontsize=6)
    axes[0].set_ylabel("robust sd of diff / sqrt(var)", fontsize=8)
    axes[0].set_title("difference-image noise (orange: template inputs)", fontsize=8)
    if snr_det:
        s = np.abs(np.array([a for a, _ in snr_det]))
        d = np.array([b for _, b in snr_det])
        edges = np.array([0, 2, 3, 4, 5, 6, 7, 8, 10, 15, 25, 50, 1e9])
        mids, eff = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (s >= lo) & (s < hi)
            if m.sum():
                mids.append(min((lo + hi) / 2, 60))
                eff.append(d[m].mean())
        axes[1].plot(mids, eff, "o-")
        axes[1].axvline(5.0, color="k", ls=":", lw=0.8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("|true difference S/N| of supernova epochs", fontsize=8)
    axes[1].set_ylabel("fraction detected", fontsize=8)
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("DIA detection efficiency", fontsize=8)
    return _save(fig, Path(path))
