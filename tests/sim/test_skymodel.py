"""Sky-model pieces: strong lensing, light curves."""

import math

import numpy as np
import pytest

from twinkles.sim.skymodel import drw, rr_lyrae_flux, sn_ia_flux, solve_sis_shear


def test_sis_without_shear_gives_two_images_at_beta_plus_minus_theta_e():
    pos, mu, fermat = solve_sis_shear(np.array([0.3, 0.0]), 1.2, 0.0, 0.0)
    assert len(pos) == 2
    r = np.sort(np.hypot(pos[:, 0], pos[:, 1]))
    assert r == pytest.approx([1.2 - 0.3, 1.2 + 0.3], abs=1e-6)
    # SIS magnifications: mu = 1 / (1 - theta_E / r)
    assert np.sort(np.abs(mu)) == pytest.approx(np.sort(np.abs(1 / (1 - 1.2 / r))), rel=1e-6)
    # the image nearer the lens (the saddle point) arrives last
    assert fermat[np.argmin(np.hypot(pos[:, 0], pos[:, 1]))] > fermat[np.argmax(np.hypot(pos[:, 0], pos[:, 1]))]


def test_sis_with_shear_and_small_offset_gives_a_quad_satisfying_the_lens_equation():
    beta, te, g1, g2 = np.array([0.02, 0.01]), 1.3, 0.08, 0.02
    pos, mu, _ = solve_sis_shear(beta, te, g1, g2)
    assert len(pos) == 4
    gam = np.array([[g1, g2], [g2, -g1]])
    for th in pos:
        back = th - te * th / np.hypot(*th) - gam @ th
        assert back == pytest.approx(beta, abs=1e-8)
    assert (mu > 0).sum() == 2 and (mu < 0).sum() == 2  # two minima, two saddles


def test_damped_random_walk_statistics():
    t = np.sort(np.random.default_rng(0).uniform(0, 40000, 4000))
    x = drw(t, 100.0, 0.2, np.random.default_rng(1))
    assert np.std(x) == pytest.approx(0.2, rel=0.15)
    # structure function at lags << tau is small, at lags >> tau is sqrt(2) sigma
    close = np.abs(np.diff(x))[np.diff(t) < 3]
    assert np.sqrt(np.mean(close ** 2)) < 0.1


def test_sn_light_curve_rises_peaks_and_declines():
    t = np.linspace(59990, 60100, 1101)
    f = sn_ia_flux(t, 60000.0, 0.3, 1000.0, "r")
    assert np.all(f[t < 60000] == 0)
    peak_t = t[np.argmax(f)]
    assert peak_t == pytest.approx(60000 + 18 * 1.3, abs=0.2)
    assert f.max() == pytest.approx(1000.0, rel=1e-3)
    assert f[-1] < 0.3 * f.max()
    g = sn_ia_flux(t, 60000.0, 0.3, 1000.0, "g")
    assert g[-1] / g.max() < f[-1] / f.max()  # bluer bands decline faster


def test_rr_lyrae_is_periodic_with_the_right_amplitude():
    t = np.linspace(0, 3, 3001)
    f = rr_lyrae_flux(t, 0.5, 0.1, 19.0, 0.8)
    assert rr_lyrae_flux(t + 0.5, 0.5, 0.1, 19.0, 0.8) == pytest.approx(f)
    mags = 31.4 - 2.5 * np.log10(f)
    assert mags.max() - mags.min() == pytest.approx(0.8, abs=0.01)
    assert math.isclose(mags.max(), 19.0, abs_tol=0.01)
