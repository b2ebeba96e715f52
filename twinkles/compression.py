"""Tile compression of image planes on disk (FITS tiled-image convention, as fpack and the DM stack write them).

Every image plane of an Exposure, and every ImageF, is written as a tile-compressed FITS extension that astropy,
fitsio (cfitsio) and ds9 read as they are. Three modes (``storage.compression`` in ``twinkles.yaml``):

* ``lossy`` (default): integer planes (the mask) RICE-compressed, lossless and bit-identical; float planes
  quantized to integers with subtractive dithering (``SUBTRACTIVE_DITHER_1``) and RICE-compressed. The
  quantization step ``q`` is fixed per plane from the noise the Exposure itself records (its variance plane):
  ``q_image = sigma_floor / 16`` with ``sigma_floor = sqrt(V_1%)`` (the 1st percentile of the finite positive
  variance), so every pixel's error is at most ``q/2 <= sigma/32`` (RMS ``q/sqrt(12) ~ 0.018 sigma``; the added
  noise is ``q^2/12 < 0.03%`` of the variance) wherever the variance is above ``V_1%/4``. The variance plane is
  quantized at ``q_var = min(noise_V / 16, V_1% / 1024)`` -- 1/16 of its own pixel-to-pixel noise (``noise_V``, a
  robust estimate from neighbouring pixels), never coarser than 1/1024 of the variance (relative error < 0.05%).
  A fixed step skips cfitsio's per-tile noise estimate (about 0.4 CPU-s per 4k plane) and is at most what the
  estimate would give where the noise is lowest. A float image without a variance (ImageF) uses cfitsio's own
  per-tile noise estimate at ``q = sigma_tile / 16`` (fpack's default), or, when every value is an integer (a
  count such as ``deepCoadd_nImage``), is stored losslessly (as in ``lossless``).
  The dither seed (1..10000, the convention's ``ZDITHER0``) comes from the dataset type and data ID, so
  re-running a job writes identical files.
* ``lossless``: masks RICE, float planes GZIP_2 (byte-shuffled gzip, exact), written through fitsio (cfitsio):
  astropy's GZIP tiles go through Python's ``gzip`` at level 9 (~9 CPU-s per 4k float plane, 5x cfitsio's) and
  carry the time of writing, so a re-run would not write the same bytes
  (:func:`twinkles.repo.storage._write_fits_lossless`).
* ``none``: plain uncompressed image extensions.

Tiles are 16 rows of the full width (larger tiles than fpack's single rows: the same size on disk, ~35% less CPU
in astropy, which handles each tile in turn).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

__all__ = ["Compression", "COMPRESSION_MODES", "is_integer_valued", "dither_seed_for", "image_hdu",
           "noise_floor_variance",
           "plane_noise", "NO_COMPRESSION"]

COMPRESSION_MODES = ("lossy", "lossless", "none")
#: quantization step as a fraction of the noise (fpack's and DM's -q 16 ~ sigma/16)
QUANTIZE_FRACTION = 1.0 / 16.0
#: the variance plane's step is never coarser than this fraction of the variance
VARIANCE_RELATIVE_STEP = 1.0 / 1024.0
TILE_ROWS = 16


@dataclass(frozen=True)
class Compression:
    """How one dataset's image planes are written: ``mode`` (lossy | lossless | none) and the dither seed."""

    mode: str = "lossy"
    dither_seed: int = 1  # 1..10000 (FITS ZDITHER0)

    def __post_init__(self):
        if self.mode not in COMPRESSION_MODES:
            raise ValueError(f"compression mode {self.mode!r}: use one of {', '.join(COMPRESSION_MODES)}")
        if not 1 <= int(self.dither_seed) <= 10000:
            raise ValueError(f"dither seed {self.dither_seed}: must be 1..10000")


NO_COMPRESSION = Compression("none")


def dither_seed_for(text: str) -> int:
    """A dither seed in 1..10000 fixed by ``text`` (e.g. ``"calexp visit=840 detector=0"``)."""
    return 1 + zlib.crc32(text.encode()) % 10000


def _sample(a: np.ndarray, max_pixels: int = 1 << 18) -> np.ndarray:
    """A regular subsample of a 2-d array of at most ~``max_pixels`` pixels (statistics without a full pass)."""
    stride = max(1, int(math.sqrt(a.size / max_pixels)))
    return a[::stride, ::stride]


def noise_floor_variance(variance: np.ndarray) -> float | None:
    """The 1st percentile of the finite positive values of a variance plane (on a subsample), or None."""
    v = _sample(np.asarray(variance))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    return float(np.percentile(v, 1.0))


def plane_noise(plane: np.ndarray) -> float:
    """Robust pixel-to-pixel noise of a plane: 1.4826 MAD of horizontal neighbour differences / sqrt(2), on a
    subsample of rows (the estimator of cfitsio's ``noise2``, global rather than per tile)."""
    a = np.asarray(plane)
    rows = a[:: max(1, a.shape[0] // 256)]
    d = np.diff(rows.astype(np.float64), axis=1).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def _tile(shape) -> tuple[int, int]:
    return (min(TILE_ROWS, shape[0]), shape[1])


def is_integer_valued(data: np.ndarray) -> bool:
    """Whether every finite value is an integer (counts stored as floats)."""
    s = _sample(data)
    if not np.array_equal(s, np.round(s)):
        return False
    finite = np.isfinite(data)
    return bool(np.array_equal(data[finite], np.round(data[finite])))


def image_hdu(data: np.ndarray, name: str | None, header: fits.Header | None, compression: Compression,
              step: float | None = None, primary: bool = False):
    """One image plane as an HDU written as ``compression`` says.

    ``step``: the quantization step of a lossy float plane (None: cfitsio's per-tile estimate at sigma/16).
    ``primary``: for mode ``none``, make a PrimaryHDU (a compressed image always goes into an extension, as the
    tiled-image convention requires; the readers find it by name).
    """
    data = np.asarray(data)
    if compression.mode == "none":
        if primary:
            return fits.PrimaryHDU(data, header=header)
        return fits.ImageHDU(data, header=header, name=name)
    kwargs = {"tile_shape": _tile(data.shape)}
    if compression.mode == "lossless":
        raise ValueError("image_hdu: lossless planes are written by twinkles.repo.storage through fitsio")
    if data.dtype.kind in "iu":
        kwargs["compression_type"] = "RICE_1"
    else:
        if step is not None and not (math.isfinite(step) and step > 0):
            step = None
        kwargs.update(compression_type="RICE_1",
                      quantize_level=(-step if step is not None else 1.0 / QUANTIZE_FRACTION),
                      quantize_method=1,  # SUBTRACTIVE_DITHER_1
                      dither_seed=int(compression.dither_seed))
    return fits.CompImageHDU(data, header=header, name=name or "IMAGE", **kwargs)


def exposure_steps(variance: np.ndarray) -> tuple[float | None, float | None]:
    """Quantization steps (image plane, variance plane) of an Exposure from its variance plane (see the module
    docstring); (None, None) when the variance has no finite positive value (cfitsio's estimate is used)."""
    v_floor = noise_floor_variance(variance)
    if v_floor is None:
        return None, None
    step_image = math.sqrt(v_floor) * QUANTIZE_FRACTION
    noise_v = plane_noise(variance)
    step_var = v_floor * VARIANCE_RELATIVE_STEP
    if noise_v > 0:
        step_var = min(step_var, noise_v * QUANTIZE_FRACTION)
    return step_image, step_var
