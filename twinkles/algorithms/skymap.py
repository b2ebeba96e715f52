"""The sky map: one tract (a TAN projection at the field centre) cut into overlapping patches.

The DM stack's DiscreteSkyMap (``makeDiscreteSkyMap``): a tract is one gnomonic (TAN) projection whose tangent
point is the centre of the area the calexps cover, with square pixels of ``pixel_scale_arcsec`` (north up, east
to the left, as DM's tracts). It is tiled by patches: the *inner* regions, ``patch_inner_px`` square, tile the
tract without gaps or overlap; a patch's *outer* region -- the grid of its warps and coadds -- is the inner one
grown by ``patch_overlap_px`` on every side, so neighbouring patches share a band ``2 * patch_overlap_px`` wide.

Pixel conventions (0-based, ``image[y, x]``): tract pixel (0, 0) is the first pixel of patch 0's inner region;
patch ``(ix, iy)`` (``patch = iy * n_patches_x + ix``) has inner tract pixels ``[ix * inner, (ix + 1) * inner)``
in x (and so in y); its own pixel (0, 0) is tract pixel ``(ix * inner - overlap, iy * inner - overlap)``.

Pure geometry: no I/O (the ``skyMap`` dataset is :meth:`SkyMap.to_dict` as JSON).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.wcs import WCS

from ..image import tan_deproject, tan_project

__all__ = ["SkyMap", "SkyMapError", "make_discrete_skymap", "footprint_radec"]


class SkyMapError(ValueError):
    """A sky map cannot be made or a patch does not exist."""


@dataclass
class SkyMap:
    """One tract of square pixels (TAN at ``ra_deg, dec_deg``), tiled by ``n_patches_x * n_patches_y`` patches."""

    ra_deg: float  # tract centre = TAN tangent point, degrees
    dec_deg: float
    n_patches_x: int
    n_patches_y: int
    patch_inner_px: int = 400  # side of a patch's inner region, pixels (DM 4000)
    patch_overlap_px: int = 50  # a patch's outer region is the inner one grown by this on every side (DM 100)
    pixel_scale_arcsec: float = 0.2  # tract pixel scale, arcsec per pixel
    tract: int = 0
    #: tract pixel (0-based) of the tangent point; by default the centre of the tiled area
    crpix_x: float | None = None
    crpix_y: float | None = None

    def __post_init__(self) -> None:
        if self.patch_inner_px <= 0 or self.patch_overlap_px < 0:
            raise SkyMapError(f"sky map: patch_inner_px={self.patch_inner_px} must be > 0 and patch_overlap_px="
                              f"{self.patch_overlap_px} >= 0")
        if self.n_patches_x <= 0 or self.n_patches_y <= 0:
            raise SkyMapError(f"sky map: needs at least one patch, got {self.n_patches_x} x {self.n_patches_y}")
        if not self.pixel_scale_arcsec > 0:
            raise SkyMapError(f"sky map: pixel_scale_arcsec={self.pixel_scale_arcsec} must be positive")
        if self.crpix_x is None:
            self.crpix_x = (self.n_patches_x * self.patch_inner_px - 1) / 2.0
        if self.crpix_y is None:
            self.crpix_y = (self.n_patches_y * self.patch_inner_px - 1) / 2.0
        self.ra_deg, self.dec_deg = float(self.ra_deg), float(self.dec_deg)
        self.crpix_x, self.crpix_y = float(self.crpix_x), float(self.crpix_y)

    # ------------------------------------------------------------------ patches
    @property
    def n_patches(self) -> int:
        return self.n_patches_x * self.n_patches_y

    def patches(self) -> list[int]:
        """Every patch number, ``iy * n_patches_x + ix`` in row-major order."""
        return list(range(self.n_patches))

    def patch_index(self, patch: int) -> tuple[int, int]:
        """(ix, iy) of a patch number; raises :class:`SkyMapError` for one that does not exist."""
        patch = int(patch)
        if not 0 <= patch < self.n_patches:
            raise SkyMapError(f"tract {self.tract} has patches 0..{self.n_patches - 1} "
                              f"({self.n_patches_x} x {self.n_patches_y}); patch={patch} does not exist")
        return patch % self.n_patches_x, patch // self.n_patches_x

    def patch_origin(self, patch: int) -> tuple[int, int]:
        """Tract pixel of the patch's own pixel (0, 0) (the first pixel of its outer region)."""
        ix, iy = self.patch_index(patch)
        return ix * self.patch_inner_px - self.patch_overlap_px, iy * self.patch_inner_px - self.patch_overlap_px

    def patch_shape(self, patch: int) -> tuple[int, int]:
        """(ny, nx) of the patch's outer region."""
        self.patch_index(patch)
        n = self.patch_inner_px + 2 * self.patch_overlap_px
        return n, n

    def inner_bbox(self, patch: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open, of the inner region in the patch's own pixels."""
        self.patch_index(patch)
        o, n = self.patch_overlap_px, self.patch_inner_px
        return o, o, o + n, o + n

    # ------------------------------------------------------------------ WCS
    def tract_wcs(self) -> WCS:
        """The tract's TAN WCS (0-based tract pixels in astropy's pixel_to_world)."""
        return self._wcs(0.0, 0.0)

    def patch_wcs(self, patch: int) -> WCS:
        """TAN WCS of the patch's outer grid: its pixel (0, 0) is the first pixel of the outer region."""
        x0, y0 = self.patch_origin(patch)
        return self._wcs(x0, y0)

    def _wcs(self, x0: float, y0: float) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crval = [self.ra_deg, self.dec_deg]
        w.wcs.crpix = [self.crpix_x - x0 + 1.0, self.crpix_y - y0 + 1.0]  # FITS CRPIX is 1-based
        s = self.pixel_scale_arcsec / 3600.0
        w.wcs.cd = [[-s, 0.0], [0.0, s]]
        w.wcs.radesys = "ICRS"
        w.wcs.set()
        return w

    def sky_to_tract(self, ra_deg, dec_deg):
        """Tract pixel coordinates (x, y) of sky positions (degrees); exact TAN, vectorised."""
        xi, eta = tan_project(ra_deg, dec_deg, self.ra_deg, self.dec_deg)
        s = self.pixel_scale_arcsec / 3600.0
        return self.crpix_x - np.asarray(xi) / s, self.crpix_y + np.asarray(eta) / s

    def tract_to_sky(self, x, y):
        """Sky positions (ra, dec degrees) of tract pixel coordinates."""
        s = self.pixel_scale_arcsec / 3600.0
        xi = -(np.asarray(x, float) - self.crpix_x) * s
        eta = (np.asarray(y, float) - self.crpix_y) * s
        return tan_deproject(xi, eta, self.ra_deg, self.dec_deg)

    # ------------------------------------------------------------------ look-ups
    def patch_of(self, ra_deg: float, dec_deg: float) -> int:
        """The patch whose inner region holds the point, or -1 outside the tract."""
        x, y = self.sky_to_tract(ra_deg, dec_deg)
        ix, iy = math.floor(float(x) / self.patch_inner_px), math.floor(float(y) / self.patch_inner_px)
        if 0 <= ix < self.n_patches_x and 0 <= iy < self.n_patches_y:
            return iy * self.n_patches_x + ix
        return -1

    def patches_overlapping(self, wcs: WCS, shape: tuple[int, int]) -> list[int]:
        """Patches whose outer region overlaps an image of ``shape`` (ny, nx) with celestial WCS ``wcs``.

        The image's boundary (sampled every ~64 px, SIP included) is projected into the tract and its bounding
        box intersected with the patches' outer regions (conservative for a rotated image: a patch touching only
        the box's corner is listed; the warp then finds no pixels and the caller skips it).
        """
        ra, dec = footprint_radec(wcs, shape)
        x, y = self.sky_to_tract(ra, dec)
        return self._patches_in_box(float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y)))

    def _patches_in_box(self, xmin, ymin, xmax, ymax) -> list[int]:
        n, o = self.patch_inner_px, self.patch_overlap_px
        out = []
        for iy in range(self.n_patches_y):
            if ymax < iy * n - o - 0.5 or ymin > (iy + 1) * n + o - 0.5:
                continue
            for ix in range(self.n_patches_x):
                if xmax < ix * n - o - 0.5 or xmin > (ix + 1) * n + o - 0.5:
                    continue
                out.append(iy * self.n_patches_x + ix)
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SkyMap:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise SkyMapError(f"skyMap dataset has unknown keys {sorted(unknown)}; it was written by another "
                              "version of twinkles: re-run make_skymap")
        return cls(**d)


