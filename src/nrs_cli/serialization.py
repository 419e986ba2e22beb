"""Safe file I/O shared by checkpoints, sigma files and results.

Files that may come from elsewhere are read with ``torch.load(...,
weights_only=True)``: tensors, numbers, strings, lists and dicts only, never
arbitrary pickled objects. Everything we write goes to a temporary file first
and is renamed into place, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
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
    _atomic_write(path, "wb", lambda handle: torch.save(payload, handle))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, "w", lambda handle: handle.write(text))


def _atomic_write(path: str | os.PathLike, mode: str, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        write(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)  # temporary files are private; results are not
    os.replace(handle.name, path)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and values: the identity of a model or sigma."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
