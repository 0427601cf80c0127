"""omni-batch: run large batches of text-to-video generations against the ToAPIs task API.

The public API: everything a notebook user needs is importable from here (``__all__``).
``import omni_batch`` stays light (its version and errors): every other name is imported on
first use, so `plan` never loads the run engine (aiohttp, pandas).
"""

from typing import TYPE_CHECKING, Any

from omni_batch._version import __version__
from omni_batch.errors import (
    AlreadyStored,
    Ambiguous,
    ApiChanged,
    ApiError,
    ApiUnreachable,
    AuthError,
    BadResponse,
    BudgetReached,
    CatalogError,
    GatewayError,
    InputError,
    InsufficientBalance,
    Interrupted,
    JobTaken,
    ManifestError,
    ModelNotAvailable,
    NotAccepted,
    NotSent,
    OmniBatchError,
    OutputError,
    Problem,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
    StateError,
    ThrottledTooLong,
    TransportError,
    UnrecognisedAnswer,
    UsageError,
    Where,
)

if TYPE_CHECKING:  # what a type checker sees; at run time each is imported on first use
    from omni_batch.batch import run, run_async
    from omni_batch.outputs.report import build_report
    from omni_batch.planning.catalog import Catalog, ModelRules, load_catalog
    from omni_batch.planning.jobs import Job
    from omni_batch.planning.manifest import Manifest, PlanSummary, load_manifest
    from omni_batch.planning.plan import Plan, plan
    from omni_batch.preparing import PreparedRun, prepare
    from omni_batch.results import status, write_gallery, write_reports
    from omni_batch.running.options import Policy, RunOptions

# name -> the module (under omni_batch) that defines it, imported on first use
_LAZY = {
    "Catalog": "planning.catalog",
    "ModelRules": "planning.catalog",
    "load_catalog": "planning.catalog",
    "Job": "planning.jobs",
    "Manifest": "planning.manifest",
    "PlanSummary": "planning.manifest",
    "load_manifest": "planning.manifest",
    "Plan": "planning.plan",
    "plan": "planning.plan",
    "run": "batch",
    "run_async": "batch",
    "prepare": "preparing",
    "PreparedRun": "preparing",
    "RunOptions": "running.options",
    "Policy": "running.options",
    "status": "results",
    "write_reports": "results",
    "write_gallery": "results",
    "build_report": "outputs.report",
}


def __getattr__(name: str) -> Any:
    # the run engine pulls in aiohttp and pandas, planning PyYAML: `import omni_batch` (and
    # `python -m omni_batch`'s first moments, before it can take Ctrl-C) stays light
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"omni_batch.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omni_batch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AlreadyStored",
    "Ambiguous",
    "ApiChanged",
    "ApiError",
    "ApiUnreachable",
    "AuthError",
    "BadResponse",
    "BudgetReached",
    "Catalog",
    "CatalogError",
    "GatewayError",
    "InputError",
    "InsufficientBalance",
    "Interrupted",
    "Job",
    "JobTaken",
    "Manifest",
    "ManifestError",
    "ModelNotAvailable",
    "ModelRules",
    "NotAccepted",
    "NotSent",
    "OmniBatchError",
    "OutputError",
    "Plan",
    "PlanSummary",
    "Policy",
    "PreparedRun",
    "Problem",
    "QuotaError",
    "RateLimited",
    "RequestRejected",
    "RunOptions",
    "ServerError",
    "StateError",
    "ThrottledTooLong",
    "TransportError",
    "UnrecognisedAnswer",
    "UsageError",
    "Where",
    "__version__",
    "build_report",
    "load_catalog",
    "load_manifest",
    "plan",
    "prepare",
    "run",
    "run_async",
    "status",
    "write_gallery",
    "write_reports",
]
