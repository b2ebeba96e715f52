"""Validation sections of the run report: one per stage whose outputs exist in the run.

``validation_sections(repo, run, outdir)`` returns a list of ``{"title", "metrics", "figures"}`` dicts (figures
are PNG paths relative to ``outdir``; a section whose builder failed carries ``"error"`` instead); the
workflow's report shows them. Each stage's section comes from a builder in :data:`SECTION_BUILDERS` that returns
``None`` when the stage has no outputs in the run.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..repo import TRUTH_RUN, Repository
from . import plots
from .science import reference_offset_mmag
from .single_frame import repeatability, validate_visit

__all__ = ["validation_sections", "process_eimage_section", "assemble_coadd_section", "image_difference_section",
           "SECTION_BUILDERS"]

log = logging.getLogger(__name__)


def _finite_median(values):
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def process_eimage_section(repo: Repository, run: str, outdir: Path, max_visits: int = 200) -> dict | None:
    """Single-frame processing (process_eimage) against the truth: astrometry, photometry, PSF, detection."""
    refs = repo.query("src", runs=[run])
    if not refs:
        return None
    try:
        truth = repo.get("truth_catalog", runs=[TRUTH_RUN])
        visits = repo.get("visit_table", runs=[TRUTH_RUN])
    except LookupError:
        return {"title": "process_eimage (single-frame processing)",
                "metrics": {"n_visits": len(refs), "note": "no truth in this repository"}, "figures": []}
    vrow = {int(r["visit"]): r for r in visits}
    try:
        ref_cat = repo.get("ref_cat")
    except LookupError:
        ref_cat = None
    zp_vs_ref = []
    per_visit = []
    by_band = defaultdict(list)
    offsets = ([], [])
    pulls = []
    comp_snr, comp_det = [], []
    for ref in refs[:max_visits]:
        v = int(ref.data_id["visit"])
        if v not in vrow:
            continue
        src = repo.read(ref)
        meta = None
        try:
            meta = repo.get("process_eimage_metadata", ref.data_id, runs=[run])
        except LookupError:
            pass
        res = validate_visit(src, truth, vrow[v], meta)
        per_visit.append(res)
        if ref_cat is not None and meta and "calib_photometry_used" in src.colnames:
            # a correct calibration is off the truth by the reference catalogue's own error over its stars
            ref_off, _ = reference_offset_mmag(src, ref_cat, truth, res["band"])
            zp_vs_ref.append(res["zero_point_offset_mmag"] - ref_off)
        by_band[res["band"]].append(src)
        offsets[0].append(res["astrometry_offsets_mas"][0])
        offsets[1].append(res["astrometry_offsets_mas"][1])
        pulls.append(res["photometry"]["pull"])
        comp_snr.append(res["completeness_arrays"]["pred_snr"])
        comp_det.append(res["completeness_arrays"]["detected"])
    if not per_visit:
        return None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dra, ddec = np.concatenate(offsets[0]), np.concatenate(offsets[1])
    allpull = np.concatenate(pulls)
    figs = [plots.plot_astrometric_offsets(dra, ddec, outdir / "process_eimage_astrometry.png"),
            plots.plot_pulls(allpull, outdir / "process_eimage_pulls.png"),
            plots.plot_completeness(np.concatenate(comp_snr), np.concatenate(comp_det),
                                    outdir / "process_eimage_completeness.png")]
    metrics = {"n_visits": len(per_visit)}
    r = np.hypot(dra, ddec)
    metrics["astrometry_median_offset_mas"] = float(np.median(r)) if len(r) else float("nan")
    metrics["astrometry_rms_offset_mas"] = float(np.sqrt(np.mean(r ** 2))) if len(r) else float("nan")
    ok = np.isfinite(allpull)
    metrics["psf_flux_pull_sd"] = float(np.std(allpull[ok])) if ok.any() else float("nan")
    metrics["psf_flux_pull_median"] = float(np.median(allpull[ok])) if ok.any() else float("nan")
    if all("zero_point_offset_mmag" in p for p in per_visit):
        zp = [p["zero_point_offset_mmag"] for p in per_visit]
        fr = [p["psf_fwhm_ratio"] for p in per_visit]
        metrics["zero_point_offset_median_mmag"] = _finite_median(zp)
        metrics["zero_point_offset_max_abs_mmag"] = float(np.nanmax(np.abs(zp)))
        if zp_vs_ref:
            metrics["zero_point_offset_less_reference_error_median_mmag"] = _finite_median(zp_vs_ref)
        metrics["psf_fwhm_ratio_median"] = _finite_median(fr)
        metrics["psf_fwhm_ratio_max_dev_pct"] = float(np.nanmax(np.abs(np.asarray(fr) - 1)) * 100)
        figs.append(plots.plot_visit_truth([p["visit"] for p in per_visit], zp, fr,
                                           outdir / "process_eimage_visit_truth.png"))
    metrics["completeness_snr10_median"] = _finite_median(p["completeness_snr10"] for p in per_visit)
    metrics["spurious_fraction_median"] = _finite_median(p["spurious_fraction"] for p in per_visit)
    resid = {}
    for band, srcs in by_band.items():
        if len(srcs) >= 2:
            rep = repeatability(srcs, truth, band, min_snr=200.0)
            metrics[f"pa1_{band}_mmag"] = rep["pa1_mmag"]
            metrics[f"pa1_{band}_robust_mmag"] = rep.get("pa1_robust_mmag", float("nan"))
            if "pa1_excess_mmag" in rep:
                metrics[f"pa1_{band}_excess_mmag"] = rep["pa1_excess_mmag"]
            if "residuals_mmag" in rep:
                resid[band] = rep["residuals_mmag"]
    if resid:
        figs.append(plots.plot_pa1(resid, outdir / "process_eimage_pa1.png"))
    metrics = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    return {"title": "process_eimage (single-frame processing) vs truth", "metrics": metrics,
            "figures": [str(Path(f).relative_to(outdir)) for f in figs]}


def assemble_coadd_section(repo: Repository, run: str, outdir: Path, max_figures: int = 8) -> dict | None:
    """Coadds (assemble_coadd): depth, nImage and coadd PSF FWHM across each patch, noise, inputs."""
    from .coadd import coadd_metrics, plot_coadd
    refs = repo.query("deepCoadd", runs=[run])
    if not refs:
        return None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    per, figs = [], []
    for ref in refs:
        did = ref.data_id
        coadd = repo.read(ref)
        n_image = repo.get("deepCoadd_nImage", did, runs=[run])
        inputs = repo.get("deepCoadd_inputs", did, runs=[run])
        m = coadd_metrics(coadd, n_image, inputs)
        m.update(patch=int(did["patch"]), band=did["band"])
        per.append(m)
        if len(figs) < max_figures:
            name = f"coadd_t{did['tract']}_p{did['patch']}_{did['band']}.png"
            figs.append(plot_coadd(coadd, n_image, outdir / name,
                                   f"tract {did['tract']} patch {did['patch']} band {did['band']}: "
                                   f"{m['n_inputs']} inputs, depth {m['depth_5sigma_median_mag']:.2f}"))
    metrics = {"n_coadds": len(per)}
    for band in sorted({m["band"] for m in per}, key="ugrizy".index):
        mb = [m for m in per if m["band"] == band]
        metrics[f"{band}_depth_5sigma_median_mag"] = _finite_median(m["depth_5sigma_median_mag"] for m in mb)
        metrics[f"{band}_n_inputs_max"] = max(m["n_inputs"] for m in mb)
        metrics[f"{band}_psf_fwhm_range_px"] = f"{min(m['psf_fwhm_min_px'] for m in mb):.2f} - " \
                                               f"{max(m['psf_fwhm_max_px'] for m in mb):.2f}"
    metrics["n_missing_inputs"] = sum(m["n_missing"] for m in per)
    metrics["n_rejected_inputs"] = sum(m["n_rejected"] for m in per)
    metrics["artifact_pixels"] = sum(m["artifact_pixels"] for m in per)
    metrics["empty_sky_chi_robust_sd_median"] = _finite_median(m["empty_sky_chi_robust_sd"] for m in per)
    metrics["inexact_psf_fraction_median"] = _finite_median(m["inexact_psf_fraction"] for m in per)
    metrics = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    return {"title": "assemble_coadd (deep coadds): depth, coverage and coadd PSF", "metrics": metrics,
            "figures": [str(Path(f).relative_to(outdir)) for f in figs]}


def image_difference_section(repo: Repository, run: str, outdir: Path) -> dict | None:
    """Difference imaging (make_template, image_difference): noise ratio per visit, DIASources, efficiency."""
    from .dia import difference_noise_ratio, plot_dia, supernova_efficiency
    refs = repo.query("differenceExp", runs=[run])
    if not refs:
        return None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    truth = repo.get("truth_catalog", runs=[TRUTH_RUN])
    lcs = repo.get("truth_lightcurves", runs=[TRUTH_RUN])
    templates = {}
    for tref in repo.query("goodSeeingCoadd", runs=[run]):
        t = repo.read(tref)
        templates.setdefault(tref.data_id["band"], t.metadata)
    visits, ratios, in_tmpl, n_dia, snr_det = [], [], [], [], []
    for ref in sorted(refs, key=lambda r: r.data_id["visit"]):
        diff = repo.read(ref)
        dia = repo.get("diaSourceTable", ref.data_id, runs=[run])
        band = diff.visit_info.band
        meta = templates.get(band, {})
        tv = [int(v) for v in str(meta.get("template_visits", "")).split()]
        tw = [float(w) for w in str(meta.get("template_weights", "")).split()]
        v = int(ref.data_id["visit"])
        visits.append(v)
        ratios.append(difference_noise_ratio(diff))
        in_tmpl.append(v in tv)
        n_dia.append(len(dia))
        if tv and len(tw) == len(tv):
            snr_det += supernova_efficiency(diff, dia, truth, lcs, tv, tw, v)
    sci = [r for r, t in zip(ratios, in_tmpl) if not t]
    s = np.abs(np.array([a for a, _ in snr_det])) if snr_det else np.zeros(0)
    d = np.array([b for _, b in snr_det], bool) if snr_det else np.zeros(0, bool)
    metrics = {"n_difference_images": len(refs), "noise_ratio_median_science_visits": _finite_median(sci),
               "noise_ratio_median_template_visits": _finite_median(
                   [r for r, t in zip(ratios, in_tmpl) if t]),
               "dia_sources_per_visit_median": _finite_median(n_dia),
               "sn_epochs_snr_ge_10": int((s >= 10).sum()),
               "sn_efficiency_snr_ge_10": float(d[s >= 10].mean()) if (s >= 10).any() else float("nan"),
               "sn_efficiency_snr_5_to_7": float(d[(s >= 5) & (s < 7)].mean()) if ((s >= 5) & (s < 7)).any()
               else float("nan")}
    fig = plot_dia(visits, ratios, in_tmpl, snr_det, outdir / "dia_noise_efficiency.png")
    metrics = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    return {"title": "image_difference (DIA): difference-image noise, DIASources, efficiency", "metrics": metrics,
            "figures": [str(Path(fig).relative_to(outdir))]}


#: builders of the validation sections, in pipeline order; each (repo, run, outdir) -> dict | None
SECTION_BUILDERS: list[Callable] = [process_eimage_section, assemble_coadd_section, image_difference_section]


def validation_sections(repo, run: str, outdir, raise_errors: bool = False) -> list[dict]:
    """Science validation of every stage with outputs in ``run``; a builder that fails gives a section saying
    why instead of breaking the report, or, with ``raise_errors`` (a recipe's or a script's comparison step,
    which must fail when the comparison cannot be made), raises its exception."""
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    out = []
    for builder in SECTION_BUILDERS:
        try:
            sec = builder(repo, run, Path(outdir))
        except Exception as exc:  # noqa: BLE001 - the report must still be written
            if raise_errors:
                raise
            log.exception("validation section %s failed", builder.__name__)
            sec = {"title": builder.__doc__.splitlines()[0] if builder.__doc__ else builder.__name__,
                   "metrics": {}, "figures": [], "error": f"{type(exc).__name__}: {exc}"}
        if sec is not None:
            out.append(sec)
    return out
