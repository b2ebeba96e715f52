"""The coadd measurement stages (detect_coadd, merge_detections, deblend, measure_coadd, merge_measurements) on a
simulated tiny field (512 x 512, 6 visits in r and i, four patches), checked against the simulator's truth.

One field per session: simulate -> process_eimage -> make_skymap -> warp -> assemble_coadd -> the five stages.
Fractions are compared with the issue's limits allowing two binomial standard errors of the few tens of objects
a tiny field holds (``se = sqrt(p (1 - p) / n)`` at the limit p); the figures are printed (``pytest -s``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).parent))

from objects_truth import STAR_TYPES, covered, isolated, match, read_objects, tangent_xy  # noqa: E402

from twinkles.cli import main as cli_main  # noqa: E402
from twinkles.repo import Repository  # noqa: E402

RUN = "runs/l2"
BAND = "i"
STAGES = ("process_eimage", "make_skymap", "warp", "assemble_coadd", "detect_coadd", "merge_detections", "deblend",
          "measure_coadd", "merge_measurements")
#: truth types that are single objects (composite systems -- AGN in hosts, lenses, supernovae -- left out)
SIMPLE_TYPES = ("star", "variable_star", "galaxy")


@pytest.fixture(scope="session")
def object_field(tmp_path_factory):
    from twinkles.sim.simulate import simulate_field
    root = tmp_path_factory.mktemp("objects") / "tiny"
    simulate_field(root, preset="tiny", seed=3)
    for stage in STAGES:
        assert cli_main(["stage", stage, str(root), "--run", RUN]) == 0, stage
    repo = Repository(root)
    truth = repo.get("truth_catalog", runs=["truth"])
    objects = read_objects(repo, [RUN])
    return repo, truth, objects


def _depth(objects, band=BAND, nsigma=10.0) -> float:
    err = np.asarray(objects[f"{band}_psfFluxErr"], float)
    return 31.4 - 2.5 * math.log10(nsigma * float(np.median(err[np.isfinite(err)])))


def _binomial_ok(p_hat: float, n: int, limit: float, what: str, min_n: int = 10):
    se = math.sqrt(limit * (1 - limit) / max(n, 1))
    print(f"\n{what}: {p_hat:.3f} (n={n}, limit {limit}, 2 se {2 * se:.3f})")
    assert n >= min_n, f"{what}: only {n} objects"
    assert p_hat > limit - 2 * se, f"{what}: {p_hat:.3f} of {n}, limit {limit}"


def test_object_table_contract(object_field):
    repo, truth, objects = object_field
    for col in ("objectId", "parentObjectId", "coord_ra", "coord_dec", "x", "y", "refBand", "refExtendedness",
                "detect_isPrimary", "deblend_nChild", "tract", "patch", "i_psfFlux", "i_psfFluxErr", "r_psfFlux",
                "i_kronFlux", "i_ixx", "i_extendedness"):
        assert col in objects.colnames, col
    assert len(np.unique(objects["objectId"])) == len(objects)
    assert not np.any(objects["detect_isPrimary"][objects["deblend_nChild"] > 0])
    # every child's parent is a blend parent of its patch (in deepCoadd_ref: it may lie outside the inner region)
    refs = read_objects(repo, [RUN], "deepCoadd_ref")
    parents = set(refs["objectId"][refs["deblend_nChild"] > 0].tolist())
    kids = objects["parentObjectId"][objects["parentObjectId"] != 0]
    assert len(kids) and set(kids.tolist()) <= parents
    assert np.all(np.isin(objects["x"], refs["x"]))
    assert objects["i_psfFlux"].unit == "nJy"
    assert set(objects["refBand"]) <= {"i", "r"}


def test_completeness_at_the_10_sigma_depth(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    m10 = _depth(prim)
    t = truth[np.isin(truth["type"], SIMPLE_TYPES) & covered(repo, [RUN], truth, BAND)
              & isolated(truth, BAND, 3.0, 1.0)]
    mag = 31.4 - 2.5 * np.log10(np.clip(np.asarray(t[f"{BAND}_flux"], float), 1e-6, None))
    idx, _ = match(prim, t, 0.5)
    sel = mag < m10
    every = truth[np.isin(truth["type"], SIMPLE_TYPES) & covered(repo, [RUN], truth, BAND)]
    emag = 31.4 - 2.5 * np.log10(np.clip(np.asarray(every[f"{BAND}_flux"], float), 1e-6, None))
    eidx, _ = match(prim, every, 0.5)
    near = np.abs(emag - m10) < 0.25
    print(f"\nevery simple truth object (isolated or not) within 0.25 mag of m10: completeness "
          f"{np.mean(eidx[near] >= 0):.2f} of {near.sum()}; brighter than m10 {np.mean(eidx[emag < m10] >= 0):.2f} "
          f"of {np.sum(emag < m10)}")
    _binomial_ok(float(np.mean(idx[sel] >= 0)), int(sel.sum()), 0.9,
                 f"completeness of isolated truth objects brighter than the 10-sigma depth {m10:.2f}")


def test_purity_at_snr_above_10(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    snr = np.asarray(prim[f"{BAND}_psfFlux"] / prim[f"{BAND}_psfFluxErr"], float)
    ra0, dec0 = float(np.mean(truth["ra"])), float(np.mean(truth["dec"]))
    d, _ = cKDTree(tangent_xy(truth["ra"], truth["dec"], ra0, dec0)).query(
        tangent_xy(prim["coord_ra"], prim["coord_dec"], ra0, dec0))
    hi = snr > 10
    _binomial_ok(float(np.mean(d[hi] < 1.0)), int(hi.sum()), 0.95, "purity at S/N > 10 (a truth object within 1\")")


def test_bright_star_positions(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    stars = truth[np.isin(truth["type"], STAR_TYPES) & isolated(truth, BAND, 3.0, 0.1)]
    idx, d = match(prim, stars, 0.5)
    snr = np.full(len(stars), np.nan)
    snr[idx >= 0] = np.asarray(prim[f"{BAND}_psfFlux"] / prim[f"{BAND}_psfFluxErr"], float)[idx[idx >= 0]]
    sat = np.zeros(len(stars), bool)
    sat[idx >= 0] = np.asarray(prim[f"{BAND}_pixelFlags_saturatedCenter"], bool)[idx[idx >= 0]]
    good = (idx >= 0) & (snr > 100) & ~sat
    off_mas = d[good] * 1000.0
    print(f"\nbright stars: n={good.sum()}, median offset {np.median(off_mas):.1f} mas, "
          f"68% {np.percentile(off_mas, 68):.1f} mas")
    assert good.sum() >= 10
    assert np.median(off_mas) < 10.0


def test_no_duplicates_in_patch_overlaps(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    ra0, dec0 = float(np.mean(prim["coord_ra"])), float(np.mean(prim["coord_dec"]))
    xy = tangent_xy(prim["coord_ra"], prim["coord_dec"], ra0, dec0)
    pairs = cKDTree(xy).query_pairs(0.3)
    assert len(set(prim["patch"])) >= 2
    # the overlaps hold objects: every merged peak of an overlap is in exactly one patch's Object table
    n_overlap = 0
    for ref in repo.query("deepCoadd_mergeDet", runs=[RUN]):
        md = repo.read(ref)
        n_overlap += int(np.sum(~np.asarray(md["detect_isPatchInner"])))
    print(f"\nprimary objects {len(prim)}, peaks in overlaps {n_overlap}, pairs closer than 0.3\": {len(pairs)}")
    assert n_overlap > 10
    assert not pairs, [(prim["objectId"][i], prim["objectId"][j]) for i, j in pairs]


def _fwhm_arcsec(repo) -> float:
    ref = repo.query("deepCoadd", {"band": BAND}, runs=[RUN])[0]
    return float(repo.read(ref).metadata["psf_fwhm_px"]) * 0.2


def test_deblending_of_truth_pairs(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    m10 = _depth(prim)
    fwhm = _fwhm_arcsec(repo)
    f10 = 10 ** (-0.4 * (m10 - 31.4))
    t = truth[np.isin(truth["type"], SIMPLE_TYPES) & covered(repo, [RUN], truth, BAND)]
    f = np.asarray(t[f"{BAND}_flux"], float)
    ra0, dec0 = float(np.mean(t["ra"])), float(np.mean(t["dec"]))
    xy = tangent_xy(t["ra"], t["dec"], ra0, dec0)
    tree = cKDTree(xy)
    bright = f > f10
    idx, d = match(prim, t, 0.5 * max(fwhm, 0.6))
    n_pairs = n_two = 0
    for i, j in tree.query_pairs(3.0 * fwhm):
        if not (bright[i] and bright[j]):
            continue
        sep = float(np.hypot(*(xy[i] - xy[j])))
        ratio = max(f[i], f[j]) / min(f[i], f[j])
        if sep < 1.5 * fwhm or ratio > 10:
            continue
        # a clean pair: no third object as bright as the fainter one within 1.5 FWHM of either
        third = set(tree.query_ball_point(xy[i], 1.5 * fwhm)) | set(tree.query_ball_point(xy[j], 1.5 * fwhm))
        if any(f[k] > min(f[i], f[j]) for k in third - {i, j}):
            continue
        n_pairs += 1
        n_two += int(idx[i] >= 0 and idx[j] >= 0 and idx[i] != idx[j])
    print(f"\ndeblending: FWHM {fwhm:.2f}\", clean pairs {n_pairs}, separated {n_two}")
    # a tiny field holds few such pairs: tests/algorithms/test_deblend.py counts many planted ones
    _binomial_ok(n_two / max(n_pairs, 1), n_pairs, 0.9,
                 "truth pairs at >= 1.5 FWHM, flux ratio <= 10 that become two Objects", min_n=5)


def test_children_fluxes_sum_to_the_parent(object_field):
    repo, truth, objects = object_field
    n_blends = 0
    for ref in repo.query("deepCoadd_deblendedFlux", runs=[RUN]):
        t = repo.read(ref)
        parents = t[t["deblend_nChild"] > 0]
        for p in parents:
            kids = t[t["parent_id"] == p["id"]]
            assert len(kids) == p["deblend_nChild"]
            if p["deblend_flux"] > 0:
                n_blends += 1
                assert np.sum(kids["deblend_flux"]) == pytest.approx(p["deblend_flux"], rel=0.02)
    print(f"\nblends checked: {n_blends}")
    assert n_blends >= 3


def test_star_galaxy_separation_at_snr_above_50(object_field):
    repo, truth, objects = object_field
    prim = objects[objects["detect_isPrimary"]]
    t = truth[np.isin(truth["type"], SIMPLE_TYPES) & isolated(truth, BAND, 2.0, 0.1)]
    idx, _ = match(prim, t, 0.5)
    k = idx >= 0
    o = prim[idx[k]]
    snr = np.asarray(o[f"{o['refBand'][0]}_psfFlux"] / o[f"{o['refBand'][0]}_psfFluxErr"], float)
    snr = np.array([o[f"{b}_psfFlux"][i] / o[f"{b}_psfFluxErr"][i] for i, b in enumerate(o["refBand"])])
    gal = ~np.isin(t["type"][k], STAR_TYPES)
    h = snr > 50
    right = (np.asarray(o["refExtendedness"]) == 1) == gal
    _binomial_ok(float(np.mean(right[h])), int(h.sum()), 0.95, "refExtendedness right at S/N > 50")
