"""Decorrelation of an Alard-Lupton difference image (DM ip_diffim ``DecorrelateALKernelTask``; Kaiser 2004,
Reiss & Lupton 2016, DMTN-021).

A difference ``D = T - kappa * R`` of two images with white noise of variances ``s_T^2`` and ``s_R^2`` has the
noise power spectrum ``s_T^2 + s_R^2 |kappa^(k)|^2``: its noise is correlated (smoother than white), so a variance
plane of ``s_T^2 + s_R^2 (sum kappa)^2`` per pixel is not the variance of sums of pixels (PSF fluxes, detection).
The filter

    phi^(k) = sqrt((s_T^2 + s_R^2 (sum kappa)^2) / (s_T^2 + s_R^2 |kappa^(k)|^2))

whitens it (``phi^(0) = 1``: fluxes are kept); the PSF of the decorrelated difference is ``phi * PSF_T``. Pure
functions of arrays.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

__all__ = ["decorrelation_kernel", "decorrelate"]


def decorrelation_kernel(kappa: np.ndarray, var_target: float, var_reference: float, size: int | None = None
                         ) -> np.ndarray:
    """The real-space decorrelation kernel (odd ``size`` x ``size``, default 2 x kappa's, sum 1)."""
    k = np.asarray(kappa, float)
    n = k.shape[0]
    size = int(size or (2 * n + 1))
    size += 1 - size % 2
    big = 1 << int(math.ceil(math.log2(2 * max(n, size) + 1)))
    pad = np.zeros((big, big))
    c = big // 2
    h = n // 2
    pad[c - h:c + h + 1, c - h:c + h + 1] = k
    K = np.fft.fft2(np.fft.ifftshift(pad))
    ksum = k.sum()
    phi = np.sqrt((var_target + var_reference * ksum ** 2) / (var_target + var_reference * np.abs(K) ** 2))
    real = np.fft.fftshift(np.real(np.fft.ifft2(phi)))
    hs = size // 2
    out = real[c - hs:c + hs + 1, c - hs:c + hs + 1]
    return out / out.sum()


def decorrelate(image: np.ndarray, kernel: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``image`` convolved with the decorrelation kernel, invalid pixels as 0 (they are masked afterwards)."""
    im = np.where(valid, np.nan_to_num(np.asarray(image, np.float64), nan=0.0), 0.0)
    return signal.fftconvolve(im, kernel, mode="same")
