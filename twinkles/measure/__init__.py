"""Measurement algorithms shared by every stage: centroid, PSF flux, aperture flux, moments, flags.

Pure functions of arrays (image, variance, mask), a PSF and positions; no I/O. Vectorised over sources.
"""

from .centroid import windowed_centroid
from .flags import pixel_flags
from .kron import kron_flux, moment_ellipse
from .moments import adaptive_moments, moments_from_stamps, moments_to_fwhm
from .photometry import APERTURE_RADII, aperture_column, aperture_fluxes, forced_psf_flux, psf_flux
from .source import MeasurementConfig, apply_calibration, extendedness, measure_sources
from ..stamps import PsfStamps, extract_stamps

__all__ = ["windowed_centroid", "pixel_flags", "adaptive_moments", "moments_from_stamps", "moments_to_fwhm",
           "APERTURE_RADII", "aperture_column", "aperture_fluxes", "forced_psf_flux", "psf_flux",
           "MeasurementConfig", "apply_calibration", "extendedness", "measure_sources", "PsfStamps",
           "extract_stamps", "kron_flux", "moment_ellipse"]
