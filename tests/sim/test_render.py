"""The fast renderer against direct GalSim drawing, and its bookkeeping (flux, charge)."""

import numpy as np
import pytest

from twinkles.sim.cadence import generate_cadence
from twinkles.sim.presets import get_preset
from twinkles.sim.psf import psf_grid, true_psf
from twinkles.sim.render import (GalaxyStamps, add_point_sources, bleed_saturation, convolve_with_psf_grid,
                                 is_fast_disk, render_naive)
from twinkles.sim.simulate import plan_visits
from twinkles.sim.skymodel import make_sky_model
from twinkles.sim.wcs import true_wcs


@pytest.fixture(scope="module")
def field():
    cfg = get_preset("tiny")
    cfg["width"] = cfg["height"] = cfg["size"]
    cadence = generate_cadence(cfg, np.random.default_rng(1))
    sky = make_sky_model(cfg, cadence, np.random.default_rng(2))
    row = dict(plan_visits(cfg, cadence, 0)[0])
    row["trueRotation"] = 30.0  # a rotated WCS exercises the pixel <-> sky Jacobian
    return cfg, sky, row


def _box(img, x, y, h=12):
    ix, iy = int(round(x)), int(round(y))
    return img[iy - h:iy + h + 1, ix - h:ix + h + 1]


def test_smart_galaxies_match_galsim_drawimage(field):
    """Galaxies (the most compact bulges and the brightest disks) rendered by the scene + FFT path agree with
    GalSim's exact galaxy x PSF x pixel drawImage to < 1.5% of the peak pixel and < 1.5% in flux (the true PSF is
    truncated at its 61-pixel stamp, which puts ~0.5% of the flux that GalSim spreads further out inside)."""
    cfg, sky, row = field
    t = sky.truth
    wcs = true_wcs(row, cfg)
    x, y = wcs.all_world2pix(t["ra"], t["dec"], 0)
    gal = np.flatnonzero((t["type"] == "galaxy") & (x > 40) & (x < 470) & (y > 40) & (y < 470))
    pick = list(gal[np.argsort(t["bulgeHlr"][gal])[:3]]) + list(gal[np.argsort(t["r_flux"][gal])[-3:]])
    sub = t[pick]
    grid = psf_grid(row, cfg, cfg["galaxy_core_sigma_px"])
    pad = cfg["psf_stamp_px"] // 2 + 2
    stamps = GalaxyStamps(sub, wcs, 512, 512, pad, 0.2, cfg["galaxy_core_sigma_px"])
    smart = convolve_with_psf_grid(stamps.scene(np.asarray(sub["r_flux"]), np.asarray(sub["r_bulgeFrac"])),
                                   grid, 512, 512, pad)
    naive = render_naive(sub, "r", np.asarray(sub["r_flux"]), 1.0, row, cfg, wcs)
    assert smart.sum() == pytest.approx(naive.sum(), rel=0.015)
    xs, ys = wcs.all_world2pix(sub["ra"], sub["dec"], 0)
    for k in range(len(sub)):
        a, b = _box(smart, xs[k], ys[k]), _box(naive, xs[k], ys[k])
        assert np.abs(a - b).max() < 0.015 * b.max(), f"galaxy {sub['id'][k]}"


def test_fast_disks_match_galsim_drawimage(field):
    """Faint pure disks (the Gaussian-mixture fast path), the largest, the roundest and the most elongated, agree
    with GalSim's exact disk x PSF x pixel drawImage to < 1% of the peak pixel and 0.5% in flux, on a rotated
    WCS (so that the position angle and the Jacobian both matter)."""
    cfg, sky, row = field
    t = sky.truth
    wcs = true_wcs(row, cfg)
    x, y = wcs.all_world2pix(t["ra"], t["dec"], 0)
    fast = np.flatnonzero(is_fast_disk(t) & (x > 40) & (x < 470) & (y > 40) & (y < 470))
    assert len(fast) > 100
    hlr, q = np.asarray(t["diskHlr"])[fast], np.asarray(t["diskQ"])[fast]
    pick = list(fast[np.argsort(hlr)[-3:]]) + list(fast[np.argsort(q)[:3]]) + list(fast[np.argsort(q)[-2:]])
    grid = psf_grid(row, cfg, cfg["galaxy_core_sigma_px"])
    pad = cfg["psf_stamp_px"] // 2 + 2
    for k in pick:  # one at a time: neighbours do not enter the comparison
        sub = t[[k]]
        stamps = GalaxyStamps(sub, wcs, 512, 512, pad, 0.2, cfg["galaxy_core_sigma_px"])
        assert len(stamps.fast_rows) == 1 and len(stamps.rows) == 0
        smart = convolve_with_psf_grid(stamps.scene(np.array([1e4]), np.array([0.0])), grid, 512, 512, pad)
        naive = render_naive(sub, "r", np.array([1e4]), 1.0, row, cfg, wcs)
        a, b = _box(smart, x[k], y[k]), _box(naive, x[k], y[k])
        assert a.sum() == pytest.approx(b.sum(), rel=0.005)
        assert np.abs(a - b).max() < 0.01 * b.max(), (t["id"][k], hlr, np.abs(a - b).max() / b.max())


