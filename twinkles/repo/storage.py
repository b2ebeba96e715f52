"""Reading and writing datasets: atomic file writes and the formatters of each storage class."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.table import Table

from ..compression import NO_COMPRESSION, TILE_ROWS, Compression, image_hdu, is_integer_valued
from ..image import Exposure

__all__ = ["atomic_write_bytes", "write_dataset_file", "read_dataset_file", "table_to_arrow", "arrow_to_table",
           "TMP_MARKER", "DatasetReadError", "to_plain"]

TMP_MARKER = ".tmp-"


class DatasetReadError(IOError):
    """A registered dataset file cannot be read (missing, truncated or corrupt)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, writer, durable: bool = True) -> None:
    """Call ``writer(tmp_path)`` then rename onto ``path``: readers see the old file or the new one, never a partial
    one, even if the process is killed. The temporary file is removed if ``writer`` fails.

    ``durable``: fsync the file before the rename and its folder after, so that the new file also survives a
    machine (not just a process) crash. Workflow jobs write with ``durable=False``: the kernel writes them back in
    its own time (an fsync per file cost ~9 ms of each demo job, a file-system sync per result in the orchestrator
    as much); a machine crash may then truncate their latest files, which the registry's recorded sizes reveal
    (:meth:`~twinkles.repo.Repository.check`, run at the start of every ``twinkles run``): those rows are dropped
    and their jobs done again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        writer(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, _write, durable)


# ------------------------------------------------------------------------------------------------ catalogs
def table_to_arrow(table: Table) -> pa.Table:
    """astropy Table -> Arrow table; masked values become nulls; ``table.meta`` and units go to schema metadata."""
    arrays, names = [], []
    units = {}
    for name in table.colnames:
        col = table[name]
        data = np.asarray(col)
        mask = np.asarray(col.mask) if hasattr(col, "mask") and col.mask is not np.False_ else None
        if data.ndim > 1:
            arr = pa.array(list(data), mask=mask)
        elif data.dtype.kind in "US":
            arr = pa.array(data.astype(str), mask=mask)
        elif data.dtype.kind == "O":
            arr = pa.array(list(data), mask=mask)
        else:
            arr = pa.array(data, mask=mask)
        arrays.append(arr)
        names.append(name)
        if getattr(col, "unit", None) is not None:
            units[name] = str(col.unit)
    meta = {"twinkles_meta": json.dumps(to_plain(dict(table.meta))), "twinkles_units": json.dumps(units)}
    return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(meta)


def arrow_to_table(atable: pa.Table) -> Table:
    meta = atable.schema.metadata or {}
    out = Table()
    for name in atable.column_names:
        col = atable.column(name)
        if col.null_count:
            values = col.to_numpy(zero_copy_only=False)
            mask = col.is_null().to_numpy(zero_copy_only=False)
            if values.dtype.kind == "f":
                values = np.where(mask, np.nan, values)
                out[name] = values
            else:
                out[name] = np.ma.MaskedArray(values, mask=mask)
        else:
            values = col.to_numpy(zero_copy_only=False)
            if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
                values = np.stack(values)
            out[name] = values
    if b"twinkles_meta" in meta:
        out.meta.update(json.loads(meta[b"twinkles_meta"]))
    if b"twinkles_units" in meta:
        for name, unit in json.loads(meta[b"twinkles_units"]).items():
            if name in out.colnames:
                out[name].unit = unit
    return out


def to_plain(obj):
    """A copy made of plain Python types (dict, list, int, float, str) that JSON and YAML accept: numpy scalars
    and arrays become Python numbers and lists, tuples lists, non-finite floats strings."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------- formatters
BACKGROUND_INTERPOLATION = "SEP_SPLINE"


