"""Tiny synthetic e-images drawn with GalSim, for unit tests of the process_eimage algorithms and measurement.

``make_field`` draws stars (Kolmogorov PSF whose FWHM and shape vary across the sensor) and exponential galaxies
on a sky background with Poisson and read noise, optional cosmic rays and a saturated star with a bleed trail,
and returns the eimage-like :class:`~twinkles.image.Exposure` (header WCS perturbed from the true one), the truth
table and a reference catalog of the stars (fluxes in nJy, positions with errors). Only tests use this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from twinkles.image import Exposure, VisitInfo

PIXEL_SCALE = 0.2  # arcsec / pixel
RA0, DEC0 = 53.0091, -27.4389


def tan_wcs(nx: int, ny: int, ra: float = RA0, dec: float = DEC0, rot_deg: float = 0.0,
            scale_arcsec: float = PIXEL_SCALE) -> WCS:
    """A TAN WCS with the tangent point at the image centre (0-based pixel (nx-1)/2, (ny-1)/2)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx - 1) / 2 + 1, (ny - 1) / 2 + 1]
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    d = scale_arcsec / 3600.0
    w.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    return w


@dataclass
class SyntheticField:
    exposure: Exposure
    truth: Table  # id, type, x, y (0-based), ra, dec, flux_e (electrons), flux_njy
    ref_cat: Table  # id, coord_ra, coord_dec, coord_raErr, coord_decErr, g/r/i _flux, _fluxErr (nJy)
    true_wcs: WCS
    zero_point: float  # AB mag of 1 electron
    fwhm_at: callable  # fwhm_at(x, y) -> true PSF FWHM (pixels)
    psf_at: callable  # psf_at(x, y) -> galsim GSObject (arcsec units)
    cr_mask: np.ndarray  # True where a cosmic ray was added


