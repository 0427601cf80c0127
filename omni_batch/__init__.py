"""omni-batch: run large batches of text-to-video generations against the ToAPIs task API.

The public API: everything a notebook user needs is importable from here.
"""

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
from omni_batch.jobs import Job
from omni_batch.manifest import Manifest, PlanSummary, load_manifest
from omni_batch.plan import Plan, plan

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "CatalogError",
    "InputError",
    "Job",
    "Manifest",
    "ManifestError",
    "ModelRules",
    "OmniBatchError",
    "Plan",
    "PlanSummary",
    "Problem",
    "UsageError",
    "Where",
    "__version__",
    "load_catalog",
    "load_manifest",
    "plan",
]