def background_to_hdulist(model) -> fits.HDUList:
    """A :class:`~twinkles.algorithms.background.BackgroundModel` as FITS: the mesh node values as the image of
    extension ``MESH`` (float64, shape ny_mesh x nx_mesh), the mesh size and the modelled image's size in its
    header (``BKGMESH``, ``BKGNAX1``, ``BKGNAX2``), and the interpolation's name (``BKGINTRP``)."""
    hdu = fits.ImageHDU(np.asarray(model.mesh, dtype=np.float64), name="MESH")
    hdu.header["BKGMESH"] = (model.mesh_px, "mesh size, pixels")
    hdu.header["BKGNAX1"] = (model.shape[1], "width of the modelled image, pixels")
    hdu.header["BKGNAX2"] = (model.shape[0], "height of the modelled image, pixels")
    hdu.header["BKGINTRP"] = (BACKGROUND_INTERPOLATION, "sep (SExtractor) spline")
    hdu.header["BUNIT"] = "electron"
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def background_from_hdulist(hdul: fits.HDUList, source: str = "<memory>"):
    from ..algorithms.background import BackgroundModel  # (sep is imported only where it is needed)
    names = [h.name for h in hdul]
    if "MESH" not in names:
        raise ValueError(f"{source}: no MESH extension (extensions: {names}); not a background model")
    hdr = hdul["MESH"].header
    if hdr.get("BKGINTRP") != BACKGROUND_INTERPOLATION:
        raise ValueError(f"{source}: unknown background interpolation {hdr.get('BKGINTRP')!r}")
    return BackgroundModel(np.array(hdul["MESH"].data, dtype=np.float64), int(hdr["BKGMESH"]),
                           (int(hdr["BKGNAX2"]), int(hdr["BKGNAX1"])))


