"""Datasets as nrs serves them: the loader registry, in-memory images, input order, digests, batches.

Datasets as nrs serves them: the loader registry (a name maps to a function that reads one
split, see :mod:`nrs_cli.io.loaders`), where data lives, in-memory images, the order and
selection of inputs, digests of the inputs read, and batches."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, Subset

from nrs_cli.errors import NrsError
from nrs_cli.io.spec import DataSpec
from nrs_cli.io.spec_files import error_line

DATA_ROOT_ENV = "NRS_DATA_ROOT"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Loader:
    name: str
    description: str
    read: Callable[[DataSpec, Path, str], Dataset]
    family: str  # loaders of one family read the same kind of images (a model for one fits the other)


LOADERS: dict[str, Loader] = {}


def register_loader(name: str, description: str, family: str | None = None):
    """Register ``read(spec, root, split) -> Dataset`` under ``name``."""

    def decorate(read):
        LOADERS[name] = Loader(name, description, read, family or name)
        return read

    return decorate


def list_loaders() -> dict[str, str]:
    return {name: loader.description for name, loader in sorted(LOADERS.items())}


def data_family(loader: str) -> str:
    """The family of a loader name (unknown names are their own family)."""
    return LOADERS[loader].family if loader in LOADERS else loader


def default_data_root() -> Path:
    """Per-user cache folder, used when neither --data-root nor $NRS_DATA_ROOT is set."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nrs" / "data"


def resolve_data_root(option: str | os.PathLike | None = None) -> Path:
    """--data-root, then $NRS_DATA_ROOT, then the per-user cache folder."""
    if option:
        return Path(option)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return default_data_root()


class Selection(Subset):
    """Some items of a dataset, in a chosen order, still answering for the dataset (its ``summary``, ...)."""

    def __getattr__(self, name: str):
        if name in ("dataset", "indices"):  # not set yet (while unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def split_labels(dataset: Dataset) -> list[int]:
    """The label of every item, read without loading images where the dataset knows them."""
    if isinstance(dataset, Subset):
        labels = split_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, ImageTensorDataset):
        return dataset.labels.tolist()
    for known in ("targets", "labels"):
        if isinstance(getattr(dataset, known, None), list):
            return list(getattr(dataset, known))
    return [int(dataset[i][1]) for i in range(len(dataset))]


def positions_by_class(labels: list[int]) -> dict[int, list[int]]:
    """Each class's positions in ``labels``, in stored order."""
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    return by_class


def interleaved_order(labels: list[int], seed: int) -> list[int]:
    """Positions taking the classes in turn, each class in a seeded order: the first k * C items hold
    k of every class (while it lasts), so "the first N test inputs" are a class-balanced sample."""
    generator = torch.Generator().manual_seed(seed)
    by_class = positions_by_class(labels)
    queues = []
    for label in sorted(by_class):
        members = by_class[label]
        queues.append([members[i] for i in torch.randperm(len(members), generator=generator).tolist()])
    return _take_in_turn(queues)


INPUT_SETS = ("selection", "report")  # what chooses, what reports


