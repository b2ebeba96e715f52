"""Science fields of the process_eimage tests: tiny fields (512 x 512, 10 visits in r and i) with different seeds,
simulated and processed once per session (``twinkles stage process_eimage``) and shared by every test.

The fields carry more stars (120 sprinkled ones of 18-23 mag instead of 45 of 17-21) and 10 visits (not 6) so
that each figure rests on several hundred measurements; the tests read populations from the truth, never
assume them. ``make test`` runs
:data:`FAST_SEEDS`; the slow marker adds the seeds up to ten (``make test-all``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from twinkles.cli import main as cli_main
from twinkles.repo import Repository

RUN = "runs/l2"
FAST_SEEDS = (1, 2, 3)
SLOW_SEEDS = (4, 5, 6, 7, 8, 9, 10)
FIELD_OPTIONS = dict(n_bright_stars=120, bright_star_mag_range=(18.0, 23.0), n_visits=10)


@dataclass
class ScienceField:
    seed: int
    repo: Repository
    truth: object
    visits: object
    ref_cat: object
    srcs: list
    metas: list
    calexps: dict

    def calexp(self, visit: int):
        if visit not in self.calexps:
            self.calexps[visit] = self.repo.get("calexp", {"visit": visit, "detector": 0}, runs=[RUN])
        return self.calexps[visit]


_FIELDS: dict[int, ScienceField] = {}


def science_field(seed: int, tmp_path_factory, **options) -> ScienceField:
    """The processed field of ``seed`` (and simulation ``options``; built on first use, then shared)."""
    key = (seed,) + tuple(sorted(options.items()))
    if key not in _FIELDS:
        from twinkles.sim.simulate import simulate_field
        root = tmp_path_factory.mktemp(f"science{seed}") / "tiny"
        simulate_field(root, preset="tiny", seed=seed, **dict(FIELD_OPTIONS, **options))
        assert cli_main(["stage", "process_eimage", str(root), "--run", RUN]) == 0
        repo = Repository(root)
        visits = repo.get("visit_table", runs=["truth"])
        dids = [{"visit": int(r["visit"]), "detector": 0} for r in visits]
        _FIELDS[key] = ScienceField(seed, repo, repo.get("truth_catalog", runs=["truth"]), visits,
                                     repo.get("ref_cat"), [repo.get("src", d, runs=[RUN]) for d in dids],
                                     [repo.get("process_eimage_metadata", d, runs=[RUN]) for d in dids], {})
    return _FIELDS[key]


@pytest.fixture(scope="session",
                params=list(FAST_SEEDS) + [pytest.param(s, marks=pytest.mark.slow) for s in SLOW_SEEDS],
                ids=lambda s: f"seed{s}")
def field(request, tmp_path_factory) -> ScienceField:
    """One science field per seed (the tests using it run once per seed)."""
    return science_field(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def fast_fields(tmp_path_factory) -> list[ScienceField]:
    """The fields of FAST_SEEDS together, for figures pooled over fields."""
    return [science_field(s, tmp_path_factory) for s in FAST_SEEDS]


@pytest.fixture(scope="session")
def uzy_field(tmp_path_factory) -> ScienceField:
    """A field observed in u, z and y (bands without reference magnitudes of their own: the calibration goes
    through the stellar-locus colours), 6 visits of 30 s."""
    return science_field(11, tmp_path_factory, bands="uzy")


@pytest.fixture(scope="session")
def ten_fields(tmp_path_factory) -> list[ScienceField]:
    return [science_field(s, tmp_path_factory) for s in FAST_SEEDS + SLOW_SEEDS]
