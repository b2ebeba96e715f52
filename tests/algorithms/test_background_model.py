"""The background as a model (mesh values + sep's interpolation): it rebuilds sep's background images, two-pass
ones included, to far below the noise, and round-trips through the repository as ``calexp_background``."""

import numpy as np
import pytest
from pe_synthetic import make_field
from scipy.interpolate import CubicSpline

from twinkles.algorithms.background import (BackgroundModel, background_image, estimate_background,
                                            fit_background_model, grow_mask, move_residual_background,
                                            spline_weights)
from twinkles.repo import Repository


def _sky(shape, seed, noise=30.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = 900.0 + 0.1 * xx - 0.05 * yy + 15 * np.sin(xx / 90.0) * np.cos(yy / 70.0)
    return rng.normal(sky, noise).astype(np.float32), noise


@pytest.mark.parametrize("shape, mesh", [((512, 512), 128), ((300, 460), 64), ((257, 130), 128), ((90, 40), 128),
                                         ((200, 200), 16)])
def test_model_rebuilds_sep_background_exactly(shape, mesh):
    img, noise = _sky(shape, seed=shape[0])
    bkg = estimate_background(img, None, mesh_px=mesh)
    model = fit_background_model(bkg.image, mesh, tolerance=1e-3 * noise)
    assert model.mesh.shape == tuple((n - 1) // max(8, min(mesh, *shape)) + 1 for n in shape)
    rebuilt = model.image()
    assert rebuilt.dtype == np.float32 and rebuilt.shape == shape
    # float32 rounding only (sep computes in float32): ~1e-7 of the level, ~1e-5 sigma
    assert np.abs(rebuilt - bkg.image).max() < 1e-4 * noise
    assert np.array_equal(np.asarray(model), rebuilt)
    y, x = np.array([0, shape[0] - 1, shape[0] // 3]), np.array([shape[1] - 1, 0, shape[1] // 2])
    assert np.allclose(model.at(x, y), bkg.image[y, x], rtol=0, atol=1e-4 * noise)


def test_two_pass_background_is_one_mesh():
    """The processing's background: a first estimate with saturated pixels masked plus the residual re-estimate
    with sources masked (the same mesh, so their meshes add); the model rebuilds it to < 0.01 sigma."""
    f = make_field(n_stars=80, n_galaxies=40, seed=5, mag_range=(16, 20))
    img = np.ascontiguousarray(f.exposure.image, np.float32)
    first = estimate_background(img, None, mesh_px=64)
    total = first.image.copy()
    sub = img - total
    mask = grow_mask(sub > 5 * first.global_rms, 4)
    move_residual_background(sub, total, mask, mesh_px=64)
    model = fit_background_model(total, 64, tolerance=1e-3 * first.global_rms)
    assert np.abs(model.image() - total).max() < 0.01 * first.global_rms
    assert np.abs(model.image() - total).max() < 1e-4 * first.global_rms


def test_sep_interpolation_is_not_a_textbook_spline():
    """Why the weights follow sep's code: scipy's natural cubic spline through the same nodes differs by a visible
    fraction of the noise (SExtractor scales the second derivatives differently), so it would not do."""
    img, noise = _sky((512, 640), seed=9)
    bkg = estimate_background(img, None, mesh_px=64)
    model = fit_background_model(bkg.image, 64)
    ny, nx = model.mesh.shape
    wy = CubicSpline(np.arange(ny), np.eye(ny), bc_type="natural")(np.arange(512) / 64 - 0.5)
    wx = CubicSpline(np.arange(nx), np.eye(nx), bc_type="natural")((np.arange(640) + 0.5) / 64 - 0.5)
    assert np.abs(wy @ model.mesh @ wx.T - bkg.image).max() > 0.01 * noise
    assert np.allclose(spline_weights(640, 64, "x").sum(axis=1), 1.0)  # the weights interpolate a constant


def test_wrong_mesh_or_shape_is_refused():
    img, noise = _sky((256, 256), seed=2)
    bkg = estimate_background(img, None, mesh_px=64)
    with pytest.raises(ValueError, match="was it made with mesh_px=32"):
        fit_background_model(bkg.image, 32, tolerance=1e-3 * noise)
    with pytest.raises(ValueError, match="expected \\(4, 4\\)"):
        BackgroundModel(np.zeros((3, 4)), 64, (256, 256))


def test_background_dataset_round_trip(tmp_path):
    img, noise = _sky((300, 400), seed=4)
    bkg = estimate_background(img, None, mesh_px=128)
    model = fit_background_model(bkg.image, 128, tolerance=1e-3 * noise)
    repo = Repository.create(tmp_path / "repo", {})
    ref = repo.put(model, "calexp_background", {"visit": 1, "detector": 0}, run="runs/t")
    size = (repo.root / ref.path).stat().st_size
    assert size < 20_000  # a few FITS blocks, not a 480 kB image
    back = repo.get("calexp_background", {"visit": 1, "detector": 0})
    assert isinstance(back, BackgroundModel) and back.shape == (300, 400) and back.mesh_px == 128
    assert np.array_equal(back.mesh, model.mesh)
    assert np.abs(background_image(back) - bkg.image).max() < 1e-4 * noise
    assert abs(np.median(back) - np.median(bkg.image)) < 1e-3  # numpy functions see the image
    with pytest.raises(TypeError, match="expected a BackgroundModel"):
        repo.put(bkg.image, "calexp_background", {"visit": 2, "detector": 0}, run="runs/t")