def _write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write with CHECKSUM/DATASUM cards whose comments carry no timestamp (astropy's default does), so the same
    content gives the same bytes: a job re-done after an interruption rewrites an identical file."""
    for hdu in hdul:
        hdu.add_checksum(when="checksum (FITS checksum convention)")
    hdul.writeto(path, checksum=False)


#: lossless compression of each plane, by extension name (floats: byte-shuffled gzip; integers: RICE)
LOSSLESS_PLANES = {"IMAGE": "GZIP_2", "MASK": "RICE", "VARIANCE": "GZIP_2"}


def _write_fits_lossless(hdul: fits.HDUList, path: Path) -> None:
    """Write an HDUList of uncompressed HDUs through fitsio (cfitsio), compressing the planes named in
    :data:`LOSSLESS_PLANES` losslessly: cfitsio's gzip is ~5x faster than astropy's (Python's gzip at level 9:
    ~9 CPU-s per 4k float plane) and, unlike it, writes no time into the tiles, so a re-run writes the same
    bytes. No CHECKSUM cards (cfitsio's carry the time); the registry's recorded size still catches truncation."""
    import fitsio
    with fitsio.FITS(str(path), "rw", clobber=True) as out:
        for i, hdu in enumerate(hdul):
            header = fitsio.FITSHDR([str(card) for card in hdu.header.cards])
            name = hdu.name if i > 0 else None
            if isinstance(hdu, fits.BinTableHDU):
                out.write(np.asarray(hdu.data), header=header, extname=name)
                continue
            data = None if hdu.data is None else np.asarray(hdu.data)
            kind = LOSSLESS_PLANES.get(hdu.name) if data is not None and data.ndim == 2 and i > 0 else None
            if kind is None:
                out.write(data, header=header, extname=name)
            else:
                out.write(data, header=header, extname=name, compress=kind, qlevel=0,
                          tile_dims=(min(TILE_ROWS, data.shape[0]), data.shape[1]))


def write_dataset_file(obj, storage: str, path: Path, durable: bool = True,
                       compression: Compression | None = None) -> None:
    """Write ``obj`` of the given storage class atomically to ``path`` (``durable``: see :func:`atomic_write`).

    ``compression``: how the image planes of an Exposure or ImageF are written (None: uncompressed); see
    :mod:`twinkles.compression`. Other storage classes ignore it."""
    compression = compression or NO_COMPRESSION
    if storage == "Exposure":
        if not isinstance(obj, Exposure):
            raise TypeError(f"{path.name}: expected an Exposure, got {type(obj).__name__}")
        if compression.mode == "lossless":
            atomic_write(path, lambda tmp: _write_fits_lossless(obj.to_hdulist(), tmp), durable)
        else:
            atomic_write(path, lambda tmp: _write_fits(obj.to_hdulist(compression), tmp), durable)
    elif storage == "ImageF":
        arr = np.asarray(obj, dtype=np.float32)
        if arr.ndim != 2:
            raise TypeError(f"{path.name}: expected a 2-d image, got shape {arr.shape}")
        if compression.mode == "lossless" or (compression.mode == "lossy" and is_integer_valued(arr)):
            # (counts such as deepCoadd_nImage: quantizing them would only add errors)
            hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(arr, name="IMAGE")])
            atomic_write(path, lambda tmp: _write_fits_lossless(hdul, tmp), durable)
        else:
            def _image_hdul():
                hdu = image_hdu(arr, "IMAGE", None, compression, primary=True)
                return fits.HDUList([hdu] if isinstance(hdu, fits.PrimaryHDU) else [fits.PrimaryHDU(), hdu])
            atomic_write(path, lambda tmp: _write_fits(_image_hdul(), tmp), durable)
    elif storage == "Background":
        from ..algorithms.background import BackgroundModel  # (sep is imported only where it is needed)
        if not isinstance(obj, BackgroundModel):
            raise TypeError(f"{path.name}: expected a BackgroundModel, got {type(obj).__name__}")
        atomic_write(path, lambda tmp: _write_fits(background_to_hdulist(obj), tmp), durable)
    elif storage == "Catalog":
        if isinstance(obj, pa.Table):
            atable = obj
        elif isinstance(obj, Table):
            atable = table_to_arrow(obj)
        else:
            atable = table_to_arrow(Table(obj))
        atomic_write(path, lambda tmp: pq.write_table(atable, tmp, compression="zstd"), durable)
    elif storage == "StructuredData":
        data = json.dumps(to_plain(obj), indent=1, sort_keys=True).encode()
        atomic_write_bytes(path, data, durable)
    else:
        raise ValueError(f"unknown storage class {storage!r}")


def read_dataset_file(storage: str, path: Path, columns: list[str] | None = None):
    path = Path(path)
    if not path.exists():
        raise DatasetReadError(f"{path}: registered dataset file is missing; run `twinkles check` on the "
                               "repository or re-run the job that made it")
    try:
        if storage == "Exposure":
            return Exposure.read_fits(path)
        if storage == "ImageF":
            with fits.open(path, memmap=False) as hdul:
                # uncompressed: the primary array; compressed: the IMAGE extension (older files: the primary)
                hdu = hdul["IMAGE"] if "IMAGE" in [h.name for h in hdul] else hdul[0]
                return np.array(hdu.data, dtype=np.float32)
        if storage == "Background":
            with fits.open(path, memmap=False) as hdul:
                return background_from_hdulist(hdul, str(path))
        if storage == "Catalog":
            # one file: ParquetFile, not pq.read_table, whose dataset layer costs ~40 ms of CPU to import
            with pq.ParquetFile(path) as pf:
                if columns is not None:
                    missing = [c for c in columns if c not in pf.schema_arrow.names]
                    if missing:  # (ParquetFile.read would leave them out without a word)
                        raise DatasetReadError(f"{path}: no column(s) {', '.join(missing)}; its columns: "
                                               f"{', '.join(pf.schema_arrow.names)}")
                return arrow_to_table(pf.read(columns=columns))
        if storage == "StructuredData":
            with open(path) as f:
                return json.load(f)
    except DatasetReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file for the user
        raise DatasetReadError(f"{path}: cannot read ({type(exc).__name__}: {exc}); the file is corrupt: "
                               "delete it and re-run the job that made it") from exc
    raise ValueError(f"unknown storage class {storage!r}")
