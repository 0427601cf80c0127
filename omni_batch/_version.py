"""The version of omni-batch (pyproject.toml holds the same figure)."""

__version__ = "0.1.0"
