"""What runs leave behind: manifests, metric tables and result TSVs.

Every output folder gets a ``manifest.json`` with the resolved spec, seed,
package versions and the content hashes of model and sigma, so a result can
be traced to exactly what produced it.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nrs_cli.serialization import atomic_write_text
from nrs_cli.spec import RunSpec

_PACKAGES = ("nrs-cli", "torch", "torchvision", "numpy", "scipy", "typer", "rich", "pyyaml", "pillow", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(path: str | os.PathLike, kind: str, spec: RunSpec, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json``-style provenance for one run; returns what was written."""
    manifest = {
        "kind": kind,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": spec.seed,
        "spec_file": spec.source,
        "spec": spec.to_dict(),
        "versions": package_versions(),
        **fields,
    }
    atomic_write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", path)
    return manifest


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


class CsvLog:
    """A CSV table that gains one flushed row at a time (metrics per epoch)."""

    def __init__(self, path: str | os.PathLike, columns: list[str], append: bool = False):
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (append and self.path.is_file())
        with open(self.path, "w" if fresh else "a", newline="") as handle:
            if fresh:
                csv.writer(handle).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row[column]) for column in self.columns])


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
