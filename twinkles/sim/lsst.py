"""LSST photometric and image-quality numbers per band, and the formulas that use them.

Source of every number: SMTN-002 "Calculating LSST limiting magnitudes and SNR" (https://smtn-002.lsst.io,
throughputs syseng_throughputs v1.9), which updates Ivezic et al. 2019 (ApJ 873, 111) Table 2:

* ``ZP_1S``: instrumental zero point, AB mag giving 1 electron/s (total system incl. the X=1.2 standard atmosphere);
* ``DARK_SKY``: zenith dark-sky brightness, mag/arcsec^2;
* ``FWHM_EFF_MEDIAN``: median FWHMeff at zenith, arcsec;
* ``M5_DARK``: 5-sigma point-source depth of a 30 s visit, dark sky, zenith;
* ``CM``, ``DCM_INF``, ``K_ATM``: OpSim's m5 formula coefficients and the extinction per airmass (mag);
* ``LAMBDA_EFF_NM``: effective wavelengths;
* system seeing contributions telSeeing=0.25", opticalDesign=0.08", cameraSeeing=0.30";
* instrumental noise 9 e- per exposure (read noise + dark), LSE-59 CAM-REQ-0020.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BANDS", "ZP_1S", "DARK_SKY", "FWHM_EFF_MEDIAN", "M5_DARK", "CM", "DCM_INF", "K_ATM",
           "LAMBDA_EFF_NM", "READ_NOISE_E", "fwhm_sys", "fwhm_eff_from_atm", "fwhm_atm_from_eff",
           "fwhm_geom_from_eff", "opsim_m5", "zero_point", "sky_electrons_per_pixel", "m5_from_noise",
           "mag_to_njy", "njy_to_mag", "electrons_to_njy_factor"]

BANDS = "ugrizy"
ZP_1S = {"u": 26.50, "g": 28.30, "r": 28.13, "i": 27.79, "z": 27.40, "y": 26.58}
DARK_SKY = {"u": 22.95, "g": 22.24, "r": 21.20, "i": 20.47, "z": 19.60, "y": 18.63}
FWHM_EFF_MEDIAN = {"u": 0.92, "g": 0.87, "r": 0.83, "i": 0.80, "z": 0.78, "y": 0.76}
M5_DARK = {"u": 23.60, "g": 24.83, "r": 24.38, "i": 23.92, "z": 23.35, "y": 22.44}
CM = {"u": 22.91, "g": 24.45, "r": 24.46, "i": 24.33, "z": 24.17, "y": 23.71}
DCM_INF = {"u": 0.57, "g": 0.12, "r": 0.06, "i": 0.05, "z": 0.03, "y": 0.02}
K_ATM = {"u": 0.50, "g": 0.21, "r": 0.13, "i": 0.10, "z": 0.07, "y": 0.18}
LAMBDA_EFF_NM = {"u": 366.0, "g": 482.0, "r": 622.0, "i": 754.0, "z": 869.0, "y": 971.0}
READ_NOISE_E = 9.0  # total instrumental noise per exposure, electrons (SMTN-002, LSE-59)
TEL_SEEING, OPTICAL_DESIGN, CAMERA_SEEING = 0.25, 0.08, 0.30  # arcsec (SMTN-002)
STANDARD_AIRMASS = 1.2  # airmass of the atmosphere included in ZP_1S (syseng_throughputs atmos_std)
AB_NJY = 31.4  # AB mag of 1 nJy


def mag_to_njy(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_NJY))


def njy_to_mag(flux_njy):
    with np.errstate(divide="ignore", invalid="ignore"):
        return AB_NJY - 2.5 * np.log10(np.asarray(flux_njy, dtype=float))


def fwhm_sys(airmass: float) -> float:
    """System (telescope + optics + camera) FWHM contribution in arcsec at airmass X (SMTN-002)."""
    return math.sqrt((TEL_SEEING * airmass ** 0.6) ** 2 + OPTICAL_DESIGN ** 2 + CAMERA_SEEING ** 2)


def fwhm_eff_from_atm(fwhm_500_arcsec: float, band: str, airmass: float) -> float:
    """FWHMeff (arcsec) from the zenith atmospheric FWHM at 500 nm (SMTN-002: OpSim's seeing model)."""
    atm = fwhm_500_arcsec * (500.0 / LAMBDA_EFF_NM[band]) ** 0.3 * airmass ** 0.6
    return 1.16 * math.sqrt(fwhm_sys(airmass) ** 2 + 1.04 * atm ** 2)


def fwhm_atm_from_eff(fwhm_eff_arcsec: float, airmass: float) -> float:
    """Invert FWHMeff = 1.16 sqrt(sys^2 + 1.04 atm^2) for the atmospheric FWHM (arcsec) at this airmass."""
    val = ((fwhm_eff_arcsec / 1.16) ** 2 - fwhm_sys(airmass) ** 2) / 1.04
    return math.sqrt(max(val, 0.05 ** 2))


def fwhm_geom_from_eff(fwhm_eff_arcsec):
    """FWHMgeom = 0.822 FWHMeff + 0.052 (SMTN-002): the physical FWHM of the PSF."""
    return 0.822 * fwhm_eff_arcsec + 0.052


def opsim_m5(band: str, sky_mag: float, fwhm_eff: float, exptime_s: float, airmass: float) -> float:
    """OpSim's 5-sigma depth formula (SMTN-002 "Calculating m5 values in the LSST Operations Simulator")."""
    tscale = exptime_s / 30.0 * 10.0 ** (-0.4 * (sky_mag - DARK_SKY[band]))
    dcm = DCM_INF[band] - 1.25 * math.log10(1 + (10 ** (0.8 * DCM_INF[band]) - 1) / tscale)
    return (CM[band] + dcm + 0.50 * (sky_mag - 21.0) + 2.5 * math.log10(0.7 / fwhm_eff)
            + 1.25 * math.log10(exptime_s / 30.0) - K_ATM[band] * (airmass - 1.0))


def zero_point(band: str, exptime_s: float, airmass: float, cloud_mag: float = 0.0) -> float:
    """AB mag of one electron in a visit: ZP_1s + 2.5 log10(t) - k (X - 1.2) - grey cloud extinction."""
    return (ZP_1S[band] + 2.5 * math.log10(exptime_s) - K_ATM[band] * (airmass - STANDARD_AIRMASS)
            - cloud_mag)


def electrons_to_njy_factor(zp: float) -> float:
    """nJy per electron for a zero point zp (AB mag of 1 electron): 10**(-0.4 (zp - 31.4))."""
    return 10.0 ** (-0.4 * (zp - AB_NJY))


def sky_electrons_per_pixel(band: str, sky_mag: float, exptime_s: float, pixel_scale_arcsec: float) -> float:
    """Sky background in electrons/pixel. The sky is seen through the hardware only (SMTN-002 footnote), so the
    standard atmosphere's extinction is taken back out of ZP_1S."""
    zp_hw = ZP_1S[band] + K_ATM[band] * STANDARD_AIRMASS
    return 10.0 ** (-0.4 * (sky_mag - zp_hw)) * exptime_s * pixel_scale_arcsec ** 2


def m5_from_noise(zp: float, sky_e: float, read_noise_e: float, n_eff_pix: float) -> float:
    """5-sigma depth of PSF photometry: the source counts S with S/N = 5, S = 5 sqrt(S + (B + RN^2) n_eff)."""
    v = (sky_e + read_noise_e ** 2) * n_eff_pix
    s = (25.0 + math.sqrt(625.0 + 100.0 * v)) / 2.0
    return zp - 2.5 * math.log10(s)
