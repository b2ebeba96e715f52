"""The data repository: registry, dataset types, data IDs, image and catalog I/O."""

from .butler import PROTECTED_RUNS, QuantumButler, TruthIsolationError, validate_processing_run
from .dataid import BANDS, DIMENSIONS, DataIdError, format_data_id, parse_id_args, validate_data_id
from .datasets import DATASET_TYPES, DatasetType, get_dataset_type
from .repository import (RAW_RUN, TRUTH_RUN, DatasetNotFoundError, DatasetRef, Repository, RepositoryError,
                         validate_run_name)
from .storage import DatasetReadError

__all__ = ["QuantumButler", "BANDS", "DIMENSIONS", "DataIdError", "format_data_id", "parse_id_args",
           "validate_data_id", "DATASET_TYPES", "DatasetType", "get_dataset_type", "RAW_RUN", "TRUTH_RUN",
           "DatasetNotFoundError", "DatasetRef", "Repository", "RepositoryError", "validate_run_name",
           "DatasetReadError", "PROTECTED_RUNS", "TruthIsolationError", "validate_processing_run"]
