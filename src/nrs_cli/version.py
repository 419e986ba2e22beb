"""The version of nrs, in one place."""

__version__ = "0.1.0"
