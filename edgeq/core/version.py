"""The version of edgeq (kept here so no module imports the package root)."""

__version__ = "0.1.0"
