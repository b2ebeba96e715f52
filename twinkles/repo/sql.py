"""SQL over the repository's catalogs with DuckDB (``twinkles sql REPO "SELECT ..."``).

Each catalog dataset type with an SQL table name (repo/datasets.py: Source, Object, ForcedSource, DiaSource,
DiaObject, ForcedSourceOnDiaObject, Truth, TruthFlux, Visit, RefCat) becomes a view over its registered Parquet
files (the newest run of each data ID, or the given runs). The registry's own tables (datasets, runs, and the job
records of the workflow) are there too, under their SQLite names, so catalogs join with job records by visit. Tables with no registered file are absent; the error
for a query naming one says which tables exist.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from .datasets import DATASET_TYPES
from .repository import Repository

__all__ = ["connect_catalogs", "run_sql", "format_table", "SqlError"]


class SqlError(RuntimeError):
    pass


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def connect_catalogs(repo: Repository | str, runs: list[str] | None = None) -> tuple[duckdb.DuckDBPyConnection,
                                                                                      list[str]]:
    """An in-memory DuckDB connection with one view per catalog table; returns (connection, table names)."""
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    con = duckdb.connect(":memory:")
    tables = []
    for dt in DATASET_TYPES.values():
        if dt.storage != "Catalog" or not dt.sql_table:
            continue
        refs = repo.query(dt.name, runs=runs)
        if not refs:
            continue
        files = ", ".join(_quote(str(repo.abspath(r))) for r in refs)
        con.execute(f'CREATE VIEW "{dt.sql_table}" AS SELECT * FROM read_parquet([{files}], union_by_name=true)')
        tables.append(dt.sql_table)
    for name, table in _registry_tables(repo).items():
        con.register(name, table)
        tables.append(name)
    return con, tables


def _registry_tables(repo: Repository) -> dict[str, pa.Table]:
    """The registry's own tables (datasets, runs, and the workflow's job records) as Arrow tables."""
    out = {}
    with repo.read_only() as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            cur = conn.execute(f'SELECT * FROM "{name}"')
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            out[name] = pa.table({c: [row[i] for row in rows] for i, c in enumerate(cols)})
    return out


def run_sql(repo: Repository | str, query: str, runs: list[str] | None = None) -> pa.Table:
    con, tables = connect_catalogs(repo, runs)
    try:
        relation = con.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise SqlError(f"{exc}\nTables in this repository: {', '.join(tables) or '(none yet)'}") from None
    finally:
        con.close()


def format_table(table: pa.Table, max_rows: int = 50) -> str:
    """A plain-text rendering of an Arrow table (the first ``max_rows`` rows)."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_fmt(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more rows (use --max-rows or --output FILE)")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
