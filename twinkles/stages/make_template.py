"""goodSeeingCoadd: the difference-imaging template of a patch in one band, a coadd of its best-seeing visits.

The DM stack's template building for DIA: ``BestSeeingQuantileSelectVisitsTask`` / ``BestSeeingSelectVisitsTask``
(drp_tasks ``selectGoodSeeingVisits``: keep the visits whose PSF FWHM is at or below the ``seeing_quantile``
of the band's visits covering the patch, at least ``min_inputs`` of them, at most ``max_inputs``, and none
broader than ``max_psf_fwhm_arcsec``), then ``AssembleCoaddTask`` / ``CompareWarpAssembleCoaddTask`` on those
warps (the ``assembleGoodSeeingCoadd`` step of the DRP pipeline), giving ``goodSeeingCoadd``; the AP pipeline's
``GetTemplateTask`` then cuts it onto each visit (here in :mod:`twinkles.stages.image_difference`).

Per (tract, patch, band):

1. ``select_visits``: every direct warp of the band on the patch, ranked by its PSF FWHM (``psf_fwhm_px`` of the
   warp, in the patch frame, times the sky map's pixel scale); the selected ones and why the rest are not;
2. ``assemble``: :func:`twinkles.stages.assemble_coadd.run` on the selected warps (direct warps coadded, the
   PSF-matched ones for artifact rejection), so the template's PSF is the :class:`~twinkles.psf.CoaddPsf` of
   its inputs, stored with it; its metadata lists the visits used (``template_visits``) and their normalised
   weights (``template_weights``: a variable's template flux is that mix of its epochs' fluxes). With fewer
   than ``rejection_min_inputs`` inputs the artifact rejection is off (a variable's faint or bright epoch would
   look like an artifact among 3-4 and be dropped, making that mix unknown).

A patch with fewer than ``min_inputs`` warps in the band makes no template (ProcessingError naming what is missing).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from ..image import Exposure
from . import ProcessingError
from . import assemble_coadd

__all__ = ["Config", "QUANTUM", "INPUTS", "OUTPUTS", "Result", "run", "run_quantum", "find_quanta",
           "select_visits"]

log = logging.getLogger(__name__)

QUANTUM = ("tract", "patch", "band")
INPUTS = ["deepCoadd_directWarp", "deepCoadd_psfMatchedWarp", "skyMap"]
OUTPUTS = ["goodSeeingCoadd"]


@dataclass
class Config:
    seeing_quantile: float = 0.33  # keep visits with PSF FWHM <= this quantile of the band's (DM qMax 0.33)
    max_psf_fwhm_arcsec: float = 0.0  # and never broader than this, arcsec (0: no limit; DM maxPsfFwhm 1.5)
    min_inputs: int = 3  # at least this many visits (the best-seeing ones; DM nVisitsMin 6)
    max_inputs: int = 12  # at most this many (DM nVisitsMax 12)
    rejection_min_inputs: int = 5  # artifact rejection only with at least this many inputs (see run)
    coadd: assemble_coadd.Config = field(default_factory=assemble_coadd.Config)


@dataclass
class Result:
    template: Exposure | None
    inputs: object  # the inputs table of the coadd (astropy Table)
    selected: list  # visits selected
    metadata: dict


def select_visits(fwhm_arcsec: dict[int, float], config: Config) -> tuple[list[int], dict[int, str]]:
    """The good-seeing visits (sorted by FWHM) and, for the others, why they were left out."""
    items = sorted(((f, v) for v, f in fwhm_arcsec.items() if np.isfinite(f)), key=lambda t: (t[0], t[1]))
    reasons = {v: "no PSF FWHM in its warp's metadata" for v, f in fwhm_arcsec.items() if not np.isfinite(f)}
    if len(items) < config.min_inputs:
        raise ProcessingError(f"only {len(items)} warps with a PSF in this band cover the patch (the template "
                              f"needs min_inputs={config.min_inputs}); warp more visits or lower "
                              "--config make_template.min_inputs")
    fw = np.array([f for f, _ in items])
    cut = float(np.quantile(fw, config.seeing_quantile))
    if config.max_psf_fwhm_arcsec > 0:
        cut = min(cut, config.max_psf_fwhm_arcsec)
    chosen = [v for f, v in items if f <= cut + 1e-9]
    if len(chosen) < config.min_inputs:  # DM nVisitsMin: the best ones even above the threshold
        chosen = [v for _, v in items[:config.min_inputs]]
    chosen = chosen[:config.max_inputs]
    for f, v in items:
        if v not in chosen:
            reasons[v] = f"PSF FWHM {f:.3f}\" above the template's threshold {cut:.3f}\""
    return chosen, reasons


def run(warps: list[assemble_coadd.WarpInput], fwhm_arcsec: dict[int, float], config: Config | None = None,
        band: str = "") -> Result:
    """Select the good-seeing warps and coadd them (see the module docstring)."""
    config = config or Config()
    chosen, reasons = select_visits(fwhm_arcsec, config)
    use = [w for w in warps if w.visit in chosen]
    coadd_config = config.coadd
    if len(use) < config.rejection_min_inputs and coadd_config.do_artifact_rejection:
        # with 3-4 epochs a variable source's faint or bright epoch looks like an artifact and is dropped, so
        # the template's flux of every supernova and AGN would be an unknown mix of its epochs: plain mean
        from dataclasses import replace
        coadd_config = replace(coadd_config, do_artifact_rejection=False)
    res = assemble_coadd.run(use, coadd_config, band=band)
    if res.coadd is None:
        raise ProcessingError(f"band {band}: none of the good-seeing visits {chosen} has usable pixels in the patch")
    used = [int(v) for v, s in zip(res.inputs["visit"], res.inputs["status"]) if s == "used"]
    if len(used) < config.min_inputs:
        raise ProcessingError(f"band {band}: only {len(used)} of the good-seeing visits {chosen} could be coadded "
                              f"(min_inputs={config.min_inputs}); see the inputs' reasons: "
                              f"{[r for r in res.inputs['reason'] if r]}")
    fws = [fwhm_arcsec[v] for v in used]
    weights = [float(w) for w, st in zip(res.inputs["weight"], res.inputs["status"]) if st == "used"]
    meta = dict(res.metadata, template_visits=" ".join(str(v) for v in used),
                template_weights=" ".join(f"{w / sum(weights):.6f}" for w in weights),
                template_max_input_fwhm_arcsec=float(max(fws)), n_candidates=len(fwhm_arcsec),
                left_out={int(v): r for v, r in reasons.items()})
    t = res.coadd
    t.metadata.update(template_visits=meta["template_visits"], template_weights=meta["template_weights"], band=band,
                      template_max_input_fwhm_arcsec=meta["template_max_input_fwhm_arcsec"])
    return Result(t, res.inputs, used, meta)


def _meta(hdr: fits.Header, key: str, default=float("nan")):
    for k in (f"HIERARCH META {key.upper()}", f"META {key.upper()}"):
        if k in hdr:
            return hdr[k]
    return default


def find_quanta(repo, query: dict, runs: list[str]) -> list[dict]:
    """(tract, patch, band) of the registered direct warps (as assemble_coadd)."""
    return assemble_coadd.find_quanta(repo, query, runs)


def run_quantum(butler, data_id: dict, config: Config) -> dict:
    """Rank the patch's warps of the band by seeing (from their headers), coadd the best, write goodSeeingCoadd."""
    from ..algorithms.skymap import SkyMap
    tract, patch, band = data_id["tract"], data_id["patch"], data_id["band"]
    sky = SkyMap.from_dict(butler.get("skyMap"))
    where = {"tract": tract, "patch": patch}
    direct = butler.query("deepCoadd_directWarp", where)
    matched = {r.data_id["visit"]: r for r in butler.query("deepCoadd_psfMatchedWarp", where)}
    warps, fwhm = [], {}
    for ref in direct:
        hdr = fits.getheader(butler.repo.abspath(ref), 0)
        b = hdr.get("BAND", _meta(hdr, "band", None))
        if b is None or str(b) != band:
            continue
        visit = ref.data_id["visit"]
        f = float(_meta(hdr, "psf_fwhm_px"))
        fwhm[visit] = f * sky.pixel_scale_arcsec if math.isfinite(f) else float("nan")
        pm = matched.get(visit)
        warps.append(assemble_coadd.WarpInput(visit, _reader(butler, ref),
                                              None if pm is None else _reader(butler, pm), band=band))
    if not warps:
        raise ProcessingError(f"tract {tract} patch {patch} band {band}: no warps; run warp first")
    result = run(warps, fwhm, config, band)
    butler.put(result.template, "goodSeeingCoadd", {"tract": tract, "patch": patch, "band": band})
    return {k: v for k, v in result.metadata.items() if k != "visits_used"}


def _reader(butler, ref):
    return lambda: butler.read(ref)
