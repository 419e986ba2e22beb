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
import errno
import fcntl
import os
import platform
import socket
import stat
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


TEST_PAUSE = "NRS_TEST_PAUSE"  # test-only: see pause_for_tests


def pause_for_tests(point: str, count: int) -> None:
    """A test-only hook that holds a run at a known point, so a test of two writers or of a signal never
    races the process it drives (however fast or loaded the machine).

    With ``NRS_TEST_PAUSE="<point> <count> <file>"`` set (``rows`` of a result table, ``epochs`` of
    training, ``cleanup`` of an output given up after an error or a signal; several separated by
    ``;``), a run that has reached ``count`` or more creates ``<file>.paused`` and waits, holding
    its lock, until ``<file>`` exists; a signal ends it there as anywhere. Unset (always, outside
    tests), this does nothing.
    """
    for hook in (text.split(" ", 2) for text in os.environ.get(TEST_PAUSE, "").split(";")):
        if len(hook) == 3 and hook[0] == point and hook[1].isdigit() and count >= int(hook[1]):
            go = Path(hook[2])
            go.with_name(go.name + ".paused").touch()
            while not go.exists():
                time.sleep(0.02)


class OutputLock:
    """An exclusive lock on an output for as long as one process writes it; its side-cars are covered too.

    The lock is keyed by the file, not by the name it was reached through: the lock file
    ``<output>.lock`` sits beside the output's real path (symbolic links resolved, so every link to
    one output meets one lock file), and an output that already exists is itself locked too (so a
    hard link, another name of the same file, meets that lock). The operating system releases both
    when the holder exits, however it exits, so the lock of a killed run is simply taken over by
    the next one. A second writer gets a one-line error naming the holder.

    The lock file is never a way to write elsewhere: it is opened without following a symbolic
    link, and refused unless it is a plain file with no other name.
    """

    def __init__(self, target: str | os.PathLike, lock_path: str | os.PathLike | None = None):
        self.target = Path(target)
        if lock_path is None:
            real = Path(os.path.realpath(self.target))
            self.path = real.with_name(real.name + ".lock")
        else:
            self.path = Path(os.path.realpath(Path(lock_path).parent)) / Path(lock_path).name
        self._handle = None
        self._file_lock: int | None = None  # a descriptor of the output itself, locked

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = self._open_lock_file()
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
        try:
            self._check_plain(handle)
        except BaseException:
            handle.close()  # someone else's file: left for them to remove
            raise
        try:
            self.relock()
        except BaseException:
            self.path.unlink(missing_ok=True)  # the lock file is this process's: no litter
            handle.close()
            raise
        handle.truncate(0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        handle.write(
            f"nrs process {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} ({command})\n"
        )
        handle.flush()
        self._handle = handle
        return self

    def _open_lock_file(self):
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise NrsError(
                    f"refusing to use the lock file {self.path}: it is a symbolic link, not a lock nrs made "
                    "(remove the link; what it points to is left alone)"
                ) from None
            raise
        return os.fdopen(descriptor, "r+")

    def _check_plain(self, handle) -> None:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            raise NrsError(
                f"refusing to use the lock file {self.path}: it is not a plain file of its own "
                "(another name of a file, or not a file), not a lock nrs made (remove it)"
            )

    def relock(self) -> None:
        """Lock the output file itself (again, after it was replaced by a new file of the same name)."""
        if self._file_lock is not None:
            os.close(self._file_lock)
            self._file_lock = None
        try:
            descriptor = os.open(self.target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # not there yet, or not readable (writing it will say why)
            return
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file_lock, descriptor = descriptor, None
        except BlockingIOError:
            raise NrsError(
                f"{self.target} is being written by {_flock_holder(descriptor)} under another name of the same "
                "file (a link); wait for it to finish"
            ) from None
        except OSError:  # a file system without flock: the lock file still serialises writers by name
            pass
        finally:
            if descriptor is not None:
                os.close(descriptor)

    def _same_file(self, handle) -> bool:
        try:
            return os.fstat(handle.fileno()).st_ino == os.lstat(self.path).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            pause_for_tests("cleanup", 1)
        if self._file_lock is not None:
            os.close(self._file_lock)
            self._file_lock = None
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()  # closing releases the lock
            self._handle = None


def _flock_holder(descriptor: int) -> str:
    """Which process holds a flock on this open file, from ``/proc/locks`` (Linux), as best known."""
    status = os.fstat(descriptor)
    key = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
            return f"process {fields[4]}"
    return "another process"


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

    def replaced(self) -> None:
        """The output was replaced by a new file of the same name: lock that file instead."""
        if self._lock is not None:
            self._lock.relock()

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
