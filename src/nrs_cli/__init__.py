"""nrs: certified robustness with non-uniform randomized smoothing."""

__version__ = "0.1.0"
