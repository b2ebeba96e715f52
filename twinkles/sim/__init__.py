"""The Twinkles-like field simulator: cadence, sky model (truth), per-visit PSF and WCS, rendering, ref catalog.

Entry points: :func:`twinkles.sim.simulate.simulate_field` (Python) and ``twinkles simulate`` (CLI, in
:mod:`twinkles.sim.cli`). Imports here stay light: GalSim and astropy.cosmology are imported where they are used.
"""

__all__ = ["SimulationInputError"]


class SimulationInputError(ValueError):
    """The simulator's input is unusable (unknown preset, unreadable OpSim file, missing column, bad option)."""
