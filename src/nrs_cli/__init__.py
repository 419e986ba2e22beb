"""nrs: certified robustness with non-uniform randomized smoothing."""

from nrs_cli.version import __version__

__all__ = ["__version__"]