def make_field(nx: int = 512, ny: int = 512, n_stars: int = 150, n_galaxies: int = 100, seed: int = 1,
               fwhm_arcsec: float = 0.75, fwhm_gradient: float = 0.06, shape_g: float = 0.02,
               sky_e: float = 800.0, read_noise_e: float = 8.0, zero_point: float = 32.0,
               mag_range=(16.5, 24.0), galaxy_mag_range=(20.0, 25.0), n_cosmic_rays: int = 0,
               saturated_star: bool = False,
               saturation_e: float = 120000.0, wcs_offset_arcsec=(0.0, 0.0), wcs_rot_deg: float = 0.0,
               visit: int = 1, band: str = "r", ref_pos_err_mas: float = 5.0, noise: bool = True
               ) -> SyntheticField:
    rng = np.random.default_rng(seed)
    gs_rng = galsim.BaseDeviate(seed)
    true_wcs = tan_wcs(nx, ny, rot_deg=0.3)
    image = galsim.ImageF(nx, ny, scale=PIXEL_SCALE)  # bounds 1..n; GalSim position = 0-based + 1
    image.array[:] = 0.0
    cx, cy = (nx - 1) / 2, (ny - 1) / 2

    def fwhm_at(x, y):
        return fwhm_arcsec / PIXEL_SCALE * (1.0 + fwhm_gradient * ((x - cx) / nx + 0.5 * (y - cy) / ny))

    def psf_at(x, y):
        g1 = shape_g * (x - cx) / nx * 2
        g2 = shape_g * 0.5
        return galsim.Kolmogorov(fwhm=fwhm_at(x, y) * PIXEL_SCALE).shear(g1=g1, g2=g2)

    rows = []
    margin = 3
    n_total = n_stars + n_galaxies
    xs = rng.uniform(margin, nx - 1 - margin, n_total)
    ys = rng.uniform(margin, ny - 1 - margin, n_total)
    # star magnitudes: rising counts towards faint; galaxies fainter on average
    u = rng.uniform(size=n_total)
    lo, hi = mag_range
    mags = lo + (hi - lo) * np.sqrt(u)
    glo, ghi = galaxy_mag_range
    mags[n_stars:] = glo + (ghi - glo) * np.sqrt(u[n_stars:])
    for i in range(n_total):
        kind = "star" if i < n_stars else "galaxy"
        flux_e = 10 ** (-0.4 * (mags[i] - zero_point))
        psf = psf_at(xs[i], ys[i])
        if kind == "star":
            prof = psf.withFlux(flux_e)
            stamp = 41
        else:
            hlr = rng.uniform(0.3, 1.0)
            gal = galsim.Exponential(half_light_radius=hlr).shear(g1=rng.uniform(-0.3, 0.3),
                                                                 g2=rng.uniform(-0.3, 0.3))
            prof = galsim.Convolve(gal, psf).withFlux(flux_e)
            stamp = 61
        bounds = galsim.BoundsI(int(round(xs[i])) + 1 - stamp // 2, int(round(xs[i])) + 1 + stamp // 2,
                                int(round(ys[i])) + 1 - stamp // 2, int(round(ys[i])) + 1 + stamp // 2)
        b = bounds & image.bounds
        if not b.isDefined():
            continue
        sub = image[b]
        prof.drawImage(sub, add_to_image=True, center=galsim.PositionD(xs[i] + 1, ys[i] + 1))
        rows.append((i + 1, kind, xs[i], ys[i], flux_e))
    truth = Table(rows=rows, names=("id", "type", "x", "y", "flux_e"))
    sky = true_wcs.pixel_to_world_values(truth["x"], truth["y"])
    truth["ra"], truth["dec"] = sky[0], sky[1]
    njy_per_e = 10 ** (-0.4 * (zero_point - 31.4))
    truth["flux_njy"] = truth["flux_e"] * njy_per_e

    if saturated_star:
        x0, y0 = nx * 0.3, ny * 0.6
        psf = psf_at(x0, y0)
        flux_e = 4e7
        psf.withFlux(flux_e).drawImage(image[galsim.BoundsI(int(x0) - 40, int(x0) + 40, int(y0) - 40,
                                                            int(y0) + 40) & image.bounds],
                                       add_to_image=True, center=galsim.PositionD(x0 + 1, y0 + 1))
    expected = image.array.astype(np.float64) + sky_e
    if noise:
        data = rng.poisson(np.clip(expected, 0, None)).astype(np.float64)
        data += rng.normal(0.0, read_noise_e, data.shape)
    else:
        data = expected.copy()
    variance = expected + read_noise_e ** 2
    if saturated_star:
        # bleed: charge above saturation runs up and down the column
        over = np.clip(data - saturation_e, 0, None)
        data = np.minimum(data, saturation_e)
        for col in np.nonzero(over.sum(axis=0) > 0)[0]:
            excess = over[:, col].sum()
            rows_sat = np.nonzero(over[:, col] > 0)[0]
            lo_r, hi_r = rows_sat.min(), rows_sat.max()
            k = 0
            while excess > 0 and k < ny:
                for r in (hi_r + 1 + k, lo_r - 1 - k):
                    if 0 <= r < ny and excess > 0:
                        add = min(saturation_e - data[r, col], excess)
                        if add > 0:
                            data[r, col] += add
                            excess -= add
                k += 1
    cr_mask = np.zeros((ny, nx), bool)
    for _ in range(n_cosmic_rays):
        x0, y0 = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10)
        length = rng.uniform(1, 8)
        ang = rng.uniform(0, np.pi)
        for t in np.linspace(0, length, int(length * 2) + 2):
            xi, yi = int(round(x0 + t * math.cos(ang))), int(round(y0 + t * math.sin(ang)))
            data[yi, xi] += rng.uniform(1500, 6000)
            cr_mask[yi, xi] = True

    header_wcs = true_wcs.deepcopy()
    # perturb: shift the tangent point and rotate the CD matrix
    dra = wcs_offset_arcsec[0] / 3600.0 / math.cos(math.radians(DEC0))
    ddec = wcs_offset_arcsec[1] / 3600.0
    header_wcs.wcs.crval = [true_wcs.wcs.crval[0] + dra, true_wcs.wcs.crval[1] + ddec]
    c, s = math.cos(math.radians(wcs_rot_deg)), math.sin(math.radians(wcs_rot_deg))
    header_wcs.wcs.cd = np.array(true_wcs.wcs.cd) @ np.array([[c, -s], [s, c]])
    header_wcs.wcs.set()

    info = VisitInfo(visit=visit, band=band, mjd_tai=61000.0 + visit * 0.01, exp_time_s=30.0,
                     seeing_arcsec=fwhm_arcsec, sky_level_e=sky_e, detector=0, pixel_scale_arcsec=PIXEL_SCALE,
                     boresight_ra_deg=RA0, boresight_dec_deg=DEC0)
    exposure = Exposure(data.astype(np.float32), None, variance.astype(np.float32), header_wcs, None, None, info,
                        {"gain": 1.0, "read_noise": read_noise_e, "saturation": saturation_e})

    stars = truth[truth["type"] == "star"]
    perr = ref_pos_err_mas / 3.6e6
    ref = Table()
    ref["id"] = stars["id"]
    ref["coord_ra"] = stars["ra"] + rng.normal(0, perr, len(stars)) / math.cos(math.radians(DEC0))
    ref["coord_dec"] = stars["dec"] + rng.normal(0, perr, len(stars))
    ref["coord_raErr"] = np.full(len(stars), perr)
    ref["coord_decErr"] = np.full(len(stars), perr)
    for b, colour in (("g", 0.0), ("r", 0.0), ("i", 0.0)):
        f = stars["flux_njy"] * 10 ** (-0.4 * colour)
        ferr = 0.002 * f
        ref[f"{b}_flux"] = f + rng.normal(0, 1, len(f)) * ferr
        ref[f"{b}_fluxErr"] = ferr
    return SyntheticField(exposure, truth, ref, true_wcs, zero_point, fwhm_at, psf_at, cr_mask)
