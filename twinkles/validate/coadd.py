"""Validation of assemble_coadd outputs: depth, coverage, coadd PSF across the patch, noise, inputs.

Per coadd (tract, patch, band): the number of inputs used / missing / rejected, the covered fraction and median
nImage, the 5-sigma point-source depth (from the variance plane and the coadd PSF, times the coadd's
noise-correlation factor), the pixel noise of empty sky against the variance plane, the coadd PSF's FWHM over a
grid of the patch, the artifact pixels rejected; and a figure with an image cut-out, the nImage map and the PSF
FWHM map.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..image import AB_ZERO_POINT_NJY, mask_bit

__all__ = ["coadd_metrics", "psf_fwhm_map", "depth_map", "plot_coadd"]


def psf_fwhm_map(psf, shape, n: int = 6, covered: np.ndarray | None = None):
    """(xs, ys, FWHM in pixels (n, n)) of a PSF on an n x n grid of positions over an image of ``shape``
    (NaN where ``covered`` is False)."""
    ny, nx = shape
    xs = np.linspace(0.1 * nx, 0.9 * nx, n)
    ys = np.linspace(0.1 * ny, 0.9 * ny, n)
    fw = np.array([[psf.fwhm(float(x), float(y))
                    if covered is None or covered[int(round(y)), int(round(x))] else np.nan for x in xs]
                   for y in ys])
    return xs, ys, fw


def depth_map(coadd, n_image, noise_factor: float = 1.0, block: int = 50) -> np.ndarray:
    """5-sigma point-source depth (AB mag) per ``block`` x ``block`` cell: ``sigma_F^2 = V / sum(P^2)``
    (sky-limited PSF photometry) with V the cell's median variance, P the coadd PSF at the cell's centre;
    NaN where nothing covers."""
    ny, nx = coadd.shape
    out = np.full((ny // block, nx // block), np.nan)
    for j in range(out.shape[0]):
        for i in range(out.shape[1]):
            sl = (slice(j * block, (j + 1) * block), slice(i * block, (i + 1) * block))
            ok = (n_image[sl] > 0) & np.isfinite(coadd.variance[sl])
            if ok.mean() < 0.5:
                continue
            k = coadd.psf.kernel_image((i + 0.5) * block, (j + 0.5) * block)
            sigma = math.sqrt(float(np.median(coadd.variance[sl][ok])) / float((k**2).sum())) * noise_factor
            out[j, i] = AB_ZERO_POINT_NJY - 2.5 * math.log10(5 * sigma)
    return out


def coadd_metrics(coadd, n_image, inputs) -> dict:
    """The figures of one coadd (see the module docstring)."""
    status = np.asarray(inputs["status"]).astype(str)
    covered = n_image > 0
    factor = float(coadd.metadata.get("psf_flux_noise_factor", 1.0))
    depth = depth_map(coadd, n_image, factor)
    _, _, fw = psf_fwhm_map(coadd.psf, coadd.shape, 5, covered)
    quiet = covered & ((coadd.mask & mask_bit("DETECTED", "INEXACT_PSF", "NO_DATA")) == 0)
    chi = coadd.image[quiet] / np.sqrt(coadd.variance[quiet])
    chi_sd = float(1.4826 * np.median(np.abs(chi - np.median(chi)))) if chi.size > 100 else float("nan")
    return {
        "n_inputs": int((status == "used").sum()), "n_missing": int((status == "missing").sum()),
        "n_rejected": int((status == "rejected").sum()),
        "covered_fraction": float(covered.mean()),
        "n_image_median": float(np.median(n_image[covered])) if covered.any() else 0.0,
        "depth_5sigma_median_mag": float(np.nanmedian(depth)) if np.isfinite(depth).any() else float("nan"),
        "psf_fwhm_min_px": float(np.nanmin(fw)) if np.isfinite(fw).any() else float("nan"),
        "psf_fwhm_max_px": float(np.nanmax(fw)) if np.isfinite(fw).any() else float("nan"),
        "empty_sky_chi_robust_sd": chi_sd,
        "inexact_psf_fraction": float(((coadd.mask & mask_bit("INEXACT_PSF")) != 0).mean()),
        "artifact_pixels": int(np.sum(inputs["n_artifact_pixels"])),
        "psf_flux_noise_factor": factor,
    }


def plot_coadd(coadd, n_image, path, title: str = "") -> str:
    """Cut-out of the coadd (asinh stretch), its nImage map, its 5-sigma depth map and PSF FWHM map."""
    from .plots import _save, plt
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    img = np.where(n_image > 0, coadd.image, np.nan)
    ny, nx = img.shape
    rows, cols = np.flatnonzero((n_image > 0).any(axis=1)), np.flatnonzero((n_image > 0).any(axis=0))
    cy = (rows[0] + rows[-1]) // 2 if rows.size else ny // 2
    cx = (cols[0] + cols[-1]) // 2 if cols.size else nx // 2
    cut = img[max(0, cy - 150):cy + 150, max(0, cx - 150):cx + 150]
    s = np.nanpercentile(np.abs(cut), 50) * 3 if np.isfinite(cut).any() else 1.0
    axes[0].imshow(np.arcsinh(cut / max(s, 1e-9)), origin="lower", cmap="gray_r", vmin=-1, vmax=6)
    axes[0].set_title("coadd (cut-out, asinh)", fontsize=8)
    im = axes[1].imshow(n_image, origin="lower", cmap="viridis")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[1].set_title("nImage (inputs per pixel)", fontsize=8)
    depth = depth_map(coadd, n_image, float(coadd.metadata.get("psf_flux_noise_factor", 1.0)))
    im = axes[2].imshow(depth, origin="lower", cmap="magma", extent=(0, nx, 0, ny))
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("5-sigma point-source depth (AB)", fontsize=8)
    xs, ys, fw = psf_fwhm_map(coadd.psf, coadd.shape, 6, n_image > 0)
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    im = axes[3].imshow(fw, origin="lower", cmap="coolwarm",
                        extent=(xs[0] - dx / 2, xs[-1] + dx / 2, ys[0] - dy / 2, ys[-1] + dy / 2))
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    axes[3].set_xlim(0, nx)
    axes[3].set_ylim(0, ny)
    axes[3].set_title("coadd PSF FWHM (pixels)", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))
