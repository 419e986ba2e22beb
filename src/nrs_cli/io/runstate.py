"""Resumable outputs: one writer at a time, resumed only when nothing they depend on has changed.

Every command that writes results (train-base, optimize-sigma, co-optimize, certify, predict)
follows one sequence, held by a :class:`Resumable`:

1. **lock** the output (:class:`OutputLock`): a second writer is refused, naming the holder;
2. **fingerprint**: what the results depend on, as plain data (the spec sections, options, and
   digests of the model, sigma and inputs actually read);
3. **state**: a saved state is loaded only when its digest and its fingerprint match; a changed
   fingerprint is refused naming each field with its old and new value;
4. **manifest**: provenance (resolved spec, seed, package versions, fingerprint) beside the output.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import platform
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nrs_cli.errors import NrsError
from nrs_cli.io.serialization import (
    DIGEST_KEY,
    atomic_torch_save,
    check_digest,
    load_weights_only,
    with_digest,
    write_json,
)
from nrs_cli.io.spec import RunSpec

_PACKAGES = ("nrs-cli", "torch", "torchvision", "numpy", "scipy", "typer", "rich", "pyyaml", "pillow", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: str | os.PathLike, kind: str, spec: RunSpec, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json``-style provenance for one run; returns what was written."""
    manifest = {
        "kind": kind,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": now(),
        "seed": spec.seed,
        "spec_file": spec.source,
        "spec": spec.to_dict(),
        "versions": package_versions(),
        **fields,
    }
    write_json(manifest, path)
    return manifest


def spec_sections(spec: RunSpec, *sections: str) -> dict[str, Any]:
    """The named sections of the resolved spec as plain data: the part of a fingerprint that names fields."""
    raw = spec.to_dict()
    return {section: raw[section] for section in sections}


def fingerprint_changes(recorded: Any, current: Any, where: str = "") -> list[str]:
    """``key (old → new)`` for every field that differs, nested mappings walked (digests shortened)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        changes = []
        for key in sorted(set(recorded) | set(current), key=str):
            inner = f"{where}.{key}" if where else str(key)
            if recorded.get(key, _MISSING) != current.get(key, _MISSING):
                changes += fingerprint_changes(recorded.get(key, _MISSING), current.get(key, _MISSING), inner)
        return changes
    return [f"{where.removeprefix('spec.')} ({_shown(recorded)} → {_shown(current)})"]


_MISSING = object()


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:8] + "…"  # a sha256
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fingerprint(path: str | os.PathLike, recorded: Any, current: dict[str, Any], remedy: str) -> None:
    """Refuse to resume ``path`` when anything its results depend on has changed, naming what changed."""
    if not isinstance(recorded, dict):
        raise NrsError(f"refusing to resume {path}: nothing records what it was made with ({remedy})")
    changes = fingerprint_changes(recorded, current)
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise NrsError(f"refusing to resume {path}: it was made with a different {shown} ({remedy})")


class OutputLock:
    """An exclusive lock on an output (``<path>.lock``) for as long as one process writes it.

    The operating system releases the lock when the holder exits, however it
    exits, so the lock of a killed run is simply taken over by the next one.
    A second writer gets a one-line error naming the holder.
    """

    def __init__(self, target: str | os.PathLike, lock_path: str | os.PathLike | None = None):
        self.target = Path(target)
        self.path = Path(lock_path) if lock_path is not None else self.target.with_name(self.target.name + ".lock")
        self._handle = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise NrsError(f"{self.target} is being written by {holder}; wait for it to finish") from None
            if self._same_file(handle):  # not a lock file its previous holder removed meanwhile
                break
            handle.close()
        handle.truncate(0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        handle.write(
            f"nrs process {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} ({command})\n"
        )
        handle.flush()
        self._handle = handle
        return self

    def _same_file(self, handle) -> bool:
        try:
            return os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc_info: Any) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()  # closing releases the lock
            self._handle = None


class Resumable:
    """One output being written: locked for its writer, resumed only from a matching saved state.

    :param target: what the user names (a run folder or a result table)
    :param lock_path: its lock file (default ``<target>.lock``)
    :param remedy: what to do when it cannot be resumed (ends every refusal)
    :param writer: whether this process writes (under torchrun only rank 0 locks and writes)
    """

    def __init__(
        self, target: str | os.PathLike, lock_path: str | os.PathLike | None = None, remedy: str = "", writer=True
    ):
        self.target = Path(target)
        self.remedy = remedy or f"delete {self.target} or choose another output"
        self._lock = OutputLock(self.target, lock_path) if writer else None

    def __enter__(self) -> Resumable:
        if self._lock is not None:
            self._lock.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc_info)

    def check(self, recorded: Any, fingerprint: dict[str, Any]) -> None:
        """Refuse to resume when the recorded fingerprint differs from this run's."""
        check_fingerprint(self.target, recorded, fingerprint, self.remedy)

    def load_state(self, path: Path, fingerprint: dict[str, Any], keys: set[str], what: str) -> dict[str, Any] | None:
        """The state saved at ``path`` (None when there is none): its keys must be ``fingerprint`` and
        ``keys``, its digest and its fingerprint must match."""
        if not path.is_file():
            return None
        values = load_weights_only(path, what)
        if not isinstance(values, dict) or set(values) - {DIGEST_KEY} != {"fingerprint", *keys}:
            raise NrsError(f"{path} is not the state of this kind of run (damaged?): {self.remedy}")
        check_digest(values, what, path)
        values.pop(DIGEST_KEY, None)
        self.check(values["fingerprint"], fingerprint)
        return values

    @staticmethod
    def save_state(path: Path, values: dict[str, Any]) -> None:
        """Save a state atomically, with the digest :meth:`load_state` checks."""
        atomic_torch_save(with_digest(values), path)
