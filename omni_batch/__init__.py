"""omni-batch: run large batches of text-to-video generations against the ToAPIs task API."""

from omni_batch.catalog import Catalog, ModelRules, load_catalog
from omni_batch.errors import (
    CatalogError,
    InputError,
    ManifestError,
    OmniBatchError,
    Problem,
    UsageError,
    Where,
)

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "CatalogError",
    "InputError",
    "ManifestError",
    "ModelRules",
    "OmniBatchError",
    "Problem",
    "UsageError",
    "Where",
    "__version__",
    "load_catalog",
]
