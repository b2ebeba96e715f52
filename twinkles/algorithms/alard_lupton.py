"""Alard-Lupton PSF matching of two images of the same sky (DM ip_diffim's ``PsfMatchTask`` / ``ImagePsfMatchTask``,
used by ``subtractImages.AlardLuptonSubtractTask``).

The sharper image R ("reference", the one convolved) is matched to the other, T ("target"): ``T ~ K(x) * R + B(x)``
with the kernel a linear combination of basis functions (Alard & Lupton 1998; Alard 2000),

    K(u; x) = sum_b a_b(x) B_b(u),   B_b = Gaussian(sigma_i) u^p v^q  (p + q <= degree_i),

DM's defaults: three Gaussians (sigmas ``[s/beta, s, s*beta]``, ``s`` the Gaussian width of the PSF difference,
``beta`` = 2, never below 0.7 px), degrees 4, 2, 2 (27 basis functions); the kernel ``6`` FWHM wide, within 21-35
px. The first basis function is normalised to sum 1 and the others made zero-sum (``B_b - sum(B_b) B_0``), so the
kernel's sum (the photometric scaling) is ``a_0`` alone, kept spatially constant (DM's default); the other
coefficients are polynomials of ``spatial_order`` in the position; a differential background polynomial of
``background_order`` is fitted with them. The fit is one linear least-squares problem over the pixels of stamps
around bright, isolated, unsaturated sources spread over the image (weights: the inverse variance of ``T`` plus
that of ``R``), with iterated rejection of stamps whose chi^2 per pixel is an outlier (variable sources, residuals
of bad pixels), as DM's kernel candidates are rejected.

The images convolved with each basis function are computed once by FFT (``R * B_b``), so the spatially varying
convolution of the whole image is ``sum_b a_b(x) (R * B_b)(x)`` -- exact for a kernel varying with position.

Pure functions of arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

__all__ = ["AlardLuptonConfig", "KernelSolution", "basis_sigmas", "kernel_size_for", "gaussian_basis",
           "spatial_terms", "fit_kernel", "MatchingError"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


class MatchingError(ValueError):
    """The matching kernel cannot be fitted (too few usable stamps, a singular system)."""


@dataclass
class AlardLuptonConfig:
    n_gauss: int = 3  # DM alardNGauss 3
    degrees: tuple = (4, 2, 2)  # DM alardDegGauss [4, 2, 2]
    gauss_beta: float = 2.0  # DM alardGaussBeta: the sigmas are s / beta, s, s * beta
    min_sigma_px: float = 0.7  # DM alardMinSig 0.7
    kernel_size_fwhm: float = 6.0  # DM kernelSizeFwhmScaling 6
    kernel_size_min: int = 21  # DM kernelSizeMin 21
    kernel_size_max: int = 35  # DM kernelSizeMax 35
    spatial_order: int = 1  # DM spatialKernelOrder 1 (the kernel's shape varies linearly over the image)
    background_order: int = 1  # DM spatialBgOrder 1
    max_stamps: int = 100  # stamps used at most (DM nStarPerCell x cells)
    min_stamps: int = 8  # fewer usable stamps: the fit fails
    clip_sigma: float = 3.0  # stamps with chi^2 per pixel beyond median + clip_sigma x robust sd are dropped
    max_iterations: int = 3  # rejection iterations (DM maxSpatialIterations 3)


def basis_sigmas(fwhm_target_px: float, fwhm_ref_px: float, config: AlardLuptonConfig) -> list[float]:
    """Gaussian widths of the basis (px) from the two PSF widths: ``s = sqrt(s_T^2 - s_R^2)`` (DM scaleByFwhm)."""
    st, sr = fwhm_target_px * FWHM_TO_SIGMA, fwhm_ref_px * FWHM_TO_SIGMA
    mid = config.n_gauss // 2
    # the narrowest never below min_sigma_px, so the Gaussians stay distinct (a singular basis otherwise)
    s = math.sqrt(max(st * st - sr * sr, (config.min_sigma_px * config.gauss_beta ** mid) ** 2))
    return [s * config.gauss_beta ** (i - mid) for i in range(config.n_gauss)]


def kernel_size_for(fwhm_px: float, config: AlardLuptonConfig) -> int:
    n = int(round(config.kernel_size_fwhm * fwhm_px))
    n = min(max(n, config.kernel_size_min), config.kernel_size_max)
    return n + (1 - n % 2)


def gaussian_basis(size: int, sigmas, degrees) -> np.ndarray:
    """(n_basis, size, size): Gaussians times monomials u^p v^q, the first of sum 1, the others of sum 0."""
    h = size // 2
    v, u = np.mgrid[-h:h + 1, -h:h + 1].astype(float)
    out = []
    for s, deg in zip(sigmas, degrees):
        g = np.exp(-0.5 * (u * u + v * v) / (s * s))
        for p in range(deg + 1):
            for q in range(deg + 1 - p):
                b = g * (u / s) ** p * (v / s) ** q
                out.append(b / np.sqrt((b * b).sum()))
    basis = np.array(out)
    basis[0] /= basis[0].sum()
    for i in range(1, len(basis)):
        basis[i] -= basis[i].sum() * basis[0]
    return basis


def spatial_terms(x, y, shape, order: int) -> np.ndarray:
    """(n_terms, ...) polynomials of ``order`` in positions scaled to [-1, 1] over the image."""
    ny, nx = shape
    u = (np.asarray(x, float) - (nx - 1) / 2.0) / max((nx - 1) / 2.0, 1.0)
    v = (np.asarray(y, float) - (ny - 1) / 2.0) / max((ny - 1) / 2.0, 1.0)
    return np.array([u ** i * v ** j for n in range(order + 1) for j in range(n + 1) for i in [n - j]])


@dataclass
class KernelSolution:
    basis: np.ndarray  # (n_basis, size, size)
    kernel_coeffs: np.ndarray  # (n_basis, n_spatial): a_b(x) = sum_s c[b, s] P_s(x); row 0 only its constant
    background_coeffs: np.ndarray  # (n_bg,)
    spatial_order: int
    background_order: int
    shape: tuple
    n_stamps: int  # stamps used in the final fit
    n_rejected: int  # stamps rejected as outliers
    chi2_per_pixel: float  # median over the stamps used
    stamp_xy: np.ndarray  # (n, 2) centres of the stamps used

    @property
    def size(self) -> int:
        return self.basis.shape[1]

    def kernel(self, x: float, y: float) -> np.ndarray:
        p = spatial_terms(x, y, self.shape, self.spatial_order)
        a = self.kernel_coeffs @ p
        return np.tensordot(a, self.basis, axes=1)

    def kernel_sum(self) -> float:
        return float(self.kernel_coeffs[0, 0])

    def background(self) -> np.ndarray:
        ny, nx = self.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        p = spatial_terms(xx, yy, self.shape, self.background_order)
        return np.tensordot(self.background_coeffs, p, axes=1)

    def convolve(self, image: np.ndarray, convolved_basis: np.ndarray | None = None) -> np.ndarray:
        """``K(x) * image`` with the spatially varying kernel (no background)."""
        cb = convolve_basis(image, self.basis) if convolved_basis is None else convolved_basis
        ny, nx = self.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        p = spatial_terms(xx, yy, self.shape, self.spatial_order)
        a = np.tensordot(self.kernel_coeffs, p, axes=1)  # (n_basis, ny, nx)
        return np.einsum("bij,bij->ij", a, cb)


def convolve_basis(image: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(n_basis, ny, nx): the image (NaN -> 0) convolved with each basis function (FFT, same size)."""
    im = np.nan_to_num(np.asarray(image, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    h = basis.shape[1] // 2
    ny, nx = im.shape
    fy = 1 << int(math.ceil(math.log2(ny + 2 * h)))
    fx = 1 << int(math.ceil(math.log2(nx + 2 * h)))
    F = np.fft.rfft2(im, s=(fy, fx))
    out = np.empty((len(basis), ny, nx))
    for i, b in enumerate(basis):
        kb = np.fft.rfft2(b, s=(fy, fx))
        full = np.fft.irfft2(F * kb, s=(fy, fx))
        out[i] = full[h:h + ny, h:h + nx]
    return out


def fit_kernel(reference: np.ndarray, target: np.ndarray, variance: np.ndarray, good: np.ndarray,
               positions: np.ndarray, fwhm_ref_px: float, fwhm_target_px: float,
               config: AlardLuptonConfig | None = None, stamp_half: int | None = None
               ) -> tuple[KernelSolution, np.ndarray]:
    """Fit ``target ~ K(x) * reference + B(x)`` on stamps at ``positions`` ((n, 2) x, y).

    ``variance``: the variance of ``target - K * reference`` per pixel (the sum of both, roughly); ``good``: pixels
    usable in the fit. Returns the solution and the basis-convolved reference (reused for the full convolution).
    """
    config = config or AlardLuptonConfig()
    size = kernel_size_for(max(fwhm_ref_px, fwhm_target_px), config)
    sigmas = basis_sigmas(fwhm_target_px, fwhm_ref_px, config)
    basis = gaussian_basis(size, sigmas, config.degrees[:config.n_gauss])
    cb = convolve_basis(reference, basis)
    shape = target.shape
    ny, nx = shape
    h = size // 2
    half = stamp_half if stamp_half is not None else h
    positions = np.asarray(positions, float).reshape(-1, 2)
    stamps = []
    for x, y in positions:
        ix, iy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = ix - half, ix + half + 1, iy - half, iy + half + 1
        if x0 < h or y0 < h or x1 > nx - h or y1 > ny - h:
            continue
        g = good[y0:y1, x0:x1]
        if g.mean() < 0.95:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        sel = g.ravel()
        stamps.append((float(x), float(y), yy.ravel()[sel], xx.ravel()[sel]))
        if len(stamps) >= config.max_stamps:
            break
    if len(stamps) < config.min_stamps:
        raise MatchingError(f"only {len(stamps)} usable kernel stamps (need {config.min_stamps}): too few bright, "
                            "isolated, unsaturated sources with good pixels in both images")
    n_sp = spatial_terms(0.0, 0.0, shape, config.spatial_order).shape[0]
    n_bg = spatial_terms(0.0, 0.0, shape, config.background_order).shape[0]
    nb = len(basis)
    # per stamp: design rows (pixels x parameters), data, weights
    rows = []
    for x, y, yi, xi in stamps:
        w = 1.0 / np.sqrt(np.maximum(variance[yi, xi], 1e-30))
        cols = [cb[0][yi, xi]]
        ps = spatial_terms(xi, yi, shape, config.spatial_order)
        for b in range(1, nb):
            cbv = cb[b][yi, xi]
            cols.extend(cbv * ps[s] for s in range(n_sp))
        pb = spatial_terms(xi, yi, shape, config.background_order)
        cols.extend(pb[t] for t in range(n_bg))
        A = np.array(cols).T * w[:, None]
        rows.append((A, target[yi, xi] * w))
    use = np.ones(len(stamps), bool)
    n_rej = 0
    for it in range(config.max_iterations + 1):
        AtA = sum(rows[i][0].T @ rows[i][0] for i in np.nonzero(use)[0])
        Atb = sum(rows[i][0].T @ rows[i][1] for i in np.nonzero(use)[0])
        scale = np.sqrt(np.maximum(np.diag(AtA), 1e-300))
        try:
            sol = np.linalg.lstsq(AtA / np.outer(scale, scale), Atb / scale, rcond=1e-10)[0] / scale
        except np.linalg.LinAlgError as exc:
            raise MatchingError(f"the kernel's normal equations cannot be solved ({exc})") from None
        chi2 = np.array([np.mean((A @ sol - b) ** 2) for A, b in rows])
        med = np.median(chi2[use])
        sd = 1.4826 * np.median(np.abs(chi2[use] - med))
        bad = use & (chi2 > med + config.clip_sigma * max(sd, 0.05 * med))
        if it == config.max_iterations or not bad.any():
            break
        if use.sum() - bad.sum() < config.min_stamps:
            break
        use &= ~bad
        n_rej += int(bad.sum())
    coeffs = np.zeros((nb, n_sp))
    coeffs[0, 0] = sol[0]
    coeffs[1:] = sol[1:1 + (nb - 1) * n_sp].reshape(nb - 1, n_sp)
    bg = sol[1 + (nb - 1) * n_sp:]
    xy = np.array([(s[0], s[1]) for s, u in zip(stamps, use) if u])
    if not np.all(np.isfinite(sol)) or not sol[0] > 0:
        raise MatchingError(f"the fitted kernel is not usable (kernel sum {sol[0]:.3g})")
    return KernelSolution(basis, coeffs, bg, config.spatial_order, config.background_order, shape, int(use.sum()),
                          n_rej, float(np.median(chi2[use])), xy), cb


def convolve_variance(variance: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The variance of a kernel-weighted sum of independent pixels: ``variance * kernel^2`` (NaN -> 0)."""
    v = np.nan_to_num(np.asarray(variance, np.float64), nan=0.0)
    return signal.fftconvolve(v, kernel * kernel, mode="same")
