"""The true per-visit PSF: Kolmogorov atmosphere x optics, varying across the sensor.

Model (GalSim profiles, angles in the pixel frame), at normalised position u = (x - cx) / L, v = (y - cy) / L
with L = ``psf_variation_scale_px`` (half a 4k sensor by default, so the variation is physical, not per image):

* atmosphere: ``Kolmogorov(fwhm=psfAtmFwhm)`` sheared by g1 = psfAtmG1 + psfAtmDG1DU u + psfAtmDG1DV v,
  g2 = psfAtmG2 + psfAtmDG2DU u + psfAtmDG2DV v (wind-driven, per visit);
* optics and sensor: ``Gaussian(fwhm=psfSysFwhm (1 + psfSizeR2 (u^2 + v^2)))`` (telescope + camera seeing, growing
  off-axis like defocus) sheared by astigmatism g1 = psfAstig (u^2 - v^2), g2 = 2 psfAstig u v, convolved with the
  ``Airy`` pattern of the 8.36 m obscured (0.61) pupil;
* the pixel response (a 0.2" boxcar).

``psfAtmFwhm`` comes from the reported FWHMeff by inverting OpSim's FWHMeff = 1.16 sqrt(sys^2 + 1.04 atm^2)
(SMTN-002), ``psfSysFwhm`` is SMTN-002's system contribution at the visit's airmass.

The PSF is tabulated on a ``psf_grid`` x ``psf_grid`` grid of zone centres and bilinearly interpolated in between
(exactly what :class:`twinkles.psf.ImageGridPSF` does), so :func:`true_psf` is the PSF the renderer used, to
the precision of the interpolation of sub-pixel shifts. Stamps are ``psf_stamp_px`` wide; the model stamps
(:attr:`PsfGrid.native`, :func:`true_psf`) are normalised to 1, while the renderer puts into the image only the
part of a point source's flux that falls inside the stamp (:attr:`PsfGrid.flux_fraction`, ~0.997 for a 61-pixel
stamp: the Kolmogorov wing beyond 6" is dropped, not folded inside). The truth's fluxes and zero points are
totals, as a star's flux is; a measurement that extrapolates the wing to infinity recovers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..psf import ImageGridPSF
from .lsst import LAMBDA_EFF_NM, fwhm_atm_from_eff, fwhm_sys

__all__ = ["PSF_COLUMNS", "draw_psf_params", "PsfGrid", "psf_grid", "true_psf", "psf_profile", "n_eff_pixels"]

PSF_COLUMNS = ("psfAtmFwhm", "psfAtmG1", "psfAtmG2", "psfAtmDG1DU", "psfAtmDG1DV", "psfAtmDG2DU", "psfAtmDG2DV",
               "psfSysFwhm", "psfSizeR2", "psfAstig", "psfLambdaNm")
TELESCOPE_DIAMETER_M = 8.36
OBSCURATION = 0.61


def draw_psf_params(rng: np.random.Generator, cfg: dict, band: str, airmass: float,
                    seeing_fwhm_eff: float) -> dict:
    """Random per-visit PSF parameters (the columns of :data:`PSF_COLUMNS`)."""
    g = float(cfg["psf_atm_g_rms"])
    d = float(cfg["psf_atm_grad_rms"])
    return dict(psfAtmFwhm=fwhm_atm_from_eff(seeing_fwhm_eff, airmass),
                psfAtmG1=float(rng.normal(0, g)), psfAtmG2=float(rng.normal(0, g)),
                psfAtmDG1DU=float(rng.normal(0, d)), psfAtmDG1DV=float(rng.normal(0, d)),
                psfAtmDG2DU=float(rng.normal(0, d)), psfAtmDG2DV=float(rng.normal(0, d)),
                psfSysFwhm=fwhm_sys(airmass), psfSizeR2=float(cfg["psf_size_r2"]),
                psfAstig=float(cfg["psf_astig"]) * float(rng.uniform(0.5, 1.5)),
                psfLambdaNm=LAMBDA_EFF_NM[band])


def psf_profile(visit_row: dict, u: float, v: float, core_sigma_arcsec: float = 0.0):
    """The GalSim PSF profile (arcsec units, no pixel) at normalised detector position (u, v).

    With ``core_sigma_arcsec`` > 0, a circular Gaussian core of that sigma is taken *out* of the optics Gaussian
    (covariance C_sys - sigma_c^2 I): the result convolved with that core is the full PSF. The renderer applies
    the core to galaxy stamps before sampling them, which band-limits them and removes the aliasing of
    convolving sampled images (see :mod:`twinkles.sim.render`).
    """
    import galsim
    r = visit_row
    g1 = r["psfAtmG1"] + r["psfAtmDG1DU"] * u + r["psfAtmDG1DV"] * v
    g2 = r["psfAtmG2"] + r["psfAtmDG2DU"] * u + r["psfAtmDG2DV"] * v
    atm = galsim.Kolmogorov(fwhm=float(r["psfAtmFwhm"])).shear(g1=float(g1), g2=float(g2))
    sys_fwhm = float(r["psfSysFwhm"]) * (1.0 + float(r["psfSizeR2"]) * (u * u + v * v))
    a = float(r["psfAstig"])
    shear = galsim.Shear(g1=a * (u * u - v * v), g2=2 * a * u * v)
    if core_sigma_arcsec > 0:
        sig = sys_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        m = shear.getMatrix()
        cov = sig * sig * (m @ m.T) - core_sigma_arcsec ** 2 * np.eye(2)
        evals, evecs = np.linalg.eigh(cov)
        if evals.min() <= 0:
            raise ValueError(f"galaxy core sigma {core_sigma_arcsec}\" exceeds the optics PSF (sigma {sig:.3f}\")")
        root = evecs @ np.diag(np.sqrt(evals)) @ evecs.T
        optics = galsim.Gaussian(sigma=1.0).transform(root[0, 0], root[0, 1], root[1, 0], root[1, 1])
    else:
        optics = galsim.Gaussian(fwhm=sys_fwhm).shear(shear)
    airy = galsim.Airy(lam=float(r["psfLambdaNm"]), diam=TELESCOPE_DIAMETER_M, obscuration=OBSCURATION)
    return galsim.Convolve(atm, optics, airy)


@dataclass
class PsfGrid:
    """Pixel-convolved PSF images on a grid of detector positions, oversampled for sub-pixel placement.

    ``fine[j, i]`` is the PSF (convolved with the pixel) sampled every 1/``oversample`` pixel over native
    offsets -h..h (h = stamp // 2) at node (xs[i], ys[j]); ``fine[j, i, ::oversample, ::oversample]`` is the
    native stamp centred on the central pixel.
    """

    xs: np.ndarray
    ys: np.ndarray
    fine: np.ndarray
    oversample: int
    stamp: int
    galaxy_kernels: np.ndarray | None = None  # (ky, kx, stamp, stamp): PSF without pixel and galaxy core
    core_sigma_px: float = 0.0
    flux_fraction: np.ndarray | None = None  # (ky, kx): the PSF's flux inside the stamp (1 if not given)

    @property
    def native(self) -> np.ndarray:
        n = self.oversample
        out = self.fine[:, :, ::n, ::n]
        return out / out.sum(axis=(2, 3), keepdims=True)

    def to_psf(self) -> ImageGridPSF:
        return ImageGridPSF(self.native, self.xs, self.ys)


def _node_positions(n_px: int, k: int) -> np.ndarray:
    return (np.arange(k) + 0.5) * n_px / k - 0.5


def psf_grid(visit_row: dict, repo_config: dict, galaxy_core_sigma_px: float = 0.0) -> PsfGrid:
    """Draw the visit's PSF at the zone centres (GalSim; deterministic given the visit row).

    Also draws ``galaxy_kernels``: what pixel-integrated galaxy stamps pre-convolved with a Gaussian core of
    ``galaxy_core_sigma_px`` are convolved with (the PSF without the pixel and without that core)."""
    import galsim
    width = int(repo_config.get("width", repo_config.get("size")))
    height = int(repo_config.get("height", repo_config.get("size")))
    scale = float(repo_config["pixel_scale_arcsec"])
    k = int(repo_config.get("psf_grid", 3))
    stamp = int(repo_config.get("psf_stamp_px", 61))
    n = int(repo_config.get("psf_oversample", 4))
    length = float(repo_config.get("psf_variation_scale_px", 2048))
    h = stamp // 2
    nfine = 2 * n * h + 1
    xs, ys = _node_positions(width, k), _node_positions(height, k)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    fine = np.empty((k, k, nfine, nfine))
    pixel = galsim.Pixel(scale)
    # drawn on a canvas 3x the stamp and cut out: GalSim's FFT box is only as large as the image asks for, so a
    # stamp-sized drawing folds the wing beyond the stamp back inside it (~0.2% of the flux at 6")
    big = 3 * nfine
    lo = (big - nfine) // 2
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            prof = galsim.Convolve(psf_profile(visit_row, (x - cx) / length, (y - cy) / length), pixel)
            img = prof.drawImage(nx=big, ny=big, scale=scale / n, method="no_pixel")
            fine[j, i] = img.array[lo:lo + nfine, lo:lo + nfine]
    # the fraction of the flux inside the stamp (the fine samples are surface brightness x fine-pixel area)
    flux_fraction = np.clip(fine.sum(axis=(2, 3)), 0.0, 1.0)
    # kernels for pixel-integrated galaxy scenes: the PSF *without* the pixel (the scene already integrates over
    # pixels) and without the galaxy core, sampled at pixel centres
    gk = np.empty((k, k, stamp, stamp))
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            prof = psf_profile(visit_row, (x - cx) / length, (y - cy) / length, galaxy_core_sigma_px * scale)
            arr = prof.drawImage(nx=stamp, ny=stamp, scale=scale, method="no_pixel").array
            gk[j, i] = arr / arr.sum()
    return PsfGrid(xs, ys, fine, n, stamp, gk, float(galaxy_core_sigma_px), flux_fraction)


def true_psf(visit_row: dict, repo_config: dict) -> ImageGridPSF:
    """The true PSF of a visit as an :class:`~twinkles.psf.ImageGridPSF` (normalised, pixel-convolved stamps)."""
    return psf_grid(dict(visit_row), repo_config).to_psf()


def n_eff_pixels(stamp: np.ndarray) -> float:
    """Effective number of pixels of a normalised PSF stamp, 1 / sum(p^2) (the n_eff of PSF photometry)."""
    p = stamp / stamp.sum()
    return float(1.0 / np.sum(p * p))
