"""The catalogs speak Rubin's Science Data Model: every column of a table ``twinkles sql`` serves that has a
counterpart in DP1 (``dp1.yaml`` of the ``lsst-sdm-schemas`` package) is spelled, typed and united as in DP1.

* spelled: a column whose name differs from a DP1 column of its table only in case or underscores
  (``psfflux``, ``coord_RA``) is a misspelling and fails;
* typed: the same kind (floating, integer, boolean, string, timestamp), at least as wide as DP1's (a float64
  where DP1 has float holds the value exactly; an int32 where DP1 has long would overflow);
* united: the same physical unit as DP1's ``ivoa:unit`` (astropy units: ``pix`` == ``pixel``), and none where
  DP1 has none.

The columns that are ours alone are printed (``pytest -s``). Later stages add their tables to ``TABLES``: a table
no stage writes yet is skipped, saying so.
"""

from __future__ import annotations

import json
from importlib.resources import files

import astropy.units as u
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from twinkles.repo import DATASET_TYPES, Repository
from twinkles.repo.sql import run_sql

#: the catalog tables `twinkles sql` serves that DP1 defines (our SQL name == DP1's table name)
TABLES = ["Source", "Visit", "Object", "ForcedSource", "DiaSource", "DiaObject", "ForcedSourceOnDiaObject"]

#: DP1 datatype -> (kind, minimum bit width)
DP1_TYPES = {"boolean": ("bool", 1), "byte": ("int", 8), "short": ("int", 16), "int": ("int", 32),
             "long": ("int", 64), "float": ("float", 32), "double": ("float", 64), "char": ("string", 0),
             "string": ("string", 0), "text": ("string", 0), "unicode": ("string", 0),
             "timestamp": ("timestamp", 0)}


def _dp1_tables() -> dict:
    schema = yaml.safe_load(files("lsst.sdm.schemas").joinpath("dp1.yaml").read_text())
    return {t["name"]: {c["name"]: c for c in t["columns"]} for t in schema["tables"]}


def _kind(t: pa.DataType) -> tuple[str, int]:
    if pa.types.is_boolean(t):
        return "bool", 1
    if pa.types.is_integer(t):
        return "int", t.bit_width
    if pa.types.is_floating(t):
        return "float", t.bit_width
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string", 0
    if pa.types.is_timestamp(t):
        return "timestamp", 0
    return str(t), 0


def _same_unit(ours: str | None, dp1: str | None) -> bool:
    if not dp1:
        return not ours or u.Unit(ours) == u.dimensionless_unscaled
    return bool(ours) and u.Unit(ours) == u.Unit(dp1)


def _normalized(name: str) -> str:
    return name.replace("_", "").lower()


def check_table(arrow_schema: pa.Schema, units: dict, dp1_columns: dict) -> tuple[list[str], list[str]]:
    """(problems, columns that are ours alone) of one served table against its DP1 table."""
    problems, ours_alone = [], []
    by_normalized = {_normalized(n): n for n in dp1_columns}
    for field in arrow_schema:
        name = field.name
        dp1 = dp1_columns.get(name)
        if dp1 is None:
            near = by_normalized.get(_normalized(name))
            if near is not None:
                problems.append(f"{name}: misspelled, DP1 writes {near}")
            else:
                ours_alone.append(name)
            continue
        want_kind, want_bits = DP1_TYPES[dp1["datatype"]]
        kind, bits = _kind(field.type)
        if kind != want_kind or bits < want_bits:
            problems.append(f"{name}: type {field.type}, DP1 {dp1['datatype']}")
        if not _same_unit(units.get(name), dp1.get("ivoa:unit")):
            problems.append(f"{name}: unit {units.get(name)!r}, DP1 {dp1.get('ivoa:unit')!r}")
    return problems, ours_alone


@pytest.fixture(scope="module")
def processed_repo(tmp_path_factory):
    """A tiny field (2 visits) through every stage that exists (the threads executor, one worker)."""
    from twinkles.sim.simulate import simulate_field
    from twinkles.workflow import run_pipeline
    root = tmp_path_factory.mktemp("dp1") / "repo"
    simulate_field(root, preset="tiny", seed=1, n_visits=2)
    # one visit per band: a template of one visit (the default asks for 3) is enough to write every table
    summary = run_pipeline(root, "l2", executor="threads", workers=1, progress=False, echo=lambda m: None,
                           overrides={"make_template.min_inputs": "1"})
    assert summary.n_failed == 0, summary.failures
    return Repository(root)


@pytest.mark.parametrize("table", TABLES)
def test_served_catalog_columns_match_dp1(processed_repo, table):
    dp1 = _dp1_tables()
    assert table in dp1, f"DP1 has no table {table}"
    dataset_types = [dt.name for dt in DATASET_TYPES.values() if dt.sql_table == table]
    refs = [r for dt in dataset_types for r in processed_repo.query(dt)]
    if not refs:
        pytest.skip(f"no stage writes {table} ({', '.join(dataset_types)}) yet")
    served = run_sql(processed_repo, f'SELECT * FROM "{table}" LIMIT 0').schema
    units: dict = {}
    for ref in refs:  # the units are those of the registered files
        meta = pq.read_schema(processed_repo.abspath(ref)).metadata or {}
        units.update(json.loads(meta.get(b"twinkles_units", b"{}")))
    problems, ours_alone = check_table(served, units, dp1[table])
    print(f"\n{table}: {len(served) - len(ours_alone)} column(s) as in DP1; ours alone: {', '.join(ours_alone)}")
    assert not problems, f"{table}: " + "; ".join(problems)


def test_the_check_finds_misspelled_mistyped_and_misunited_columns():
    dp1 = _dp1_tables()["Source"]
    schema = pa.schema([("psfflux", pa.float64()), ("visit", pa.int32()), ("ra", pa.float64()),
                        ("x", pa.float64()), ("mine", pa.float64())])
    problems, alone = check_table(schema, {"ra": "arcsec", "x": "pix"}, dp1)
    assert problems == ["psfflux: misspelled, DP1 writes psfFlux", "visit: type int32, DP1 long",
                        "ra: unit 'arcsec', DP1 'deg'"]  # x in "pix" is DP1's "pixel"
    assert alone == ["mine"]
