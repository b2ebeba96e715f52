"""Synthetic inputs for the resampling tests: TAN / TAN-SIP WCSs and noise-free star fields drawn with GalSim."""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS, Sip

from twinkles.image import Exposure, PhotoCalib, VisitInfo
from twinkles.psf import GaussianPSF

RA0, DEC0 = 53.0091, -27.4389


def make_wcs(ra=RA0, dec=DEC0, crpix=(256.5, 256.5), scale_arcsec=0.2, rot_deg=0.0, sip=False) -> WCS:
    """TAN (or TAN-SIP with a ~0.5 px quadratic distortion at the corners of a 512 px image) WCS."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix)
    s = scale_arcsec / 3600.0
    c, sn = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    w.wcs.cd = [[-s * c, s * sn], [s * sn, s * c]]
    if sip:
        a = np.zeros((3, 3))
        b = np.zeros((3, 3))
        a[2, 0], a[1, 1], a[0, 2] = 4e-6, -2e-6, 1e-6
        b[2, 0], b[1, 1], b[0, 2] = -1e-6, 3e-6, 2e-6
        w.sip = Sip(a, b, None, None, list(crpix))
    w.wcs.set()
    return w


def star_field(wcs: WCS, shape, ra, dec, flux, sigma_arcsec=0.34, e1=0.0, e2=0.0, noise_sigma=0.0, seed=1):
    """Image (electrons) of point sources at (ra, dec) drawn exactly (pixel-integrated) with GalSim, through the
    local affine approximation of ``wcs`` at each star (so SIP distortion and rotation are in the stamp)."""
    import galsim
    ny, nx = shape
    image = galsim.ImageD(nx, ny)
    x, y = wcs.all_world2pix(ra, dec, 0)
    prof = galsim.Gaussian(sigma=sigma_arcsec).shear(e1=e1, e2=e2) if (e1 or e2) else \
        galsim.Gaussian(sigma=sigma_arcsec)
    for xi, yi, f in zip(x, y, flux):
        # local Jacobian d(arcsec)/d(pixel) from the WCS (east = -RA direction on the sky)
        h = 0.5
        r, d = wcs.all_pix2world([xi + h, xi - h, xi, xi], [yi, yi, yi + h, yi - h], 0)
        cosd = math.cos(math.radians(dec[0]))
        dudx = -(r[0] - r[1]) * cosd * 3600 / (2 * h)
        dudy = -(r[2] - r[3]) * cosd * 3600 / (2 * h)
        dvdx = (d[0] - d[1]) * 3600 / (2 * h)
        dvdy = (d[2] - d[3]) * 3600 / (2 * h)
        # GalSim's JacobianWCS maps image (x, y) to world (u, v) with u towards... we use u = -east (west) so that
        # the handedness matches a standard north-up east-left image; only the shape and flux matter here
        jac = galsim.JacobianWCS(-dudx, -dudy, dvdx, dvdy)
        stamp = (prof * f).drawImage(nx=41, ny=41, wcs=jac, center=galsim.PositionD(xi + 1, yi + 1))
        b = stamp.bounds & image.bounds
        if b.isDefined():
            image[b] += stamp[b]
    arr = image.array.astype(np.float64)
    if noise_sigma:
        arr = arr + np.random.default_rng(seed).normal(0, noise_sigma, arr.shape)
    return arr


def exposure(wcs, image, variance=None, psf_fwhm_px=None, njy=1.0, visit=1):
    var = np.full(image.shape, 1.0, np.float32) if variance is None else variance
    psf = GaussianPSF(psf_fwhm_px, 31) if psf_fwhm_px else None
    return Exposure(image, None, var, wcs, psf, PhotoCalib(njy), VisitInfo(visit=visit, band="r", mjd_tai=60000.0))
