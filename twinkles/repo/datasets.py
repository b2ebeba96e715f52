"""Dataset types: name -> (dimensions, storage class), after DESIGN.md section 2.

Storage classes and what they hold in memory / on disk:

* ``Exposure``   -- :class:`twinkles.image.Exposure`, multi-extension FITS (``.fits``)
* ``ImageF``     -- a 2-d numpy array, FITS (``.fits``)
* ``Background`` -- a :class:`twinkles.algorithms.background.BackgroundModel` (mesh values and sep's
  interpolation; ``.image()`` or ``np.asarray`` gives the full-resolution background), FITS (``.fits``)
* ``Catalog``    -- an :class:`astropy.table.Table`, Parquet (``.parquet``)
* ``StructuredData`` -- a JSON-serialisable dict, JSON (``.json``)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetType", "DATASET_TYPES", "STORAGE_CLASSES", "IMAGE_STORAGE", "get_dataset_type",
           "UnknownDatasetTypeError", "register_dataset_type"]


class UnknownDatasetTypeError(KeyError):
    pass


@dataclass(frozen=True)
class DatasetType:
    name: str
    dimensions: tuple[str, ...]
    storage: str  # Exposure | ImageF | Background | Catalog | StructuredData
    sql_table: str | None = None  # name of the `twinkles sql` table that unions these catalogs

    @property
    def extension(self) -> str:
        return {"Exposure": ".fits", "ImageF": ".fits", "Background": ".fits", "Catalog": ".parquet",
                "StructuredData": ".json"}[self.storage]


_VD = ("visit", "detector")
_TPB = ("tract", "patch", "band")
_TP = ("tract", "patch")

DATASET_TYPES: dict[str, DatasetType] = {}
STORAGE_CLASSES = ("Exposure", "ImageF", "Background", "Catalog", "StructuredData")
#: storage classes whose files hold image planes (tile-compressed as ``storage.compression`` says)
IMAGE_STORAGE = ("Exposure", "ImageF")


def register_dataset_type(name: str, dimensions: tuple[str, ...], storage: str, sql_table: str | None = None):
    if storage not in STORAGE_CLASSES:
        raise ValueError(f"unknown storage class {storage!r}")
    DATASET_TYPES[name] = DatasetType(name, tuple(dimensions), storage, sql_table)
    return DATASET_TYPES[name]


for _name, _dims, _storage, _table in [
    # inputs (simulate / ingest)
    ("eimage", _VD, "Exposure", None),
    ("ref_cat", (), "Catalog", "RefCat"),
    # truth: written by the simulator, read only by validate
    ("truth_catalog", (), "Catalog", "Truth"),
    ("truth_lightcurves", (), "Catalog", "TruthFlux"),
    ("visit_table", (), "Catalog", "Visit"),
    ("truth_artifacts", (), "Catalog", "TruthArtifact"),  # satellite trails, moving transients (twinkles.sim.artifacts)
    # process_eimage
    ("calexp", _VD, "Exposure", None),
    ("calexp_background", _VD, "Background", None),
    ("src", _VD, "Catalog", "Source"),
    ("process_eimage_metadata", _VD, "StructuredData", None),
    # static sky
    ("skyMap", (), "StructuredData", None),
    ("deepCoadd_directWarp", ("tract", "patch", "visit"), "Exposure", None),
    ("deepCoadd_psfMatchedWarp", ("tract", "patch", "visit"), "Exposure", None),
    ("deepCoadd", _TPB, "Exposure", None),
    ("deepCoadd_nImage", _TPB, "ImageF", None),
    ("deepCoadd_inputs", _TPB, "Catalog", None),
    ("deepCoadd_det", _TPB, "Catalog", None),
    ("deepCoadd_mergeDet", _TP, "Catalog", None),
    ("deepCoadd_deblendedFlux", _TPB, "Catalog", None),
    ("deepCoadd_meas", _TPB, "Catalog", None),
    ("deepCoadd_ref", _TP, "Catalog", None),
    ("objectTable", _TP, "Catalog", "Object"),
    ("forcedSourceTable", _VD, "Catalog", "ForcedSource"),
    # DIA
    ("goodSeeingCoadd", _TPB, "Exposure", None),
    ("differenceExp", _VD, "Exposure", None),
    ("diaSourceTable", _VD, "Catalog", "DiaSource"),
    ("diaObjectTable", ("tract",), "Catalog", "DiaObject"),
    ("forcedSourceOnDiaObjectTable", _VD, "Catalog", "ForcedSourceOnDiaObject"),
]:
    register_dataset_type(_name, _dims, _storage, _table)


def get_dataset_type(name: str) -> DatasetType:
    try:
        return DATASET_TYPES[name]
    except KeyError:
        raise UnknownDatasetTypeError(
            f"unknown dataset type {name!r}; known: {', '.join(sorted(DATASET_TYPES))}") from None
