"""The ``twinkles simulate`` verb. Module-level imports stay light; the simulator is imported in the handler."""

from __future__ import annotations

import sys

__all__ = ["register", "cmd_simulate"]


def _parse_set(items: list[str] | None) -> dict:
    import yaml
    from ..errors import UserError
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write key=value, e.g. --set n_sn=20")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: cannot parse the value ({exc})") from None
    return out


def cmd_simulate(args) -> int:
    from ..errors import UserError
    from . import SimulationInputError
    from .presets import PRESETS
    from .simulate import simulate_field

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
    overrides = _parse_set(args.set)
    if args.size is not None:
        overrides["size"] = args.size
    if args.no_cosmic_rays:
        overrides["cosmic_rays"] = False
    if args.no_saturated_stars:
        overrides["saturated_stars"] = False

    def progress(i, n, info):
        print(f"[{i}/{n}] visit {info['visit']} band {info['band']}: seeing {info['seeing']:.2f}\" "
              f"({info['seconds']:.1f} s)", flush=True)

    try:
        repo = simulate_field(args.repo, preset=args.preset, seed=args.seed, opsim=args.opsim,
                              n_visits=args.visits, bands=args.bands, progress=None if args.quiet else progress,
                              echo=print, **overrides)
    except SimulationInputError as exc:
        raise UserError(str(exc)) from None
    n = len(repo.query("eimage"))
    print(f"simulated {n} visit(s) into {repo.root} (preset {args.preset}, seed {args.seed}): eimage, ref_cat in "
          "run 'raw'; truth_catalog, truth_lightcurves, visit_table, truth_artifacts in run 'truth'", file=sys.stdout)
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser("simulate", help="simulate a Twinkles-like field (eimages, reference catalog, truth)")
    s.add_argument("repo", help="repository directory (created if needed)")
    s.add_argument("--preset", default="tiny", help="tiny (tests), demo (1k x 1k, ~40 gri visits), twinkles1 "
                   "(4k x 4k, Run 1-like cadence)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical pixels)")
    s.add_argument("--opsim", help="take the visits from this OpSim database (its 'observations' table)")
    s.add_argument("--visits", type=int, help="number of visits (default: the preset's)")
    s.add_argument("--bands", help="bands to observe, e.g. gri (default: the preset's; with --opsim, the file's)")
    s.add_argument("--size", type=int, help="detector size in pixels (square)")
    s.add_argument("--no-cosmic-rays", action="store_true", help="do not add cosmic rays")
    s.add_argument("--no-saturated-stars", action="store_true", help="do not plant saturated stars")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any preset option, e.g. --set n_sn=20 --set wcs_offset_arcsec=5")
    s.add_argument("--quiet", action="store_true", help="no per-visit progress")
    s.set_defaults(func=cmd_simulate)
