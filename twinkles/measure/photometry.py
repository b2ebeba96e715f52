"""Photometry: PSF fluxes (linear fit of the PSF model), forced PSF photometry, circular aperture fluxes.

PSF flux at a fixed position, with the PSF stamp P (normalised to 1 over the model stamp) and image I:
``F = sum(P I) / sum(P^2)`` -- the least-squares amplitude with equal pixel weights, which is the optimal
(minimum-variance) estimate when the noise is dominated by the sky and, unlike inverse-variance weights taken from
a variance plane that contains the source's own Poisson noise, is unbiased at every flux. Its error propagates
the full per-pixel variance: ``sigma_F^2 = sum(P^2 V) / (sum(P^2))^2``. Masked pixels get zero weight.

Aperture fluxes are exact-overlap circular sums (sep.sum_circle) with errors from the variance plane.
"""

from __future__ import annotations

import numpy as np
import sep

from ..stamps import PsfStamps, extract_stamps

__all__ = ["psf_flux", "forced_psf_flux", "aperture_fluxes", "deblended_aperture_fluxes", "APERTURE_RADII",
           "aperture_column"]

#: aperture radii (pixels) of the DM stack's base_CircularApertureFlux_{r}_0 columns we compute
APERTURE_RADII = (3.0, 4.5, 6.0, 9.0, 12.0)


def aperture_column(radius: float) -> str:
    """Column name for a radius, as the DM stack writes it: 4.5 -> apFlux_4_5, 12 -> apFlux_12_0."""
    whole = int(radius)
    frac = int(round((radius - whole) * 10))
    return f"apFlux_{whole}_{frac}"


def psf_flux(image: np.ndarray, variance: np.ndarray, psf_stamps: PsfStamps, x, y, good=None,
             size: int | None = None, chunk: int = 4096, max_masked_frac: float = 0.2):
    """Linear PSF-fit fluxes at fixed positions (x, y) (0-based pixels).

    ``psf_stamps``: a :class:`PsfStamps` for the image's PSF; ``good``: bool image of usable pixels (others get
    zero weight); ``size``: fitting stamp size (default: the model stamp). Returns ``(flux, flux_err, flag)``;
    ``flag`` is True where more than ``max_masked_frac`` of the PSF's weight (sum P^2) is on unusable or
    off-image pixels, or the fit is undefined.
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    n = len(x)
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    flag = np.ones(n, bool)
    size = psf_stamps.model_size if size is None else size
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        p = psf_stamps.stamps(x[sl], y[sl], size)
        im, inside = extract_stamps(image, x[sl], y[sl], size)
        var, _ = extract_stamps(variance, x[sl], y[sl], size)
        if good is not None:
            g, _ = extract_stamps(good, x[sl], y[sl], size, fill=False)
            inside = inside & g
        ok_pix = inside & np.isfinite(im) & np.isfinite(var)
        pw = np.where(ok_pix, p, 0.0)
        spp_all = (p * p).sum(axis=(1, 2))
        spp = (pw * pw).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = (pw * np.where(ok_pix, im, 0.0)).sum(axis=(1, 2)) / spp
            e = np.sqrt((pw * pw * np.where(ok_pix, var, 0.0)).sum(axis=(1, 2))) / spp
            masked_frac = 1.0 - spp / spp_all
        flux[sl], err[sl] = f, e
        flag[sl] = ~(spp > 0) | (masked_frac > max_masked_frac) | ~np.isfinite(f)
    return flux, err, flag


def forced_psf_flux(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None, psf, x, y,
                    bad_mask_bits: int | None = None, size: int | None = None):
    """Forced PSF photometry at given positions with a given PSF (for coadds, forced_phot_ccd, DIA).

    ``psf``: a :class:`~twinkles.psf.PSF` (or a ready :class:`PsfStamps`); ``mask``: the exposure's mask plane
    (pixels with any of ``bad_mask_bits`` -- default NO_DATA, BAD, SAT -- get zero weight). Returns
    ``(flux, flux_err, flag)`` in the image's units.
    """
    from ..image import mask_bit
    if bad_mask_bits is None:
        bad_mask_bits = mask_bit("NO_DATA", "BAD", "SAT")
    stamps = psf if isinstance(psf, PsfStamps) else PsfStamps(psf, image.shape)
    good = None if mask is None else (np.asarray(mask) & bad_mask_bits) == 0
    return psf_flux(_float_plane(image), _float_plane(variance), stamps, x, y, good, size)


def aperture_fluxes(image: np.ndarray, variance: np.ndarray, x, y, radii=APERTURE_RADII, bad=None):
    """Circular aperture fluxes (exact pixel overlap) at each radius (pixels).

    Returns a dict ``{radius: (flux, flux_err, flag)}``; ``flag`` is True where the aperture runs off the image
    or contains ``bad`` pixels (which are excluded from the sum).
    """
    # sep sums float32 pixels (its PIXTYPE) whatever the input type: float32 planes go in without a copy
    data = _sep_plane(image)
    var = _sep_plane(variance)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    mask = None if bad is None else np.ascontiguousarray(bad, dtype=bool)
    out = {}
    for r in radii:
        f, e, fl = sep.sum_circle(data, x, y, float(r), var=var, mask=mask, subpix=0)
        out[r] = (np.asarray(f), np.asarray(e), np.asarray(fl) != 0)
    return out


def _float_plane(a) -> np.ndarray:
    """A float32 or float64 image as it is (no copy: stamps are cut from it and computed on in float64);
    anything else as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _sep_plane(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float32 and a.dtype.isnative:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=np.float64)


