"""omni-batch: run large batches of text-to-video generations against the ToAPIs task API.

The public API: everything a notebook user needs is importable from here.
"""

from omni_batch.errors import (
    CatalogError,
    InputError,
    ManifestError,
    OmniBatchError,
    Problem,
    UsageError,
    Where,
)
from omni_batch.planning.catalog import Catalog, ModelRules, load_catalog
from omni_batch.planning.jobs import Job
from omni_batch.planning.manifest import Manifest, PlanSummary, load_manifest
from omni_batch.planning.plan import Plan, plan

__version__ = "0.1.0"

_LAZY = {
    "run": "batch",
    "run_async": "batch",
    "RunOptions": "batch",
    "build_report": "outputs.report",
}


def __getattr__(name: str):
    # the run engine pulls in aiohttp and pandas; `plan` and the CLI's start-up should not
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"omni_batch.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omni_batch' has no attribute {name!r}")


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
    "RunOptions",
    "UsageError",
    "Where",
    "__version__",
    "build_report",
    "load_catalog",
    "load_manifest",
    "plan",
    "run",
    "run_async",
]
