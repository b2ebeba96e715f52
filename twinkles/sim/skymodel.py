"""The sky model: the truth catalog and the light curves of every variable source.

Populations (numbers per preset in :mod:`twinkles.sim.presets`):

* ``star`` -- realistic counts for the ECDFS (b = -54 deg): dN/dm = 10^(1.7 + 0.11 (r - 16)) per deg^2 per mag
  (approximately the Bahcall-Soneira / TRILEGAL high-latitude counts), plus *sprinkled* bright unsaturated stars
  (PSF and astrometric fits) and a few saturated stars. Colours follow the SDSS stellar locus (approximate median
  colours of Covey et al. 2007) as a function of g - r, drawn from a halo-turnoff + M-dwarf mixture.
* ``galaxy`` -- realistic counts N(<r) = 28 arcmin^-2 10^(0.33 (r - 24)) (deep r-band counts) over
  ``galaxy_mag_range``, bulge (de Vaucouleurs, truncated at 5 hlr) + disk (exponential, truncated at 4.5 hlr) with
  sizes shrinking with magnitude (median disk hlr 0.6" 10^(-0.11 (r - 22)), log-normal scatter), axis ratios,
  position angles, bulge-to-total ratios of early and late types, and bulge (red) / disk (blue) colours that
  redden with redshift.
  **Faint galaxies** (``faint_galaxies``) continue the counts beyond ``galaxy_mag_range[1]`` (25.5) with the
  flatter faint-end slope d log10 N / dm = ``faint_galaxy_slope`` (0.31, as the LSST Science Book's i-band counts
  and Hogg et al. 1997's R counts), the differential counts continuous at the join (dN/dm = 66 arcmin^-2 mag^-1 =
  2.4e5 deg^-2 mag^-1 at r = 25.5, 3.4e5 at r = 26), down to ``faint_galaxy_mag_max`` -- by default
  (None) ``faint_galaxy_margin_mag`` (1.5) beyond the deepest coadd the cadence can make
  (:func:`faint_galaxy_limit`: r ~ 28.8 for twinkles1, ~27.2 for demo, ~26.4 for tiny, from their full
  cadences; a run with fewer visits (``--visits``) makes a shallower coadd and so stops earlier). They are pure
  exponential disks (bulge fraction 0 in every band, ``bulgeHlr``/``bulgeQ`` NaN), with the same size-magnitude
  relation (hlr ~0.25" at r = 25.5, ~0.13" at r = 28; clipped to 0.05-1.0"), axis ratios 0.2-1 and disk colours;
  the renderer draws pure disks through a fast Gaussian-mixture path (:class:`twinkles.sim.render.GalaxyStamps`).
  They come last in the truth table and are drawn from the sky model's random stream after every other
  population, so that switching them off (or changing their depth) leaves every other object of a seed
  unchanged.
* ``sn`` -- *sprinkled* Type Ia-like supernovae in galaxy hosts at 0.1 < z < 0.6, offset from the host centre
  by ~0.7 disk half-light radii: a t^2 rise over 18 rest-frame days, a linear magnitude decline of 0.035-0.12
  mag/day per band for 25 days then 0.02 mag/day, a secondary bump in r, i, z, y; peak M = -19.3 +- 0.15 at the
  host's distance (flat LCDM H0 = 70, Om = 0.3), crude redshift-dependent colours. Not SALT2. Half of them
  explode during the first half of the visits, the others any time from 60 days before the first visit.
* ``agn`` -- *sprinkled* nuclei in galaxy hosts whose magnitude follows a damped random walk (Kelly et al. 2009,
  MacLeod et al. 2010: tau ~ 200 rest-frame days, SF_inf 0.15-0.3 mag, larger in the blue).
* ``lensed_qso_image`` + ``lens_galaxy`` -- *sprinkled* strongly lensed quasars: a singular isothermal sphere
  plus external shear (Einstein radius 1.0-1.5", shear 0.04-0.1) solved for 2 or 4 images, each with its
  magnification and Fermat time delay; each image's flux is |mu| times the source's DRW light curve delayed.
* ``variable_star`` -- *sprinkled* RR Lyrae-like periodic variables (period 0.45-0.7 d, saw-tooth light curve,
  r amplitude 0.5-0.9 mag, larger in the blue).

Sprinkled objects are placed where they are inside the image at every visit: the detector square (6" margin,
plus 3x the dither rms) when the camera rotation is fixed, its inscribed circle when the rotation changes; the
realistic populations fill a circle covering the detector at any rotation.

Truth columns: ``id, type, ra, dec`` (deg), ``u_flux .. y_flux`` (nJy; static, phase-averaged for periodic
variables, of the mean magnitude for AGN and lensed images, *peak* for supernovae), ``redshift, hostId, lensId``
(-1: none), ``isVariable``; shape columns for galaxies and lens galaxies: ``diskHlr, bulgeHlr`` (arcsec, half-light
radii), ``diskQ, bulgeQ`` (axis ratios), ``pa`` (deg, east of north), ``u_bulgeFrac .. y_bulgeFrac`` (bulge
fraction of the flux in each band); for variables ``period`` (days; periodic stars), ``magnification`` and
``timeDelay`` (days, relative to the first image; lensed images); NaN where not applicable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from .lsst import BANDS, LAMBDA_EFF_NM, mag_to_njy
from .wcs import tan_deproject

__all__ = ["SkyModel", "make_sky_model", "POINT_TYPES", "GALAXY_TYPES", "solve_sis_shear", "drw",
           "sn_ia_flux", "rr_lyrae_flux", "coadd_depths", "faint_galaxy_limit", "galaxy_counts_per_arcmin2",
           "FAINT_HLR_RANGE_ARCSEC"]

POINT_TYPES = ("star", "variable_star", "sn", "agn", "lensed_qso_image")
GALAXY_TYPES = ("galaxy", "lens_galaxy")
BULGE_TRUNC, DISK_TRUNC = 5.0, 4.5  # truncation radii in units of the half-light radius


@dataclass
class SkyModel:
    """Truth catalog plus the true flux of every variable at every visit (in the visit's band)."""

    truth: Table
    var_rows: np.ndarray        # row indices (into truth) of the variable sources
    var_flux: np.ndarray        # (n_var, n_visits) true flux in nJy
    visits: np.ndarray          # visit ids (columns of var_flux)
    xi: np.ndarray              # tangent-plane offsets from the field centre, arcsec (east)
    eta: np.ndarray             # (north)

    def fluxes_at_visit(self, visit_index: int, band: str) -> np.ndarray:
        """Flux (nJy) of every truth object in ``band`` at a visit: static fluxes, variables replaced."""
        flux = np.array(self.truth[f"{band}_flux"], dtype=float)
        flux[self.var_rows] = self.var_flux[:, visit_index]
        return flux


# ---------------------------------------------------------------------------------------- light-curve models
def drw(times: np.ndarray, tau_days: float, sigma_mag: float, rng: np.random.Generator) -> np.ndarray:
    """A damped random walk (Ornstein-Uhlenbeck) in magnitudes, mean 0, at arbitrary sorted or unsorted times.

    Exact update: x(t + dt) = x(t) e^{-dt/tau} + N(0, sigma^2 (1 - e^{-2 dt/tau})), x(t0) ~ N(0, sigma^2);
    sigma = SF_inf / sqrt(2) (Kelly et al. 2009).
    """
    times = np.asarray(times, dtype=float)
    order = np.argsort(times)
    ts = times[order]
    x = np.empty(len(ts))
    if len(ts) == 0:
        return x
    x[0] = rng.normal(0, sigma_mag)
    decay = np.exp(-np.diff(ts) / tau_days)
    noise = rng.normal(0, 1, len(ts) - 1) * sigma_mag * np.sqrt(1 - decay ** 2)
    for k in range(1, len(ts)):
        x[k] = x[k - 1] * decay[k - 1] + noise[k - 1]
    out = np.empty_like(x)
    out[order] = x
    return out


_SN_DECLINE = {"u": 0.12, "g": 0.09, "r": 0.06, "i": 0.045, "z": 0.04, "y": 0.035}  # mag / rest-frame day
_SN_BUMP = {"u": 0.0, "g": 0.0, "r": 0.1, "i": 0.35, "z": 0.35, "y": 0.3}


def sn_ia_flux(t_mjd, t_explosion: float, redshift: float, peak_flux_njy: float, band: str) -> np.ndarray:
    """Type Ia-like light curve (nJy) in ``band``: t^2 rise for 18 rest-frame days, then a linear decline in
    magnitude (band rate for 25 days, 0.02 mag/day after) plus a Gaussian secondary bump in the red at +28 d."""
    tr = (np.asarray(t_mjd, dtype=float) - t_explosion) / (1.0 + redshift)
    rise = 18.0
    f = np.zeros_like(tr)
    early = (tr > 0) & (tr <= rise)
    f[early] = (tr[early] / rise) ** 2
    late = tr > rise
    dt = tr[late] - rise
    dm = _SN_DECLINE[band] * np.minimum(dt, 25.0) + 0.02 * np.maximum(dt - 25.0, 0.0)
    bump = np.exp(-0.5 * ((tr[late] - 28.0) / 6.0) ** 2) * (1.0 - np.exp(-dt / 4.0))  # 0 at peak
    f[late] = 10 ** (-0.4 * dm) + _SN_BUMP[band] * bump
    return peak_flux_njy * f


def _rr_shape(phase):
    """Saw-tooth brightness in [0, 1]: fast rise over 15% of the period, slow decline."""
    phase = np.mod(phase, 1.0)
    return np.where(phase < 0.15, phase / 0.15, 1.0 - (phase - 0.15) / 0.85)


def rr_lyrae_flux(t_mjd, period_days: float, t0: float, faint_mag: float, amp_mag: float) -> np.ndarray:
    """RR Lyrae-like light curve (nJy): mag = faint_mag - amp_mag * shape(phase)."""
    phase = (np.asarray(t_mjd, dtype=float) - t0) / period_days
    return mag_to_njy(faint_mag - amp_mag * _rr_shape(phase))


def _rr_mean_flux(faint_mag: float, amp_mag: float) -> float:
    ph = (np.arange(2000) + 0.5) / 2000
    return float(np.mean(mag_to_njy(faint_mag - amp_mag * _rr_shape(ph))))


# ---------------------------------------------------------------------------------------- strong lensing
def solve_sis_shear(beta: np.ndarray, theta_e: float, gamma1: float, gamma2: float):
    """Images of a point source at ``beta`` (arcsec) behind a singular isothermal sphere + external shear.

    Lens equation beta = theta - theta_E theta/|theta| - G theta, G = [[g1, g2], [g2, -g1]]. Writing
    theta = r e(phi): r (I - G) e = beta + theta_E e, so the direction phi is a root of
    cross((I - G) e, beta + theta_E e) = 0 and r = |beta + theta_E e| / |(I - G) e| (kept when r > 0 and the two
    vectors are parallel, not anti-parallel). Returns (positions (n, 2), magnifications (n,), Fermat potentials
    (n,) in arcsec^2).
    """
    from scipy.optimize import brentq
    g = np.array([[gamma1, gamma2], [gamma2, -gamma1]])
    a_mat = np.eye(2) - g

    def e(phi):
        return np.array([math.cos(phi), math.sin(phi)])

    def f(phi):
        u = a_mat @ e(phi)
        w = beta + theta_e * e(phi)
        return u[0] * w[1] - u[1] * w[0]

    phis = np.linspace(0, 2 * np.pi, 721)
    vals = np.array([f(p) for p in phis])
    pos, mags, fermat = [], [], []
    for k in range(len(phis) - 1):
        if vals[k] == 0 or vals[k] * vals[k + 1] < 0:
            phi = brentq(f, phis[k], phis[k + 1], xtol=1e-12) if vals[k] != 0 else phis[k]
            u = a_mat @ e(phi)
            w = beta + theta_e * e(phi)
            r = float(np.dot(u, w) / np.dot(u, u))
            if r <= 1e-6:
                continue
            th = r * e(phi)
            if any(np.hypot(*(th - p)) < 1e-6 for p in pos):
                continue
            ee = e(phi)
            jac = np.eye(2) - g - theta_e / r * (np.eye(2) - np.outer(ee, ee))
            pos.append(th)
            mags.append(1.0 / np.linalg.det(jac))
            psi = theta_e * r + 0.5 * th @ g @ th
            fermat.append(0.5 * float(np.sum((th - beta) ** 2)) - psi)
    return np.array(pos).reshape(-1, 2), np.array(mags), np.array(fermat)


def _time_delay_days_per_arcsec2(z_lens: float, z_source: float) -> float:
    """(1 + z_l) D_l D_s / (c D_ls) in days per arcsec^2 (multiplies the Fermat potential)."""
    from astropy import constants, units
    from astropy.cosmology import FlatLambdaCDM
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    dl = cosmo.angular_diameter_distance(z_lens)
    ds = cosmo.angular_diameter_distance(z_source)
    dls = cosmo.angular_diameter_distance(z_lens, z_source)
    factor = (1 + z_lens) * dl * ds / (constants.c * dls) * (units.arcsec.to(units.rad)) ** 2
    return float(factor.to(units.day).value)


# ---------------------------------------------------------------------------------------- colours
_LOCUS_GR = np.array([-0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
_LOCUS = {  # approximate median SDSS stellar-locus colours (after Covey et al. 2007) vs g - r
    "ug": np.array([0.6, 0.85, 1.05, 1.4, 1.9, 2.3, 2.5, 2.55, 2.6]),
    "ri": np.array([-0.15, 0.05, 0.13, 0.2, 0.3, 0.42, 0.62, 1.0, 1.5]),
    "iz": np.array([-0.1, 0.0, 0.05, 0.1, 0.15, 0.22, 0.32, 0.5, 0.8]),
    "zy": np.array([-0.05, 0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.25, 0.4]),
}


def _star_mags(rng, r_mag: np.ndarray) -> dict[str, np.ndarray]:
    n = len(r_mag)
    dwarf = rng.random(n) < 0.35
    gr = np.where(dwarf, rng.normal(1.35, 0.15, n), rng.normal(0.35, 0.12, n))
    gr = np.clip(gr, -0.2, 1.6)

    def loc(name):
        return np.interp(gr, _LOCUS_GR, _LOCUS[name]) + rng.normal(0, 0.03, n)
    g = r_mag + gr
    i = r_mag - loc("ri")
    z = i - loc("iz")
    return {"u": g + loc("ug"), "g": g, "r": r_mag, "i": i, "z": z, "y": z - loc("zy")}


def _mags_from_colours(r_mag, colours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Magnitudes from r and the colours u-g, g-r, r-i, i-z, z-y."""
    g = r_mag + colours["gr"]
    i = r_mag - colours["ri"]
    z = i - colours["iz"]
    return {"u": g + colours["ug"], "g": g, "r": r_mag, "i": i, "z": z, "y": z - colours["zy"]}


def _bulge_colours(z, rng, n):
    s = lambda: rng.normal(0, 0.04, n)  # noqa: E731
    return {"ug": 1.6 + 0.6 * z + s(), "gr": np.minimum(0.75 + 0.8 * z, 1.8) + s(),
            "ri": np.minimum(0.38 + 0.45 * z, 1.2) + s(), "iz": 0.2 + 0.25 * z + s(), "zy": 0.1 + 0.1 * z + s()}


def _disk_colours(z, rng, n):
    s = lambda: rng.normal(0, 0.06, n)  # noqa: E731
    return {"ug": 0.9 + 0.2 * z + s(), "gr": np.minimum(0.35 + 0.4 * z, 1.2) + s(),
            "ri": 0.2 + 0.3 * z + s(), "iz": 0.1 + 0.2 * z + s(), "zy": 0.05 + 0.1 * z + s()}


_QSO_COLOURS = {"ug": 0.2, "gr": 0.15, "ri": 0.1, "iz": 0.05, "zy": 0.05}
_SN_COLOUR_BASE = {"u": 0.4, "g": 0.0, "r": 0.1, "i": 0.6, "z": 0.7, "y": 0.8}   # relative to g at peak
_SN_COLOUR_SLOPE = {"u": 3.0, "g": 1.5, "r": 0.5, "i": -0.3, "z": -0.5, "y": -0.6}  # per unit redshift


# ---------------------------------------------------------------------------------------- sampling helpers
def _sample_exp_mags(rng, n, lo, hi, slope):
    """Magnitudes in [lo, hi] with density proportional to 10^(slope m)."""
    u = rng.random(n)
    span = 10 ** (slope * (hi - lo)) - 1
    return lo + np.log10(1 + u * span) / slope


#: galaxy counts: N(<r) = BRIGHT_N24 arcmin^-2 10^(BRIGHT_SLOPE (r - 24)) up to galaxy_mag_range[1]
BRIGHT_N24, BRIGHT_SLOPE = 28.0, 0.33
#: disk half-light radii of the faint population are clipped to this range (arcsec)
FAINT_HLR_RANGE_ARCSEC = (0.05, 1.0)
#: median (band - r) of faint disks (the disk colours at z = 1, the median redshift beyond r = 26)
_FAINT_MINUS_R = {"u": 0.9 + 0.2 + 0.75, "g": 0.75, "r": 0.0, "i": -0.5, "z": -0.8, "y": -0.95}


def galaxy_counts_per_arcmin2(cfg: dict, r_lo: float, r_hi: float, faint_limit: float | None = None) -> float:
    """Expected number of galaxies per arcmin^2 with r_lo <= r < r_hi in the model of preset ``cfg``: the bright
    law over ``galaxy_mag_range``, then (with ``faint_galaxies``) the faint law of slope ``faint_galaxy_slope``
    from ``galaxy_mag_range[1]`` to ``faint_limit`` (default :func:`faint_galaxy_limit` needs a cadence, so pass
    it), the differential counts continuous at the join."""
    glo, ghi = cfg["galaxy_mag_range"]
    a = max(r_lo, glo)
    b = min(r_hi, ghi)
    n = BRIGHT_N24 * (10 ** (BRIGHT_SLOPE * (b - 24)) - 10 ** (BRIGHT_SLOPE * (a - 24))) if b > a else 0.0
    if cfg.get("faint_galaxies") and faint_limit is not None:
        s = float(cfg["faint_galaxy_slope"])
        d_join = BRIGHT_N24 * BRIGHT_SLOPE * math.log(10) * 10 ** (BRIGHT_SLOPE * (ghi - 24))  # dN/dm at the join
        a, b = max(r_lo, ghi), min(r_hi, faint_limit)
        if b > a:
            n += d_join / (s * math.log(10)) * (10 ** (s * (b - ghi)) - 10 ** (s * (a - ghi)))
    return n


def coadd_depths(cadence: Table) -> dict:
    """5-sigma point-source depth of the full-depth coadd of each band of a cadence, from the visits' depths:
    m5_coadd = 1.25 log10(sum 10^(0.8 m5_i)) (inverse-variance weighting of sky-limited visits)."""
    out = {}
    bands = np.asarray(cadence["band"]).astype(str)
    m5 = np.asarray(cadence["fiveSigmaDepth"], dtype=float)
    for b in sorted(set(bands.tolist())):
        v = m5[(bands == b) & np.isfinite(m5)]
        if len(v):
            out[b] = float(1.25 * np.log10(np.sum(10 ** (0.8 * v))))
    return out


def faint_galaxy_limit(cfg: dict, cadence: Table) -> float:
    """r magnitude down to which faint galaxies are simulated: ``faint_galaxy_mag_max`` if set, else
    ``faint_galaxy_margin_mag`` beyond the deepest coadd of the cadence, each band's depth expressed in r with
    the median colour of faint disks (a galaxy of r = limit - margin is at the 5-sigma depth of the best band)."""
    if cfg.get("faint_galaxy_mag_max") is not None:
        return float(cfg["faint_galaxy_mag_max"])
    depths = coadd_depths(cadence)
    if not depths:
        return float(cfg["galaxy_mag_range"][1])
    deepest_r = max(m5 - _FAINT_MINUS_R[b] for b, m5 in depths.items())
    return max(float(deepest_r + float(cfg["faint_galaxy_margin_mag"])), float(cfg["galaxy_mag_range"][1]))


def _disk_positions(rng, n, radius_arcsec):
    r = radius_arcsec * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return r * np.cos(t), r * np.sin(t)


class _InnerRegion:
    """Where sprinkled objects go so that they are inside the image in every visit: the detector square (minus
    margins) on the sky when the camera rotation is fixed, else its inscribed circle (``half`` arcsec)."""

    def __init__(self, half: float, rotation_deg: float | None):
        self.half, self.rot = half, rotation_deg

    def _to_pixel_frame(self, xi, eta):
        t = math.radians(self.rot)
        # inverse of (xi, eta) = [[-cos, sin], [sin, cos]] (dx, dy): the matrix is its own inverse
        return -math.cos(t) * xi + math.sin(t) * eta, math.sin(t) * xi + math.cos(t) * eta

    def sample(self, rng, n, shrink: float = 1.0, margin: float = 0.0):
        half = max(self.half * shrink - margin, 1.0)
        if self.rot is None:
            return _disk_positions(rng, n, half)
        dx, dy = rng.uniform(-half, half, n), rng.uniform(-half, half, n)
        return self._to_pixel_frame(dx, dy)

    def contains(self, xi, eta):
        if self.rot is None:
            return np.hypot(xi, eta) < self.half
        dx, dy = self._to_pixel_frame(np.asarray(xi), np.asarray(eta))
        return (np.abs(dx) < self.half) & (np.abs(dy) < self.half)


class _Builder:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, **kw):
        kw["id"] = len(self.rows) + 1
        self.rows.append(kw)
        return kw["id"]


def _faint_galaxies(cfg: dict, cadence: Table, rng: np.random.Generator, cover: float, area_arcmin2: float):
    """The faint pure-disk population (see the module docstring), as arrays: xi, eta (arcsec), mags per band,
    and the truth columns of galaxies."""
    ghi = float(cfg["galaxy_mag_range"][1])
    limit = faint_galaxy_limit(cfg, cadence)
    s = float(cfg["faint_galaxy_slope"])
    n = int(rng.poisson(galaxy_counts_per_arcmin2(cfg, ghi, limit, limit) * area_arcmin2)) if limit > ghi else 0
    r = _sample_exp_mags(rng, n, ghi, limit, s)
    xi, eta = _disk_positions(rng, n, cover)
    z = np.clip(np.clip(0.12 + 0.11 * (r - 18.0), 0.05, 1.5) * np.exp(rng.normal(0, 0.35, n)), 0.02, 4.0)
    lo, hi = FAINT_HLR_RANGE_ARCSEC
    hlr = np.clip(0.6 * 10 ** (-0.11 * (r - 22.0)) * np.exp(rng.normal(0, 0.3, n)), lo, hi)
    q = rng.uniform(0.2, 1.0, n)
    pa = rng.uniform(0, 180, n)
    mags = _mags_from_colours(r, _disk_colours(z, rng, n))
    out = dict(xi=xi, eta=eta, mags=mags, redshift=z, diskHlr=hlr, diskQ=q, pa=pa,
               **{f"{bb}_bulgeFrac": np.zeros(n) for bb in BANDS})
    return out


def make_sky_model(cfg: dict, cadence: Table, rng: np.random.Generator) -> SkyModel:
    """Build the truth catalog and light curves for a preset configuration and a cadence."""
    scale = float(cfg["pixel_scale_arcsec"])
    width = int(cfg.get("width", cfg["size"]))
    height = int(cfg.get("height", cfg["size"]))
    dither = 3.0 * float(cfg.get("dither_arcsec", 0.0))
    cover = 0.5 * math.hypot(width, height) * scale + 8.0 + dither       # any rotation, plus PSF margin
    inner = 0.5 * min(width, height) * scale - 6.0 - dither              # always inside the image
    if inner <= 2.0:
        inner = 0.4 * min(width, height) * scale
    rots = np.asarray(cadence["rotSkyPos"], dtype=float)
    fixed_rot = float(rots[0]) if len(rots) and np.ptp(rots) == 0 else None
    region = _InnerRegion(inner, fixed_rot)
    area_arcmin2 = math.pi * cover ** 2 / 3600.0
    b = _Builder()
    xi_l, eta_l, mags_l, extra_l = [], [], [], []

    def add(kind, xi, eta, mags: dict, **extra):
        oid = b.add(type=kind, **extra)
        xi_l.append(xi)
        eta_l.append(eta)
        mags_l.append(mags)
        return oid

    # ---- stars: realistic counts, sprinkled bright ones, saturated ones
    lo, hi = cfg["star_mag_range"]
    a = 0.11
    norm = 10 ** 1.7 / (a * math.log(10)) * (10 ** (a * (hi - 16)) - 10 ** (a * (lo - 16)))  # per deg^2
    n_real = rng.poisson(norm * area_arcmin2 / 3600.0)
    r_real = _sample_exp_mags(rng, n_real, lo, hi, a)
    xs, ys = _disk_positions(rng, n_real, cover)
    blo, bhi = cfg["bright_star_mag_range"]
    r_bright = rng.uniform(blo, bhi, int(cfg["n_bright_stars"]))
    xb, yb = region.sample(rng, len(r_bright))
    n_sat = int(cfg["n_saturated_stars"]) if cfg.get("saturated_stars", True) else 0
    slo, shi = cfg["saturated_star_mag_range"]
    r_sat = rng.uniform(slo, shi, n_sat)
    xsat, ysat = region.sample(rng, n_sat, shrink=0.8)
    r_all = np.concatenate([r_real, r_bright, r_sat])
    x_all, y_all = np.concatenate([xs, xb, xsat]), np.concatenate([ys, yb, ysat])
    smags = _star_mags(rng, r_all)
    for k in range(len(r_all)):
        add("star", x_all[k], y_all[k], {bb: smags[bb][k] for bb in BANDS})

    # ---- periodic variable stars (RR Lyrae-like)
    var_specs = []
    n_rr = int(cfg["n_var_stars"])
    xr, yr = region.sample(rng, n_rr)
    for k in range(n_rr):
        faint = rng.uniform(18.0, 21.0)
        amp_r = rng.uniform(0.5, 0.9)
        gr = rng.uniform(0.1, 0.3)
        faint_b = {"u": faint + gr + 1.1, "g": faint + gr, "r": faint, "i": faint - 0.1, "z": faint - 0.15,
                   "y": faint - 0.18}
        amp_b = {bb: amp_r * (LAMBDA_EFF_NM[bb] / LAMBDA_EFF_NM["r"]) ** -0.8 for bb in BANDS}
        period = rng.uniform(0.45, 0.7)
        t0 = rng.uniform(0, period)
        mean = {bb: _rr_mean_flux(faint_b[bb], amp_b[bb]) for bb in BANDS}
        oid = add("variable_star", xr[k], yr[k], {bb: 31.4 - 2.5 * math.log10(mean[bb]) for bb in BANDS},
                  isVariable=True, period=period)
        var_specs.append(("rr", oid, dict(period=period, t0=t0, faint=faint_b, amp=amp_b)))

    # ---- galaxies: realistic counts
    glo, ghi = cfg["galaxy_mag_range"]
    slope = BRIGHT_SLOPE
    n_lt = galaxy_counts_per_arcmin2(dict(cfg, faint_galaxies=False), glo, ghi)  # per arcmin^2
    n_gal = rng.poisson(n_lt * area_arcmin2)
    r_gal = _sample_exp_mags(rng, n_gal, glo, ghi, slope)
    xg, yg = _disk_positions(rng, n_gal, cover)
    z_med = np.clip(0.12 + 0.11 * (r_gal - 18.0), 0.05, 1.5)
    zgal = np.clip(z_med * np.exp(rng.normal(0, 0.35, n_gal)), 0.02, 4.0)
    early = rng.random(n_gal) < 0.25
    bt = np.where(early, rng.uniform(0.6, 1.0, n_gal), rng.uniform(0.0, 0.35, n_gal))
    hlr_d = np.clip(0.6 * 10 ** (-0.11 * (r_gal - 22.0)) * np.exp(rng.normal(0, 0.3, n_gal)), 0.12, 6.0)
    hlr_b = np.clip(hlr_d * rng.uniform(0.3, 0.7, n_gal), 0.08, 3.0)
    q_d, q_b = rng.uniform(0.2, 1.0, n_gal), rng.uniform(0.6, 1.0, n_gal)
    pa = rng.uniform(0, 180, n_gal)
    cb, cd = _bulge_colours(zgal, rng, n_gal), _disk_colours(zgal, rng, n_gal)
    flux_r = mag_to_njy(r_gal)
    mb = _mags_from_colours(np.zeros(n_gal), cb)  # band offsets relative to r
    md = _mags_from_colours(np.zeros(n_gal), cd)
    gal_ids = []
    for k in range(n_gal):
        fb = {bb: bt[k] * flux_r[k] * 10 ** (-0.4 * mb[bb][k]) for bb in BANDS}
        fd = {bb: (1 - bt[k]) * flux_r[k] * 10 ** (-0.4 * md[bb][k]) for bb in BANDS}
        tot = {bb: fb[bb] + fd[bb] for bb in BANDS}
        extra = dict(redshift=zgal[k], diskHlr=hlr_d[k], bulgeHlr=hlr_b[k], diskQ=q_d[k], bulgeQ=q_b[k],
                     pa=pa[k], **{f"{bb}_bulgeFrac": fb[bb] / tot[bb] for bb in BANDS})
        gal_ids.append(add("galaxy", xg[k], yg[k], {bb: 31.4 - 2.5 * math.log10(tot[bb]) for bb in BANDS},
                           **extra))
    gal_ids = np.array(gal_ids, dtype=np.int64)
    in_inner = region.contains(xg, yg)

    # ---- lensed quasars: lens galaxy + 2 or 4 images
    t_all = np.asarray(cadence["mjd"], dtype=float)
    n_lens = int(cfg["n_lens"])
    lens_pos = []
    for k in range(n_lens):
        for _ in range(100):
            lx, ly = region.sample(rng, 1, margin=4.0)
            if all(math.hypot(lx[0] - p[0], ly[0] - p[1]) > 15 for p in lens_pos):
                break
        lens_pos.append((lx[0], ly[0]))
        zl, zs = rng.uniform(0.3, 0.6), rng.uniform(1.5, 2.8)
        theta_e = rng.uniform(1.0, 1.5)
        want = 4 if k % 2 == 0 else 2
        for _ in range(300):
            gam, ang = rng.uniform(0.04, 0.1), rng.uniform(0, np.pi)
            g1, g2 = gam * math.cos(2 * ang), gam * math.sin(2 * ang)
            rad = theta_e * (rng.uniform(0, 0.12) if want == 4 else rng.uniform(0.2, 0.6))
            phi = rng.uniform(0, 2 * np.pi)
            beta = np.array([rad * math.cos(phi), rad * math.sin(phi)])
            pos, mu, fermat = solve_sis_shear(beta, theta_e, g1, g2)
            if len(pos) == want:
                break
        lr = rng.uniform(19.5, 20.5)
        lc = _bulge_colours(np.array([zl]), rng, 1)
        lm = _mags_from_colours(np.array([lr]), lc)
        hlr = rng.uniform(0.7, 1.1)
        lens_id = add("lens_galaxy", lx[0], ly[0], {bb: float(lm[bb][0]) for bb in BANDS}, redshift=zl,
                      diskHlr=hlr, bulgeHlr=hlr, diskQ=1.0, bulgeQ=rng.uniform(0.6, 0.9),
                      pa=rng.uniform(0, 180), **{f"{bb}_bulgeFrac": 1.0 for bb in BANDS})
        b.rows[-1]["lensId"] = lens_id
        delays = _time_delay_days_per_arcsec2(zl, zs) * (fermat - fermat.min())
        src_r = rng.uniform(21.5, 22.5)
        src_m = _mags_from_colours(np.array([src_r]), {c: np.array([v]) for c, v in _QSO_COLOURS.items()})
        tau = 200.0 * (1 + zs) * math.exp(rng.normal(0, 0.3))
        sf = rng.uniform(0.2, 0.3)
        # the source's DRW at every (visit time - delay of each image), jointly
        times = np.concatenate([t_all - d for d in delays])
        x = drw(times, tau, sf / math.sqrt(2), rng).reshape(len(delays), len(t_all))
        for m in range(len(pos)):
            mean = {bb: float(src_m[bb][0]) - 2.5 * math.log10(abs(mu[m])) for bb in BANDS}
            oid = add("lensed_qso_image", lx[0] + pos[m][0], ly[0] + pos[m][1], mean, redshift=zs,
                      lensId=lens_id, hostId=-1, isVariable=True, magnification=float(mu[m]),
                      timeDelay=float(delays[m]))
            var_specs.append(("drw", oid, dict(mean=mean, x=x[m])))

    # ---- AGN in galaxy hosts
    n_agn = int(cfg["n_agn"])
    cand = np.flatnonzero(in_inner)
    if len(cand) == 0:
        cand = np.arange(n_gal)
    hosts_agn = rng.choice(cand, size=n_agn, replace=n_agn > len(cand)) if n_gal else np.array([], int)
    for k in hosts_agn:
        zq = float(zgal[k])
        r_nuc = rng.uniform(20.0, 22.5)
        m = _mags_from_colours(np.array([r_nuc]), {c: np.array([v]) for c, v in _QSO_COLOURS.items()})
        mean = {bb: float(m[bb][0]) for bb in BANDS}
        tau = 200.0 * (1 + zq) * math.exp(rng.normal(0, 0.3))
        sf = rng.uniform(0.15, 0.3)
        x = drw(t_all, tau, sf / math.sqrt(2), rng)
        oid = add("agn", xg[k], yg[k], mean, redshift=zq, hostId=int(gal_ids[k]), isVariable=True)
        var_specs.append(("drw", oid, dict(mean=mean, x=x)))

    # ---- supernovae in hosts at 0.1 < z < 0.6 (visible in single visits), exploding during the visits
    n_sn = int(cfg["n_sn"])
    cand = np.flatnonzero(in_inner & (zgal > 0.1) & (zgal < 0.6))
    cand = np.setdiff1d(cand, hosts_agn) if len(cand) > n_sn + len(hosts_agn) else cand
    if len(cand) == 0:
        cand = np.flatnonzero(in_inner) if in_inner.any() else np.arange(n_gal)
    hosts_sn = rng.choice(cand, size=n_sn, replace=n_sn > len(cand)) if n_gal else np.array([], int)
    t0, t1 = float(t_all.min()), float(t_all.max())
    span = max(t1 - t0, 1.0)
    from astropy.cosmology import FlatLambdaCDM
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    for n_done, k in enumerate(hosts_sn):
        zq = float(min(max(zgal[k], 0.1), 0.6))
        off = hlr_d[k] * abs(rng.normal(0, 0.7))
        ang = rng.uniform(0, 2 * np.pi)
        if n_done % 2 == 0:  # half explode during the first half of the visits (sprinkled to be caught rising)
            t_exp = rng.uniform(t0, t0 + 0.5 * span)
        else:  # the others at any time from two months before the first visit (some caught declining)
            t_exp = rng.uniform(t0 - 60.0, t1 - 0.3 * span)
        m_peak_g = -19.3 + rng.normal(0, 0.15) + float(cosmo.distmod(zq).value)
        peak = {bb: m_peak_g + _SN_COLOUR_BASE[bb] + _SN_COLOUR_SLOPE[bb] * zq for bb in BANDS}
        oid = add("sn", xg[k] + off * math.cos(ang), yg[k] + off * math.sin(ang), peak, redshift=zq,
                  hostId=int(gal_ids[k]), isVariable=True)
        var_specs.append(("sn", oid, dict(t_exp=t_exp, z=zq, peak={bb: float(mag_to_njy(peak[bb]))
                                                                    for bb in BANDS})))

    # ---- faint galaxies (pure disks), drawn last so that the populations above do not depend on them
    faint = _faint_galaxies(cfg, cadence, rng, cover, area_arcmin2) if cfg.get("faint_galaxies") else None

    # ---- assemble the truth table
    n = len(b.rows)
    xi, eta = np.array(xi_l, dtype=float), np.array(eta_l, dtype=float)
    cols: dict[str, np.ndarray] = {
        "id": np.array([r["id"] for r in b.rows], dtype=np.int64),
        "type": np.array([r["type"] for r in b.rows], dtype="U16")}
    mags = {bb: np.array([m[bb] for m in mags_l], dtype=float) for bb in BANDS}
    specs = [("redshift", np.nan, float), ("hostId", -1, np.int64), ("lensId", -1, np.int64),
             ("isVariable", False, bool), ("diskHlr", np.nan, float), ("bulgeHlr", np.nan, float),
             ("diskQ", np.nan, float), ("bulgeQ", np.nan, float), ("pa", np.nan, float),
             *[(f"{bb}_bulgeFrac", np.nan, float) for bb in BANDS],
             ("period", np.nan, float), ("magnification", np.nan, float), ("timeDelay", np.nan, float)]
    extra = {name: np.array([r.get(name, default) for r in b.rows], dtype=dtype) for name, default, dtype in specs}
    if faint is not None and len(faint["xi"]):
        nf = len(faint["xi"])
        cols["id"] = np.concatenate([cols["id"], n + 1 + np.arange(nf, dtype=np.int64)])
        cols["type"] = np.concatenate([cols["type"], np.full(nf, "galaxy", dtype="U16")])
        xi, eta = np.concatenate([xi, faint["xi"]]), np.concatenate([eta, faint["eta"]])
        for bb in BANDS:
            mags[bb] = np.concatenate([mags[bb], faint["mags"][bb]])
        for name, default, dtype in specs:
            extra[name] = np.concatenate([extra[name], np.asarray(faint.get(name, np.full(nf, default)),
                                                                   dtype=dtype)])
        n += nf
    ra, dec = tan_deproject(xi / 3600.0, eta / 3600.0, cfg["field_ra_deg"], cfg["field_dec_deg"])
    cols["ra"], cols["dec"] = ra, dec
    for bb in BANDS:
        cols[f"{bb}_flux"] = mag_to_njy(mags[bb])
    cols.update(extra)
    truth = Table(cols)

    # ---- light curves at every visit, in the visit's band
    bands = np.asarray(cadence["band"])
    var_rows = np.array([oid - 1 for _, oid, _ in var_specs], dtype=np.int64)
    var_flux = np.zeros((len(var_specs), len(t_all)))
    for v, (kind, oid, p) in enumerate(var_specs):
        for bb in set(bands.tolist()):
            sel = bands == bb
            if kind == "rr":
                var_flux[v, sel] = rr_lyrae_flux(t_all[sel], p["period"], p["t0"], p["faint"][bb], p["amp"][bb])
            elif kind == "drw":
                amp = (LAMBDA_EFF_NM[bb] / LAMBDA_EFF_NM["r"]) ** -0.5
                var_flux[v, sel] = mag_to_njy(p["mean"][bb] + amp * p["x"][sel])
            else:
                var_flux[v, sel] = sn_ia_flux(t_all[sel], p["t_exp"], p["z"], p["peak"][bb], bb)
    assert n == len(truth)
    return SkyModel(truth, var_rows, var_flux, np.asarray(cadence["visit"], dtype=np.int64), xi, eta)
