"""Exposure: an image with its mask, variance, WCS, PSF, photometric calibration and visit info.

Pixels are 0-based (numpy order ``image[y, x]``); the FITS WCS written to disk follows the FITS 1-based convention,
which astropy converts for us (``wcs.pixel_to_world(x, y)`` takes 0-based pixels).

Units: the image and variance of an eimage/calexp are in electrons (variance in electrons^2); the photometric
calibration converts electrons to nJy (AB: mag = 31.4 - 2.5 log10(flux_nJy)).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .compression import NO_COMPRESSION, Compression, exposure_steps, image_hdu
from .psf import PSF, psf_from_hdus

__all__ = [
    "MASK_PLANES",
    "mask_bit",
    "mask_planes_set",
    "VisitInfo",
    "PhotoCalib",
    "Exposure",
    "ExposureFormatError",
    "AB_ZERO_POINT_NJY",
    "tan_project",
    "tan_deproject",
    "pixel_scale_arcsec",
    "wcs_is_celestial",
]

#: AB magnitude of a flux of 1 nJy: mag = 31.4 - 2.5 log10(flux_nJy).
AB_ZERO_POINT_NJY = 31.4

#: Mask planes and their bit numbers (the DM stack's names).
MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "CR": 2,
    "EDGE": 3,
    "DETECTED": 4,
    "DETECTED_NEGATIVE": 5,
    "INTRP": 6,
    "NO_DATA": 7,
    "SUSPECT": 8,
    "STREAK": 9,
    "INEXACT_PSF": 10,  # coadds: an input covering the pixel was left out there, so the coadd PSF is inexact
}


class ExposureFormatError(ValueError):
    """A FITS file is not a valid twinkles Exposure."""


def mask_bit(*names: str) -> int:
    """Return the OR of the bit values of the named mask planes, e.g. ``mask_bit("SAT", "BAD")``."""
    value = 0
    for name in names:
        try:
            value |= 1 << MASK_PLANES[name]
        except KeyError:
            raise KeyError(f"unknown mask plane {name!r}; known planes: {', '.join(MASK_PLANES)}") from None
    return value


def mask_planes_set(mask_value: int) -> list[str]:
    """Names of the planes set in one mask value."""
    return [name for name, bit in MASK_PLANES.items() if mask_value & (1 << bit)]


@dataclass
class VisitInfo:
    """What is known about the visit an exposure comes from (from the observatory, not the truth)."""

    visit: int
    band: str
    mjd_tai: float  # mid-exposure time, MJD (TAI)
    exp_time_s: float = 30.0  # exposure time, seconds
    airmass: float = 1.0
    seeing_arcsec: float = float("nan")  # FWHM reported by the observatory (effective), arcsec
    sky_level_e: float = float("nan")  # mean sky level, electrons per pixel
    detector: int = 0
    pixel_scale_arcsec: float = 0.2
    boresight_ra_deg: float = float("nan")
    boresight_dec_deg: float = float("nan")
    rot_sky_pos_deg: float = 0.0

    _KEYS = {
        "visit": "VISIT",
        "band": "BAND",
        "mjd_tai": "MJD-AVG",
        "exp_time_s": "EXPTIME",
        "airmass": "AIRMASS",
        "seeing_arcsec": "SEEING",
        "sky_level_e": "SKYLEVEL",
        "detector": "DETECTOR",
        "pixel_scale_arcsec": "PIXSCALE",
        "boresight_ra_deg": "BORE-RA",
        "boresight_dec_deg": "BORE-DEC",
        "rot_sky_pos_deg": "ROTPA",
    }

    def __eq__(self, other) -> bool:
        """Field by field, an unknown (NaN) value equal to an unknown one: a VisitInfo read back from its header
        equals the one written (dataclass equality compares NaN fields unequal from Python 3.13 on)."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
                   for a, b in ((getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    __hash__ = None  # mutable, as the dataclass was

    def to_header(self, header: fits.Header) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                continue
            header[self._KEYS[f.name]] = value

    @classmethod
    def from_header(cls, header: fits.Header) -> VisitInfo | None:
        if "VISIT" not in header or "BAND" not in header or "MJD-AVG" not in header:
            return None
        kwargs = {}
        for f in fields(cls):
            key = cls._KEYS[f.name]
            if key in header:
                kwargs[f.name] = header[key]
        kwargs["visit"] = int(kwargs["visit"])
        kwargs["detector"] = int(kwargs.get("detector", 0))
        kwargs["band"] = str(kwargs["band"])
        for name in ("mjd_tai", "exp_time_s", "airmass", "seeing_arcsec", "sky_level_e", "pixel_scale_arcsec",
                     "boresight_ra_deg", "boresight_dec_deg", "rot_sky_pos_deg"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        return cls(**kwargs)


@dataclass
class PhotoCalib:
    """Photometric calibration: flux_nJy = counts_electrons * njy_per_electron.

    ``zero_point`` is the AB magnitude of one electron: zp = 31.4 - 2.5 log10(njy_per_electron); then
    mag = zp - 2.5 log10(counts).
    """

    njy_per_electron: float
    njy_per_electron_err: float = 0.0

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        c = 10.0 ** (-0.4 * (zero_point - AB_ZERO_POINT_NJY))
        return cls(c, c * 0.4 * math.log(10.0) * zero_point_err)

    @property
    def zero_point(self) -> float:
        return AB_ZERO_POINT_NJY - 2.5 * math.log10(self.njy_per_electron)

    def to_njy(self, counts, counts_err=None):
        """Convert electrons (and their errors) to nJy; returns flux or (flux, err)."""
        flux = np.asarray(counts, dtype=float) * self.njy_per_electron
        if counts_err is None:
            return flux
        return flux, np.asarray(counts_err, dtype=float) * self.njy_per_electron

    def to_header(self, header: fits.Header) -> None:
        header["NJYPERE"] = (self.njy_per_electron, "nJy per electron")
        header["NJYPEERR"] = (self.njy_per_electron_err, "error on NJYPERE")
        header["MAGZERO"] = (self.zero_point, "AB mag of 1 electron")

    @classmethod
    def from_header(cls, header: fits.Header) -> PhotoCalib | None:
        if "NJYPERE" not in header:
            return None
        return cls(float(header["NJYPERE"]), float(header.get("NJYPEERR", 0.0)))


def _quiet_wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def wcs_to_header(wcs: WCS) -> fits.Header:
    """The FITS header cards of a WCS, with SIP terms when it has them."""
    return wcs.to_header(relax=True)


def tan_project(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float):
    """Gnomonic projection: (xi, eta) in degrees (xi towards east, eta towards north) about (ra0, dec0)."""
    ra, dec = np.radians(np.asarray(ra_deg, dtype=float)), np.radians(np.asarray(dec_deg, dtype=float))
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    cosc = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi_deg, eta_deg, ra0_deg: float, dec0_deg: float):
    """Inverse of :func:`tan_project`: (ra, dec) in degrees."""
    xi, eta = np.radians(np.asarray(xi_deg, dtype=float)), np.radians(np.asarray(eta_deg, dtype=float))
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * math.sin(dec0) + np.where(rho > 0, eta * np.sin(c) * math.cos(dec0) / rho, 0))
        ra = ra0 + np.arctan2(xi * np.sin(c), rho * math.cos(dec0) * np.cos(c) - eta * math.sin(dec0) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Pixel scale (arcsec per pixel) of a celestial WCS at its reference point: the square root of the projected
    pixel area (``astropy.wcs.utils.proj_plane_pixel_area``), so a rotated or skewed CD matrix gives the scale of
    a square pixel of the same area."""
    from astropy.wcs.utils import proj_plane_pixel_area
    return float(np.sqrt(proj_plane_pixel_area(wcs)) * 3600.0)


def wcs_is_celestial(wcs: WCS | None) -> bool:
    return wcs is not None and wcs.has_celestial and wcs.naxis == 2


@dataclass
class Exposure:
    """An image (electrons) with mask, variance and everything needed to interpret it."""

    image: np.ndarray
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None
    wcs: WCS | None = None
    psf: PSF | None = None
    photo_calib: PhotoCalib | None = None
    visit_info: VisitInfo | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"Exposure image must be 2-d, got shape {self.image.shape}")
        if self.mask is None:
            self.mask = np.zeros(self.image.shape, dtype=np.int32)
        else:
            self.mask = np.asarray(self.mask, dtype=np.int32)
        if self.variance is None:
            self.variance = np.ones(self.image.shape, dtype=np.float32)
        else:
            self.variance = np.asarray(self.variance, dtype=np.float32)
        for name in ("mask", "variance"):
            if getattr(self, name).shape != self.image.shape:
                raise ValueError(f"Exposure {name} shape {getattr(self, name).shape} != image shape "
                                 f"{self.image.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    def copy(self) -> Exposure:
        return Exposure(self.image.copy(), self.mask.copy(), self.variance.copy(),
                        None if self.wcs is None else self.wcs.deepcopy(), self.psf, self.photo_calib,
                        self.visit_info, dict(self.metadata))

    # ---------------------------------------------------------------- FITS I/O
    def to_hdulist(self, compression: Compression | None = None) -> fits.HDUList:
        """The Exposure as FITS HDUs: an empty primary (visit info, calibration, metadata), IMAGE (with the WCS),
        MASK, VARIANCE and the PSF's HDUs. ``compression`` (:class:`~twinkles.compression.Compression`; None:
        uncompressed) ``lossy`` makes the three planes tile-compressed extensions (lossless masks, quantized
        floats); the PSF HDUs are left as they are. (``lossless`` files are written by the repository through
        fitsio from the uncompressed HDUs.)"""
        compression = compression or NO_COMPRESSION
        primary = fits.PrimaryHDU()
        hdr = primary.header
        if self.visit_info is not None:
            self.visit_info.to_header(hdr)
        if self.photo_calib is not None:
            self.photo_calib.to_header(hdr)
        for key, value in self.metadata.items():
            _put_metadata(hdr, key, value)
        image_hdr = wcs_to_header(self.wcs) if self.wcs is not None else fits.Header()
        if self.photo_calib is not None:  # PhotoCalib(1.0): already in nJy (warps, coadds)
            image_hdr["BUNIT"] = "nJy" if self.photo_calib.njy_per_electron == 1.0 else "electron"
        mask_hdr = fits.Header()
        for name, bit in MASK_PLANES.items():
            mask_hdr[f"HIERARCH MP_{name}"] = bit
        step_image = step_var = None
        if compression.mode == "lossy":
            step_image, step_var = exposure_steps(self.variance)
        hdus = [primary,
                image_hdu(self.image, "IMAGE", image_hdr, compression, step_image),
                image_hdu(self.mask, "MASK", mask_hdr, compression),
                image_hdu(self.variance, "VARIANCE", None, compression, step_var)]
        if self.psf is not None:
            hdus.extend(self.psf.to_hdus())
        return fits.HDUList(hdus)

    def write_fits(self, path: str | Path) -> None:
        """Write as multi-extension FITS to any path (not atomic: datasets go through Repository.put/write)."""
        self.to_hdulist().writeto(path, overwrite=True, checksum=True)

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList, source: str = "<memory>") -> Exposure:
        names = [h.name for h in hdul]
        if "IMAGE" not in names:
            raise ExposureFormatError(f"{source}: no IMAGE extension (extensions: {names})")
        img_hdu = hdul["IMAGE"]
        image = np.array(img_hdu.data, dtype=np.float32)
        mask = np.array(hdul["MASK"].data, dtype=np.int32) if "MASK" in names else None
        variance = np.array(hdul["VARIANCE"].data, dtype=np.float32) if "VARIANCE" in names else None
        wcs = _quiet_wcs(img_hdu.header) if "CTYPE1" in img_hdu.header else None
        hdr = hdul[0].header
        psf = psf_from_hdus(hdul)
        metadata = {}
        for card in hdr.cards:
            if card.keyword.startswith("META "):
                metadata[card.keyword[5:].lower()] = card.value
        return cls(image, mask, variance, wcs, psf, PhotoCalib.from_header(hdr), VisitInfo.from_header(hdr),
                   metadata)

    @classmethod
    def read_fits(cls, path: str | Path) -> Exposure:
        try:
            # memory-mapped: from_hdulist copies every plane into native-endian arrays, so nothing refers to the
            # map once the file is closed; it saves reading the file into a buffer first (~0.5 s on a 4k image)
            with fits.open(path, memmap=True) as hdul:
                return cls.from_hdulist(hdul, str(path))
        except (OSError, ValueError) as exc:
            if isinstance(exc, ExposureFormatError):
                raise
            raise ExposureFormatError(f"{path}: cannot read as an Exposure ({exc}); the file may be corrupt or "
                                      "truncated: remove it and re-run the job that made it") from exc


def _put_metadata(header: fits.Header, key: str, value) -> None:
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            value = str(float(value))
        header[f"HIERARCH META {key.upper()}"] = value.item() if hasattr(value, "item") else value
