"""Simulation presets: tiny (tests), demo (1k x 1k, ~40 visits in gri), twinkles1 (4k x 4k, Run 1-like cadence).

Every key can be overridden: ``simulate_field(repo, preset="tiny", size=256, cosmic_rays=False)`` or on the
command line ``--size 256 --no-cosmic-rays --set n_sn=10``. Populations marked "sprinkled" are planted at rates far
above nature's (as Twinkles' sprinkler did) so that even a small field holds enough of each kind; the others follow
realistic number counts (see :mod:`twinkles.sim.skymodel`), galaxies down to 1.5 mag beyond the deepest coadd the
cadence makes. Artefacts for the coadd's rejection to remove (:mod:`twinkles.sim.artifacts`): the demo preset has
satellite trails (10% of the visits) and 6 moving transients, tiny 3 moving transients (trails on request:
``--set satellite_trails=true``), twinkles1 none.
"""

from __future__ import annotations

import copy

from . import SimulationInputError

__all__ = ["PRESETS", "get_preset", "FIELD_RA_DEG", "FIELD_DEC_DEG"]

#: The Twinkles field: the ECDFS deep drilling field.
FIELD_RA_DEG = 53.0091
FIELD_DEC_DEG = -27.4389

_COMMON = dict(
    field_ra_deg=FIELD_RA_DEG,
    field_dec_deg=FIELD_DEC_DEG,
    pixel_scale_arcsec=0.2,
    gain=1.0,                     # e-/ADU; eimages are in electrons
    read_noise_e=9.0,             # electrons per pixel (SMTN-002 instrumental noise per exposure)
    saturation_e=100000.0,        # full well, electrons; excess charge bleeds along columns
    exptime_s=30.0,
    # cadence (built-in DDF-like generator)
    start_mjd=59580.0,            # 2022-01-01, the start of OpSim minion_1016 used by Twinkles Run 1
    first_visit=840,
    night_gap_days=(1, 4),        # nights between observed nights (min, max), in season
    season_center_doy=320.0,      # ECDFS (RA 53 deg) is at opposition in mid-November
    season_half_length_days=95.0,
    visits_per_band_night={"u": 1, "g": 1, "r": 1, "i": 1, "z": 1, "y": 1},
    fwhm500_median_arcsec=0.62,   # zenith atmospheric FWHM at 500 nm, log-normal (Cerro Pachon DIMM-like)
    fwhm500_sigma_ln=0.25,
    rot_sky_pos_deg=0.0,          # camera rotation; None: random per visit (as OpSim)
    dither_arcsec=0.0,            # rms of random true pointing offsets (0: DDF-like fixed pointing)
    opsim_radius_deg=0.25,        # OpSim visits whose boresight is within this of the field are used
    cloud_mean_mag=0.02,          # mean grey extinction (exponential distribution), mag
    # perturbed header WCS (PhoSim-like): per-visit random offset (rms per axis) and rotation (rms)
    wcs_offset_arcsec=3.0,
    wcs_rotation_deg=0.02,
    # PSF
    psf_stamp_px=61,              # native size of the true-PSF and point-source stamps (odd), 12.2"
    psf_oversample=4,             # oversampling of the PSF images used to place point sources
    psf_variation_scale_px=2048,  # PSF spatial terms are functions of (x - cx)/this (physical, not per-image)
    galaxy_core_sigma_px=0.6,     # Gaussian core moved from the PSF into galaxy stamps (band-limits the scene)
    psf_astig=0.03,               # optics shear amplitude at the scale radius
    psf_size_r2=0.06,             # fractional growth of the optics FWHM at the scale radius
    psf_atm_g_rms=0.02,           # rms of the per-visit atmospheric reduced shear components
    psf_atm_grad_rms=0.01,        # rms of its linear gradient across the scale radius
    sky_gradient_rms=0.01,        # fractional linear sky gradient across the image
    # sky model
    galaxy_mag_range=(17.0, 25.5),  # r band: bulge + disk galaxies (each drawn with GalSim once per pointing)
    faint_galaxies=True,          # pure-disk galaxies beyond galaxy_mag_range[1] (fast Gaussian-mixture rendering)
    faint_galaxy_mag_max=None,    # r limit of the faint galaxies; None: faint_galaxy_margin_mag beyond the
                                  # deepest coadd of the cadence (skymodel.faint_galaxy_limit)
    faint_galaxy_margin_mag=1.5,  # mag beyond the deepest coadd's 5-sigma depth
    faint_galaxy_slope=0.31,      # d log10 N / dm of the counts beyond galaxy_mag_range[1]
    star_mag_range=(16.0, 25.0),
    bright_star_mag_range=(17.0, 21.0),   # sprinkled unsaturated bright stars (PSF / astrometry)
    saturated_star_mag_range=(12.5, 14.5),
    cosmic_rays=True,
    cosmic_rays_per_mpix=30.0,    # per visit (sprinkled: ~10x a real 30 s exposure at 2.7 km)
    saturated_stars=True,
    # artefacts (truth_artifacts; twinkles.sim.artifacts): satellite trails and moving (asteroid-like) transients
    satellite_trails=False,
    trail_visit_fraction=0.1,     # fraction of the visits crossed by one trail (at least one visit when > 0)
    trail_width_arcsec=1.5,       # FWHM of the trail's Gaussian cross-section before the PSF (defocused LEO: 1-3")
    trail_surface_brightness=(21.0, 22.5),  # peak surface brightness before the PSF, AB mag/arcsec^2 (visit band)
    moving_transients=False,
    n_moving_transients=4,        # per field, each placed on the detector at one randomly chosen visit
    moving_mag_range=(19.0, 21.0),  # r; asteroid (solar-like) colours in the other bands
    moving_rate_deg_per_day=(0.15, 0.5),  # angular speed (main-belt asteroids near opposition: ~0.25 deg/day)
)

