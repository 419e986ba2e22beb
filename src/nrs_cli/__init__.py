"""nrs: certified robustness with non-uniform randomized smoothing.

The Python API (docs/python.md)::

    from nrs_cli import Smooth, load_model
    model = load_model("resnet18_state.pt", arch="torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32))
    prediction, radius = Smooth(model, 10, 0.25).certify(x, n0=100, n=100_000, alpha=0.001)

Names are imported when first used, so ``import nrs_cli`` (and the ``nrs`` command's start) stays quick.
"""

from __future__ import annotations

import importlib

from nrs_cli.version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "Smooth": "nrs_cli.method.smooth",
    "Certificate": "nrs_cli.method.certificate",
    "ABSTAIN": "nrs_cli.method.certificate",
    "Sigma": "nrs_cli.method.sigma",
    "load_sigma": "nrs_cli.method.sigma",
    "optimize_sigma": "nrs_cli.runs.fit",
    "load_model": "nrs_cli.io.models",
    "load_data": "nrs_cli.io.loaders",
    "load_spec": "nrs_cli.io.folders",  # as load_dataset_spec: built-in names, YAML files and image folders
    "NrsError": "nrs_cli.errors",
}
_RENAMED = {"load_spec": "load_dataset_spec"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nrs_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
