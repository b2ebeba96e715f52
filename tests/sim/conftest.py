"""Tiny simulated fields, built once per test session."""

import pytest

from twinkles.sim.simulate import load_simulation, simulate_field


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    """The tiny preset as shipped (cosmic rays, saturated stars, perturbed header WCS)."""
    return simulate_field(tmp_path_factory.mktemp("sim") / "tiny", preset="tiny", seed=3)


@pytest.fixture(scope="session")
def clean_repo(tmp_path_factory):
    """A tiny field without cosmic rays, for photometry against the truth."""
    return simulate_field(tmp_path_factory.mktemp("sim") / "clean", preset="tiny", seed=5, cosmic_rays=False)


@pytest.fixture(scope="session")
def clean_state(clean_repo):
    """(cfg, sky model, visit rows, renderer) of clean_repo, rebuilt from its recorded seed and options."""
    return load_simulation(clean_repo)
