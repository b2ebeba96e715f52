"""Data IDs: validated dictionaries of the Butler's dimensions (visit, detector, band, tract, patch).

Every value that reaches a file path passes through here: integers must be non-negative integers, bands one of
ugrizy. Anything else (``..``, a path separator, a float, an unknown band) raises :class:`DataIdError`.
"""

from __future__ import annotations

import re

__all__ = ["DIMENSIONS", "BANDS", "DataIdError", "validate_data_id", "parse_id_args", "data_id_key",
           "format_data_id"]

BANDS = ("u", "g", "r", "i", "z", "y")
#: dimension name -> python type; order is the canonical order in paths and keys
DIMENSIONS: dict[str, type] = {"tract": int, "patch": int, "visit": int, "detector": int, "band": str}
_INT_RE = re.compile(r"^[0-9]{1,12}$")


class DataIdError(ValueError):
    """A data ID is malformed: an unknown dimension, a value of the wrong kind, or an unsafe string."""


def _validate_value(dim: str, value) -> int | str:
    if DIMENSIONS[dim] is int:
        if isinstance(value, bool):
            raise DataIdError(f"data ID {dim}={value!r}: must be a non-negative integer")
        if isinstance(value, int):
            ivalue = value
        elif isinstance(value, str) and _INT_RE.match(value.strip()):
            ivalue = int(value.strip())
        elif hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu":
            ivalue = int(value)
        else:
            raise DataIdError(f"data ID {dim}={value!r}: must be a non-negative integer "
                              f"(e.g. {dim}=840 or a range {dim}=840..879)")
        if ivalue < 0:
            raise DataIdError(f"data ID {dim}={value!r}: must be a non-negative integer")
        return ivalue
    if not isinstance(value, str) or value not in BANDS:
        raise DataIdError(f"data ID band={value!r}: unknown band; use one of {', '.join(BANDS)}")
    return value


def validate_data_id(data_id: dict, required: tuple[str, ...] | list[str] | None = None) -> dict:
    """Return a canonical copy of ``data_id`` (dimensions in canonical order, values checked).

    ``required``: the dimensions the dataset type needs; missing ones raise, extra ones are dropped.
    """
    if not isinstance(data_id, dict):
        raise DataIdError(f"a data ID must be a mapping of dimension to value, got {data_id!r}")
    for key in data_id:
        if key not in DIMENSIONS:
            raise DataIdError(f"unknown data ID dimension {key!r}; known: {', '.join(DIMENSIONS)}")
    checked = {dim: _validate_value(dim, value) for dim, value in data_id.items()}
    out = {}
    for dim in DIMENSIONS:
        if required is not None and dim not in required:
            continue
        if dim in checked:
            out[dim] = checked[dim]
        elif required is not None:
            raise DataIdError(f"data ID {format_data_id(data_id)} lacks {dim!r} (this dataset needs "
                              f"{', '.join(required)})")
    return out


def data_id_key(data_id: dict) -> str:
    """Canonical string of a validated data ID, e.g. ``visit=840,detector=0`` (empty for field-wide data)."""
    return ",".join(f"{k}={data_id[k]}" for k in DIMENSIONS if k in data_id)


def format_data_id(data_id: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in data_id.items()) or "(no data ID)"


def parse_id_args(args: list[str] | tuple[str, ...] | str) -> dict:
    """Parse ``visit=840..879 band=r detector=0,1`` into a query dict.

    Values: an int, a band, ``a..b`` (inclusive range, becomes a ``range``), or a comma list (becomes a list).
    """
    if isinstance(args, str):
        args = args.split()
    query: dict = {}
    for item in args:
        for token in item.split():
            if "=" not in token:
                raise DataIdError(f"cannot parse data ID term {token!r}; write dimension=value, e.g. visit=840 "
                                  "or visit=840..879")
            dim, value = token.split("=", 1)
            dim = dim.strip()
            if dim not in DIMENSIONS:
                raise DataIdError(f"unknown data ID dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
            if ".." in value:
                lo, hi = value.split("..", 1)
                lo_v, hi_v = _validate_value(dim, lo), _validate_value(dim, hi)
                if DIMENSIONS[dim] is not int:
                    raise DataIdError(f"{dim}={value!r}: ranges are only for integer dimensions")
                if hi_v < lo_v:
                    raise DataIdError(f"{dim}={value!r}: empty range (end before start)")
                query[dim] = range(lo_v, hi_v + 1)
            elif "," in value:
                query[dim] = [_validate_value(dim, v) for v in value.split(",") if v]
            else:
                query[dim] = _validate_value(dim, value)
    return query
