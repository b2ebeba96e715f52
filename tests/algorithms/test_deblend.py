"""Deblending through the coadd stages' run() on a synthetic coadd of planted pairs (stars and small galaxies,
separations 1.5-3 PSF FWHM, flux ratios 1-10, S/N 20-400), against the planted truth."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from astropy.wcs import WCS

from twinkles.algorithms.deblend import deblend, symmetric_template
from twinkles.image import Exposure, PhotoCalib
from twinkles.psf import GaussianPSF
from twinkles.stages import deblend as deblend_stage
from twinkles.stages import detect_coadd, measure_coadd, merge_detections, merge_measurements

FWHM = 4.0
NOISE = 10.0  # nJy per pixel


def _wcs(n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0, -27.4]
    w.wcs.crpix = [n / 2, n / 2]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def _gauss(yy, xx, x, y, sigma):
    return np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma ** 2) / (2 * math.pi * sigma ** 2)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(int(os.environ.get("TWINKLES_TEST_SEED", "12")))
    n, step = 640, 40
    yy, xx = np.mgrid[0:n, 0:n]
    image = np.zeros((n, n))
    s_psf = FWHM / 2.3548
    truth = []
    for cy in range(step, n - step + 1, step):
        for cx in range(step, n - step + 1, step):
            sep = rng.uniform(1.5, 3.0) * FWHM
            ratio = rng.uniform(1.0, 10.0)
            ang = rng.uniform(0, 2 * math.pi)
            f1 = rng.uniform(15000.0, 30000.0)
            size = s_psf if rng.random() < 0.5 else math.hypot(s_psf, 1.2)  # star or small round galaxy
            x1, y1 = cx + rng.uniform(-1, 1), cy + rng.uniform(-1, 1)
            x2, y2 = x1 + sep * math.cos(ang), y1 + sep * math.sin(ang)
            for x, y, f in ((x1, y1, f1), (x2, y2, f1 / ratio)):
                sl = (slice(int(y) - 15, int(y) + 16), slice(int(x) - 15, int(x) + 16))
                image[sl] += f * _gauss(yy[sl], xx[sl], x, y, size)
                truth.append((x, y, f, cx, cy))
    truth = np.array(truth)
    noisy = image + rng.normal(0, NOISE, image.shape)
    exp = Exposure(noisy, None, np.full(image.shape, NOISE ** 2, np.float32), _wcs(n), GaussianPSF(FWHM),
                   PhotoCalib(1.0), None, {})
    det = detect_coadd.run(exp, band="i").peaks
    merged = merge_detections.run({"i": det}, exp.wcs, (0, 0, n, n)).peaks
    db = deblend_stage.run({"i": exp}, merged)
    meas = measure_coadd.run({"i": exp}, "i", merged, db.catalogs["i"]).table
    res = merge_measurements.run({"i": exp}, {"i": meas}, merged, 0, 0, (0, 0, n, n))
    return truth, db, res.objects


def test_pairs_become_two_objects(pairs):
    truth, db, objects = pairs
    prim = objects[objects["detect_isPrimary"]]
    xy = np.column_stack([prim["x"], prim["y"]])
    d = np.hypot(xy[None, :, 0] - truth[:, None, 0], xy[None, :, 1] - truth[:, None, 1])
    nearest = np.argmin(d, axis=1)
    ok = d[np.arange(len(truth)), nearest] < 0.5 * FWHM
    a, b = ok[0::2], ok[1::2]
    two = a & b & (nearest[0::2] != nearest[1::2])
    frac, n = float(two.mean()), len(two)
    print(f"\n{n} planted pairs, {two.sum()} became two Objects ({frac:.3f})")
    assert frac > 0.9 - 2 * math.sqrt(0.9 * 0.1 / n)  # consistent with > 90% (two binomial se)


def test_children_fluxes_sum_to_parent_and_follow_truth(pairs):
    truth, db, objects = pairs
    t = db.catalogs["i"]
    n = 0
    for p in t[t["deblend_nChild"] > 0]:
        kids = t[t["parent_id"] == p["id"]]
        assert np.sum(kids["deblend_flux"]) == pytest.approx(p["deblend_flux"], rel=0.02)
        n += 1
    assert n > 50
    # the children's Kron fluxes: the brighter member of each pair, median within 10% of its truth
    prim = objects[objects["detect_isPrimary"] & (objects["parentObjectId"] != 0)]
    d = np.hypot(prim["x"][None, :] - truth[0::2, None, 0], prim["y"][None, :] - truth[0::2, None, 1])
    j = np.argmin(d, axis=1)
    ok = d[np.arange(len(j)), j] < 1.0
    ratio = np.asarray(prim["i_kronFlux"])[j[ok]] / truth[0::2, 2][ok]
    print(f"\nbright children: Kron / truth median {np.median(ratio):.3f} (n={ok.sum()})")
    assert ok.sum() > 50
    assert abs(np.median(ratio) - 1) < 0.1


def test_symmetric_template_is_symmetric_and_positive():
    yy, xx = np.mgrid[0:21, 0:21]
    det = _gauss(yy, xx, 10, 10, 2.0) + 0.5 * _gauss(yy, xx, 15, 10, 2.0)
    inside = np.ones(det.shape, bool)
    t = symmetric_template(det, inside, 10, 10, 1.0, floor_frac=0.0)
    assert (t >= 0).all()
    assert np.allclose(t, t[::-1, ::-1])
    assert t[10, 15] < det[10, 15]  # the neighbour's light is not in the template
    labels = np.ones(det.shape, np.int32)
    res = deblend(det, labels, [10.0, 15.0], [10.0, 10.0], 2.0)
    assert len(res.blends) == 1
    assert np.allclose(res.blends[0].weights.sum(axis=0), 1.0, atol=1e-5)