def _galsim_flux_inside_stamp(row, cfg, x, y, stamp):
    """GalSim's own answer: the PSF (x pixel) at (x, y) drawn on a canvas 8x the stamp (no folding), summed over
    the central ``stamp`` x ``stamp`` pixels."""
    import galsim
    from twinkles.sim.psf import psf_profile
    n = int(cfg["size"])
    c = (n - 1) / 2.0
    length = float(cfg.get("psf_variation_scale_px", 2048))
    prof = galsim.Convolve(psf_profile(row, (x - c) / length, (y - c) / length), galsim.Pixel(0.2))
    big = 8 * stamp + 1
    arr = prof.drawImage(nx=big, ny=big, scale=0.2, method="no_pixel").array
    h, m = stamp // 2, big // 2
    return float(arr[m - h:m + h + 1, m - h:m + h + 1].sum())


def test_smart_point_sources_match_galsim_drawimage(field):
    """Point sources: the stamp holds the flux GalSim puts inside the 61-pixel stamp (the wing beyond it is
    dropped, ~0.3%: the truth's fluxes are totals), and the profile matches GalSim's drawImage."""
    cfg, sky, row = field
    t = sky.truth
    wcs = true_wcs(row, cfg)
    x, y = wcs.all_world2pix(t["ra"], t["dec"], 0)
    stars = np.flatnonzero((t["type"] == "star") & (x > 40) & (x < 470) & (y > 40) & (y < 470))[:5]
    grid = psf_grid(row, cfg)
    img = np.zeros((512, 512))
    for k in stars:  # one at a time, so that neighbours do not enter the comparison
        one = np.zeros((512, 512))
        add_point_sources(one, grid, x[[k]], y[[k]], np.array([1e5]))
        inside = _galsim_flux_inside_stamp(row, cfg, x[k], y[k], grid.stamp)
        assert 0.99 < inside < 0.9995
        assert one.sum() == pytest.approx(1e5 * inside, rel=2e-4)
        naive = render_naive(t, "r", np.full(len(t), 1e5), 1.0, row, cfg, wcs, rows=[k])
        a, b = _box(one, x[k], y[k], 8), _box(naive, x[k], y[k], 8)
        assert np.abs(a - b).max() < 0.003 * b.max()
        img += one


def test_true_psf_is_what_was_rendered(field):
    """true_psf (an ImageGridPSF) reproduces the rendered point-source stamps (its sub-pixel shift is a cubic
    spline of the native stamp, hence the 1% tolerance on the peak)."""
    cfg, sky, row = field
    grid = psf_grid(row, cfg)
    psf = true_psf(row, cfg)
    for x, y in [(100.3, 400.8), (255.5, 255.5), (430.0, 60.2)]:
        img = np.zeros((512, 512))
        add_point_sources(img, grid, [x], [y], [1.0])
        stamp = psf.image_at(x, y, 61)
        ix, iy = int(round(x)), int(round(y))
        rendered = img[iy - 30:iy + 31, ix - 30:ix + 31]
        assert np.abs(rendered - stamp).max() < 0.01 * stamp.max()


def test_bleed_conserves_charge_and_fills_columns():
    charge = np.full((200, 50), 500.0)
    charge[100, 20] = 2.0e6
    charge[101, 21] = 3.0e5
    total = charge.sum()
    full = bleed_saturation(charge, 1.0e5)
    assert charge.max() <= 1.0e5
    assert charge.sum() == pytest.approx(total)
    trail = np.flatnonzero(full[:, 20])
    assert len(trail) >= 19 and np.all(np.diff(trail) == 1) and trail.min() < 100 < trail.max()
    assert full[:, 21].sum() >= 2 and not full[:, 0].any()