def footprint_radec(wcs: WCS, shape: tuple[int, int], step_px: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions (degrees) of points along the border of an image of ``shape`` (ny, nx), pixel edges."""
    ny, nx = shape
    xs = np.linspace(-0.5, nx - 0.5, max(2, nx // step_px + 1))
    ys = np.linspace(-0.5, ny - 0.5, max(2, ny // step_px + 1))
    bx = np.concatenate([xs, np.full(len(ys), nx - 0.5), xs[::-1], np.full(len(ys), -0.5)])
    by = np.concatenate([np.full(len(xs), -0.5), ys, np.full(len(xs), ny - 0.5), ys[::-1]])
    ra, dec = wcs.all_pix2world(bx, by, 0)
    return np.asarray(ra, float), np.asarray(dec, float)


def make_discrete_skymap(footprints: list[tuple[np.ndarray, np.ndarray]], patch_inner_px: int = 400,
                         patch_overlap_px: int = 50, pixel_scale_arcsec: float = 0.2, border_px: int = 0,
                         tract: int = 0) -> SkyMap:
    """One tract holding every footprint (DM's makeDiscreteSkyMap).

    ``footprints``: (ra, dec) arrays (degrees) along each image's border (see :func:`footprint_radec`). The tangent
    point is the centre of the footprints' bounding box on the sky (RA taken about the first point, so a field
    across RA = 0 works); the tract is the smallest whole number of patches (inner regions) that holds every
    footprint grown by ``border_px``, the tangent point at its centre.
    """
    if not footprints:
        raise SkyMapError("make_skymap: no calexp to cover; run process_eimage first")
    ra = np.concatenate([np.asarray(f[0], float) for f in footprints])
    dec = np.concatenate([np.asarray(f[1], float) for f in footprints])
    ref = ra[0]
    dra = (ra - ref + 180.0) % 360.0 - 180.0
    ra0 = (ref + 0.5 * (dra.min() + dra.max())) % 360.0
    dec0 = 0.5 * (dec.min() + dec.max())
    # re-centre on the projected bounding box (TAN is not linear in RA/Dec)
    for _ in range(2):
        xi, eta = tan_project(ra, dec, ra0, dec0)
        ra0, dec0 = (float(v) for v in tan_deproject(0.5 * (xi.min() + xi.max()), 0.5 * (eta.min() + eta.max()),
                                                     ra0, dec0))
    xi, eta = tan_project(ra, dec, ra0, dec0)
    s = pixel_scale_arcsec / 3600.0
    half_x = max(abs(xi.min()), abs(xi.max())) / s + border_px
    half_y = max(abs(eta.min()), abs(eta.max())) / s + border_px
    nx = max(1, math.ceil((2 * half_x + 1) / patch_inner_px))
    ny = max(1, math.ceil((2 * half_y + 1) / patch_inner_px))
    return SkyMap(ra_deg=float(ra0), dec_deg=float(dec0), n_patches_x=nx, n_patches_y=ny,
                  patch_inner_px=int(patch_inner_px), patch_overlap_px=int(patch_overlap_px),
                  pixel_scale_arcsec=float(pixel_scale_arcsec), tract=int(tract))