def input_set_pools(labels: list[int], seed: int) -> dict[str, list[int]]:
    """The selection and the report pool of a split, as lists of positions.

    Each class's items are shuffled (seeded) and dealt alternately: the 1st, 3rd, ... to the
    selection pool, the 2nd, 4th, ... to the report pool; each pool then takes the classes in turn.
    The pools are disjoint by construction, hold half of every class each, and any prefix of a pool
    is class-balanced (k of every class in its first k * C items, while a class lasts).
    """
    digest = hashlib.blake2b(f"input sets/{seed}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    by_class = positions_by_class(labels)
    dealt: dict[str, list[list[int]]] = {name: [] for name in INPUT_SETS}
    for label in sorted(by_class):
        members = by_class[label]
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        dealt["selection"].append(shuffled[0::2])
        dealt["report"].append(shuffled[1::2])
    return {name: _take_in_turn(queues) for name, queues in dealt.items()}


def _take_in_turn(queues: list[list[int]]) -> list[int]:
    longest = max((len(q) for q in queues), default=0)
    return [queue[k] for k in range(longest) for queue in queues if k < len(queue)]


def input_set(dataset: Dataset, which: str, count: int, seed: int) -> list[int]:
    """The first ``count`` inputs of the dataset's selection or report pool (see :func:`input_set_pools`);
    all of it when ``count`` is -1 or more than it holds, as ``--max`` beyond a split's end."""
    if which not in INPUT_SETS:
        raise NrsError(f"unknown input set '{which}' (use {' or '.join(INPUT_SETS)})")
    pool = input_set_pools(split_labels(dataset), seed)[which]
    return pool if count < 0 else pool[:count]


def inputs_digest(dataset: Dataset, indices: list[int]) -> str:
    """sha256 of the images and labels at these indices, as the loader serves them: the data a result is about.

    In-memory datasets are hashed from their stored pixels at once; others image by image.
    """
    digest = hashlib.sha256()
    base, mapped = _in_memory(dataset, indices)
    if base is not None:
        order = torch.tensor(mapped, dtype=torch.long)
        digest.update(base.images[order].contiguous().numpy().tobytes())
        digest.update(base.labels[order].numpy().tobytes())
        return digest.hexdigest()
    for index in indices:
        image, label = dataset[index]
        digest.update(image.contiguous().numpy().tobytes())
        digest.update(str(int(label)).encode() + b";")
    return digest.hexdigest()


def _in_memory(dataset: Dataset, indices: list[int]) -> tuple[ImageTensorDataset | None, list[int]]:
    """The in-memory dataset under any subsets, with the indices mapped into it."""
    while isinstance(dataset, Subset):
        indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    return (dataset, indices) if isinstance(dataset, ImageTensorDataset) else (None, indices)


def selected_indices(size: int, skip: int = 1, stop: int = -1) -> list[int]:
    """Every ``skip``-th index below ``stop`` (Cohen et al.'s --skip and --max; -1: no stop)."""
    if skip < 1:
        raise NrsError(f"skip must be at least 1 (got {skip})")
    if stop < -1:
        raise NrsError(f"the input index to stop at must be -1 (all) or at least 0 (got {stop})")
    end = size if stop < 0 else min(size, stop)
    return list(range(0, end, skip))


def iterate_batches(dataset: Dataset, indices: list[int], batch_size: int, workers: int = 0):
    """Yield ``(indices, images, labels)`` for consecutive groups of the given dataset indices."""
    loader = batch_loader(Subset(dataset, indices), batch_size, workers)
    for position, (images, labels) in zip(range(0, len(indices), batch_size), loader):
        yield indices[position : position + batch_size], images, labels


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 NCHW, served as floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} images "
                f"and {tuple(labels.shape)} labels"
            )
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int | list[int]):
        """One ``(image, label)``, or for a list of indices a whole batch ``(images, labels)`` at once."""
        if isinstance(index, list):
            order = torch.tensor(index, dtype=torch.long)
            return self.images[order].float().div_(255), self.labels[order]
        return self.images[index].float().div_(255), int(self.labels[index])


def in_memory(dataset: Dataset) -> bool:
    """Whether batches can be fetched at once (``dataset[list_of_indices]``): images held in memory."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, ImageTensorDataset)


def batch_loader(dataset: Dataset, batch_size: int, workers: int = 0, generator: torch.Generator | None = None):
    """Batches ``(images, labels)`` of a dataset, shuffled by ``generator`` if one is given.

    In-memory datasets are indexed a batch at a time; the order is what
    ``DataLoader(shuffle=True, generator=...)`` draws in either case.
    """
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    if not in_memory(dataset):
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator, num_workers=workers
        )
    order = RandomSampler(dataset, generator=generator) if generator is not None else SequentialSampler(dataset)
    # the generator goes to the loader too: its iterator draws a worker seed from it, as DataLoader(shuffle) does
    return DataLoader(
        dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False), generator=generator
    )


def missing_data(what: str, root: Path, layout: str, reason: str = "") -> NrsError:
    hint = f"; {reason}" if reason else ""
    return NrsError(
        f"{what} not found under {root}: expected {layout} "
        f"(point --data-root or ${DATA_ROOT_ENV} at the folder that holds it{hint})"
    )


def ensure_files(spec: DataSpec, what: str, root: Path, layout: str, present, download) -> None:
    """Make sure a dataset's files exist: download once if allowed, else explain the layout."""
    if present():
        return
    if not spec.download:
        raise missing_data(what, root, layout, "downloading is off for this spec")
    try:
        download()
    except Exception as err:  # noqa: BLE001 - any network or archive failure means "not available"
        raise missing_data(what, root, layout, f"download failed: {error_line(err)}") from None
    if not present():
        raise missing_data(what, root, layout)
