"""genzip's version: the one definition (pyproject reads it as the dynamic version)."""

__version__ = "0.1.0"
