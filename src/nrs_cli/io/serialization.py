"""Safe file I/O shared by checkpoints, sigma files and results.

Files that may come from elsewhere are read with ``torch.load(...,
weights_only=True)``: tensors, numbers, strings, lists and dicts only, never
arbitrary pickled objects. Everything we write goes to a temporary file first
and is renamed into place, so an interrupted run never leaves half a file.
Files nrs writes carry a digest of their content (``content_sha256``), so a
damaged one is refused rather than used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from nrs_cli.errors import NrsError


def load_weights_only(path: str | os.PathLike, what: str) -> Any:
    """``torch.load`` that only accepts plain data, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise NrsError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on checking sparse tensors: one line per error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if refused:
            raise NrsError(
                f"refusing to load {what} {path}: it holds Python objects ({refused.group(1)}) "
                "that a weights-only load does not allow"
            ) from None
        raise NrsError(f"cannot read {what} {path}: not a weights-only PyTorch file, or the file is corrupt") from None
    except Exception:  # noqa: BLE001 - torch raises many types for a damaged archive
        raise NrsError(f"cannot read {what} {path}: not a PyTorch file, or the file is corrupt") from None


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically. Serialised in memory first: torch turns a failed write (a full disk, a
    file-size limit) into an unreadable RuntimeError, a plain write keeps the OSError that says why."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    _atomic_write(path, "wb", lambda handle: handle.write(buffer.getbuffer()))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, "w", lambda handle: handle.write(text))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    _atomic_write(path, "wb", lambda handle: handle.write(data))


def _atomic_write(path: str | os.PathLike, mode: str, write) -> None:
    """Write a new file beside ``path`` and rename it into place.

    The temporary file is created exclusively (``O_EXCL``, never an existing file or a link someone
    placed there) in the output's own folder, and removed when anything fails: a full disk, a
    file-size limit (``EFBIG``), Ctrl-C. The rename replaces ``path`` itself: a symbolic link there
    is replaced, never followed, so the file it pointed to stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        with os.fdopen(descriptor, mode) as handle:
            write(handle)
            os.fchmod(handle.fileno(), 0o666 & ~umask)  # temporary files are private; results are not
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file: name the output
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and values: the identity of a model or sigma."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


DIGEST_KEY = "content_sha256"


def payload_digest(payload: dict[str, Any]) -> str:
    """sha256 of a saved dict: its tensors (names, dtypes, shapes, values) and everything else as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        else:
            plain[prefix] = value

    for key, value in payload.items():
        if key != DIGEST_KEY:
            walk(str(key), value)
    text = json.dumps(plain, sort_keys=True, default=repr)
    return hashlib.sha256((tensor_digest(tensors) + text).encode()).hexdigest()


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, DIGEST_KEY: payload_digest(payload)}


def check_digest(payload: dict[str, Any], what: str, path: str | os.PathLike) -> None:
    """Refuse a file nrs wrote whose content no longer matches its digest (files from elsewhere have none)."""
    if DIGEST_KEY in payload and payload[DIGEST_KEY] != payload_digest(payload):
        raise NrsError(f"{what} {path} is damaged: its content does not match the digest it was saved with")


def json_ready(value: Any) -> Any:
    """Plain JSON data: non-finite floats become null, anything JSON cannot hold becomes its repr."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)


def write_json(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Strict JSON (no NaN or Infinity), written atomically."""
    atomic_write_text(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n", path)


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON object from a file nrs wrote, or a one-line error saying it is damaged."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise NrsError(f"cannot read {what} {path}: it is not the JSON object nrs wrote (damaged or truncated)")
    return data
