"""The sky map: tract geometry, patch tiling and overlaps, look-ups, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from twinkles.algorithms.skymap import SkyMap, SkyMapError, footprint_radec, make_discrete_skymap

from .warp_synthetic import DEC0, RA0, make_wcs


def _calexp_wcs():
    # three 1k images: one centred, one shifted 60", one rotated by 30 deg
    return [make_wcs(RA0, DEC0, (512.5, 512.5)), make_wcs(RA0 + 60 / 3600 / np.cos(np.radians(DEC0)), DEC0,
                                                            (512.5, 512.5)),
            make_wcs(RA0, DEC0, (512.5, 512.5), rot_deg=30.0)]


@pytest.fixture(scope="module")
def sky():
    fps = [footprint_radec(w, (1024, 1024)) for w in _calexp_wcs()]
    return make_discrete_skymap(fps, patch_inner_px=400, patch_overlap_px=50)


def test_tract_covers_every_calexp(sky):
    assert sky.n_patches_x * 400 >= 1024 + 300 and sky.n_patches >= 9
    tw = sky.tract_wcs()
    for w in _calexp_wcs():
        ra, dec = footprint_radec(w, (1024, 1024))
        x, y = tw.all_world2pix(ra, dec, 0)
        assert x.min() >= -0.5 and y.min() >= -0.5
        assert x.max() <= sky.n_patches_x * 400 - 0.5 and y.max() <= sky.n_patches_y * 400 - 0.5
        # every calexp pixel's centre falls in the inner region of exactly one patch
        xs = np.linspace(0, 1023, 9)
        X, Y = np.meshgrid(xs, xs)
        r, d = w.all_pix2world(X.ravel(), Y.ravel(), 0)
        assert all(sky.patch_of(a, b) >= 0 for a, b in zip(r, d))
    # north up, east left, 0.2"/px
    assert np.allclose(np.abs(np.diag(tw.pixel_scale_matrix)) * 3600, 0.2)
    assert tw.pixel_scale_matrix[0, 0] < 0


def test_patch_grids_and_overlaps(sky):
    tw = sky.tract_wcs()
    for patch in sky.patches():
        ix, iy = sky.patch_index(patch)
        assert patch == iy * sky.n_patches_x + ix
        pw = sky.patch_wcs(patch)
        assert sky.patch_shape(patch) == (500, 500)
        x0, y0 = sky.patch_origin(patch)
        # the patch's pixel (0, 0) is tract pixel (x0, y0): same sky position
        a = pw.all_pix2world([[0.0, 0.0], [123.0, 456.0]], 0)
        b = tw.all_pix2world([[x0, y0], [x0 + 123.0, y0 + 456.0]], 0)
        assert np.allclose(a, b, atol=1e-10)
        bx0, by0, bx1, by1 = sky.inner_bbox(patch)
        assert (bx0, by0, bx1 - bx0) == (50, 50, 400)
        # the centre of the inner region belongs to this patch
        ra, dec = pw.all_pix2world((bx0 + bx1) / 2, (by0 + by1) / 2, 0)
        assert sky.patch_of(float(ra), float(dec)) == patch
    # neighbours overlap by 2 x 50 px: patch 0's outer region holds the first 50 inner columns of patch 1
    p0, p1 = sky.patch_wcs(0), sky.patch_wcs(1)
    ra, dec = p1.all_pix2world(50.0 + 10, 250.0, 0)
    x, y = p0.all_world2pix(ra, dec, 0)
    assert np.isclose(x, 450 + 10) and np.isclose(y, 250)
    with pytest.raises(SkyMapError, match="does not exist"):
        sky.patch_wcs(sky.n_patches)


def test_patches_overlapping(sky):
    w = _calexp_wcs()[0]
    over = sky.patches_overlapping(w, (1024, 1024))
    # every patch holding a calexp pixel is listed
    X, Y = np.meshgrid(np.arange(0, 1024, 16.0), np.arange(0, 1024, 16.0))
    r, d = w.all_pix2world(X.ravel(), Y.ravel(), 0)
    assert {sky.patch_of(a, b) for a, b in zip(r, d)} <= set(over)
    # a small image in the middle of one patch's inner region overlaps only that patch
    pw = sky.patch_wcs(4)
    ra, dec = pw.all_pix2world(250.0, 250.0, 0)
    small = make_wcs(float(ra), float(dec), (50.5, 50.5))
    assert sky.patches_overlapping(small, (100, 100)) == [4]
    assert sky.patch_of(RA0 + 10, DEC0) == -1


def test_round_trip_dict(sky):
    again = SkyMap.from_dict(sky.to_dict())
    assert again == sky
    assert np.allclose(again.patch_wcs(3).wcs.crpix, sky.patch_wcs(3).wcs.crpix)
    with pytest.raises(SkyMapError, match="unknown keys"):
        SkyMap.from_dict(dict(sky.to_dict(), foo=1))
    with pytest.raises(SkyMapError, match="no calexp"):
        make_discrete_skymap([])
