"""makeDiscreteSkyMap: one tract covering every calexp of the repository, cut into overlapping patches.

The DM stack's ``makeDiscreteSkyMap.py`` (MakeDiscreteSkyMapTask; in Gen3 ``butler register-skymap`` with a
DiscreteSkyMap config): the tract is a TAN projection whose tangent point is the centre of the calexps' footprint,
with square pixels of ``pixel_scale_arcsec``; it holds the smallest whole number of ``patch_inner_px`` patches that
covers every calexp (grown by ``border_px``). Each patch's outer region (its warps' and coadds' grid) is the inner
one grown by ``patch_overlap_px`` on every side. The geometry is :class:`twinkles.algorithms.skymap.SkyMap`;
this stage only finds the calexps' footprints (from their headers: the pixels are not read) and writes the
``skyMap`` dataset (JSON). Its quantum is the whole repository (``QUANTUM = ()``): one job, after every
process_eimage job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from astropy.io import fits

from ..algorithms.skymap import SkyMap, footprint_radec, make_discrete_skymap
from ..image import _quiet_wcs, wcs_is_celestial
from . import ProcessingError

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "calexp_footprint"]

log = logging.getLogger(__name__)

QUANTUM: tuple[str, ...] = ()
INPUTS = ["calexp"]
OUTPUTS = ["skyMap"]


@dataclass
class Config:
    patch_inner_px: int = 400  # side of a patch's inner region, pixels (DM 4000; 400 gives the 1k demo 3x3 patches)
    patch_overlap_px: int = 50  # outer region = inner grown by this on every side, pixels (DM 100)
    pixel_scale_arcsec: float = 0.2  # tract pixel scale, arcsec (DM 0.2 for LSST)
    border_px: int = 0  # grow the calexps' footprint by this before choosing the number of patches, pixels
    tract: int = 0  # tract number (one tract per repository)


@dataclass
class Result:
    sky_map: SkyMap
    n_calexps: int


def run(footprints: list, config: Config | None = None) -> Result:
    """Make the sky map holding every footprint ((ra, dec) border arrays, degrees, one per calexp)."""
    config = config or Config()
    sky = make_discrete_skymap(footprints, patch_inner_px=config.patch_inner_px,
                               patch_overlap_px=config.patch_overlap_px,
                               pixel_scale_arcsec=config.pixel_scale_arcsec, border_px=config.border_px,
                               tract=config.tract)
    return Result(sky, len(footprints))


def calexp_footprint(path) -> tuple:
    """(ra, dec) along the border of the calexp at ``path``, from its IMAGE header only (no pixels read)."""
    with fits.open(path, memmap=True) as hdul:
        hdr = hdul["IMAGE"].header
        wcs = _quiet_wcs(hdr)
        shape = (int(hdr.get("ZNAXIS2", hdr.get("NAXIS2", 0))), int(hdr.get("ZNAXIS1", hdr.get("NAXIS1", 0))))
    if not wcs_is_celestial(wcs) or min(shape) <= 0:
        raise ProcessingError(f"{path}: the calexp has no celestial WCS or no pixels; re-run process_eimage")
    return footprint_radec(wcs, shape)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Find every calexp of the input runs, make the sky map, write ``skyMap``."""
    refs = butler.query("calexp")
    if not refs:
        raise ProcessingError("make_skymap: no calexp in the repository's runs "
                              f"({', '.join(butler.input_runs)}); run process_eimage first")
    footprints = [calexp_footprint(butler.repo.abspath(ref)) for ref in refs]
    result = run(footprints, config)
    butler.put(result.sky_map.to_dict(), "skyMap", {})
    sky = result.sky_map
    log.info("sky map: tract %d at (%.5f, %.5f), %d x %d patches of %d + 2 x %d px, from %d calexps", sky.tract,
             sky.ra_deg, sky.dec_deg, sky.n_patches_x, sky.n_patches_y, sky.patch_inner_px, sky.patch_overlap_px,
             result.n_calexps)
    return {"tract": sky.tract, "ra_deg": sky.ra_deg, "dec_deg": sky.dec_deg, "n_patches_x": sky.n_patches_x,
            "n_patches_y": sky.n_patches_y, "n_calexps": result.n_calexps}