PRESETS: dict[str, dict] = {
    "tiny": dict(_COMMON, preset="tiny", size=512, bands="ri", n_visits=6, psf_grid=3, night_gap_days=(3, 5),
                 n_bright_stars=45, n_saturated_stars=2, n_sn=6, n_agn=3, n_lens=1, n_var_stars=4,
                 moving_transients=True, n_moving_transients=3),  # trails: satellite_trails=True (see README)
    "demo": dict(_COMMON, preset="demo", size=1024, bands="gri", n_visits=40, psf_grid=3,
                 n_bright_stars=80, n_saturated_stars=4, n_sn=20, n_agn=8, n_lens=2, n_var_stars=10,
                 satellite_trails=True, moving_transients=True, n_moving_transients=6),
    "twinkles1": dict(_COMMON, preset="twinkles1", size=4096, bands="ugrizy", n_visits=1000, psf_grid=4,
                      visits_per_band_night={"u": 1, "g": 1, "r": 2, "i": 2, "z": 2, "y": 1},
                      n_bright_stars=150, n_saturated_stars=10, n_sn=200, n_agn=60, n_lens=8, n_var_stars=50),
}


#: options whose value None means "computed" (their set values are numbers)
_NONE_MEANS_AUTO = {"faint_galaxy_mag_max"}


def _checked(key: str, value, default):
    """``value`` if it has the kind of ``default`` (numbers for numbers, pairs for pairs, ...), else an error."""
    def bad(kind):
        return SimulationInputError(f"option {key}={value!r}: expected {kind} (default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if default is None and key in _NONE_MEANS_AUTO:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number, or null for the automatic value")
        return float(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if key == "rot_sky_pos_deg" and value is None:
            return None  # random rotation per visit
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise bad(f"a list of {len(default)} numbers, e.g. {list(default)}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(default, **value)
    if isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value


def get_preset(name: str, **overrides) -> dict:
    """A copy of preset ``name`` with ``overrides`` applied (unknown keys are an error)."""
    if name not in PRESETS:
        raise SimulationInputError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name])
    for key, value in overrides.items():
        if key not in cfg:
            raise SimulationInputError(f"unknown simulation option {key!r}; options: {', '.join(sorted(cfg))}")
        cfg[key] = _checked(key, value, cfg[key])
    if int(cfg["size"]) < 64:
        raise SimulationInputError(f"size={cfg['size']}: the detector must be at least 64 pixels across")
    if int(cfg["psf_stamp_px"]) % 2 == 0:
        cfg["psf_stamp_px"] = int(cfg["psf_stamp_px"]) + 1
    bad = [b for b in cfg["bands"] if b not in "ugrizy"]
    if bad or not cfg["bands"]:
        raise SimulationInputError(f"bands={cfg['bands']!r}: use letters from ugrizy, e.g. --bands gri")
    return cfg