def deblended_aperture_fluxes(image: np.ndarray, variance: np.ndarray, footprints: np.ndarray, own_labels,
                              psf_stamps: PsfStamps, x, y, psf_flux_values, radii, grow_px: int = 2,
                              annulus=None):
    """Aperture fluxes of (bright, isolated) stars with the pixels of *other* footprints replaced by the star's
    own PSF model scaled to its PSF flux -- the curve of growth of the star alone (for aperture corrections).

    ``footprints``: the detection footprint label map; ``own_labels``: each star's footprint label. Returns a
    dict ``{radius: (flux, flux_err)}``; with ``annulus=(r_in, r_out)`` (pixels) also ``{"annulus": median}``,
    the median of the unpatched pixels of other footprints' free annulus (a local background level per pixel).
    """
    from scipy import ndimage
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    rmax = max(list(radii) + ([annulus[1]] if annulus else []))
    size = 2 * int(np.ceil(rmax)) + 5
    im, inside = extract_stamps(_float_plane(image), x, y, size)
    im = im.astype(np.float64)
    fp, _ = extract_stamps(np.asarray(footprints), x, y, size, fill=-1)
    own = np.asarray(own_labels)[:, None, None]
    other = ((fp != 0) & (fp != own)) | ~inside
    if grow_px > 0:
        other = ndimage.binary_dilation(other, structure=np.ones((1, 2 * grow_px + 1, 2 * grow_px + 1), bool))
    model = psf_stamps.stamps(x, y, size) * np.asarray(psf_flux_values, float)[:, None, None]
    patched = np.where(other, model, im)
    var, _ = extract_stamps(_float_plane(variance), x, y, size)
    var = var.astype(np.float64)
    var = np.where(other, 0.0, var)
    c = size // 2
    out = {r: (np.empty(len(x)), np.empty(len(x))) for r in radii}
    for i in range(len(x)):
        data = np.ascontiguousarray(patched[i])
        vi = np.ascontiguousarray(var[i])
        xc = c + x[i] - np.rint(x[i])
        yc = c + y[i] - np.rint(y[i])
        for r in radii:
            f, e, _ = sep.sum_circle(data, [xc], [yc], float(r), var=vi, subpix=0)
            out[r][0][i], out[r][1][i] = f[0], e[0]
    if annulus:
        off = np.arange(size) - c
        dx = off[None, None, :] - (x - np.rint(x))[:, None, None]
        dy = off[None, :, None] - (y - np.rint(y))[:, None, None]
        rr = np.hypot(dx, dy)
        ring = (rr >= annulus[0]) & (rr < annulus[1]) & ~other
        med = np.full(len(x), np.nan)
        for i in range(len(x)):
            if ring[i].sum() > 20:
                med[i] = float(np.median(im[i][ring[i]]))
        out["annulus"] = med
    return out
