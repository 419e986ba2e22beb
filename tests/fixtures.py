"""Tiny datasets written in the real on-disk formats the loaders read."""

from __future__ import annotations

import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as in the MNIST distribution: magic (0, 0, 0x08, ndim), sizes, uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_raw(root: Path, folder: str = "MNIST", train: int = 12, test: int = 6, seed: int = 0):
    """torchvision's MNIST layout: <root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar_batches(root: Path, per_batch: int = 4, seed: int = 0):
    """The CIFAR-10 python format: pickled dicts with 'data' (N, 3072) uint8 and 'labels'."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, handle, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle, protocol=2)
    return written


def write_image_folder(
    folder: Path, classes: list[str], per_class: int, size: tuple[int, int], seed: int = 0, learnable=False
):
    """ImageFolder layout: <folder>/<class>/<n>.png with random RGB pixels (``learnable``: a shade per class)."""
    rng = np.random.default_rng(seed)
    for number, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        shade = 20 + 215 * number // max(1, len(classes) - 1) if learnable else None
        for index in range(per_class):
            Image.fromarray(pixels_for(rng, (size[1], size[0], 3), shade)).save(folder / name / f"{index:04d}.png")


KITTI_LINE = "{kind} 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59"


def pixels_for(rng, shape: tuple[int, ...], shade: int | None) -> np.ndarray:
    """Random pixels, or (``shade``) a level a small network tells apart within a few steps, with some noise."""
    if shade is None:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return np.clip(shade + rng.integers(-12, 13, size=shape), 0, 255).astype(np.uint8)


def write_kitti(
    root: Path, labels: dict[str, list[str]], size: tuple[int, int] = (40, 30), seed: int = 0, learnable=False
):
    """torchvision's KITTI layout: <root>/Kitti/raw/training/{image_2/<id>.png, label_2/<id>.txt}.

    ``learnable``: an image is dark when Car is its first object, bright otherwise."""
    rng = np.random.default_rng(seed)
    images = root / "Kitti" / "raw" / "training" / "image_2"
    label_dir = root / "Kitti" / "raw" / "training" / "label_2"
    images.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for image_id, kinds in labels.items():
        shade = (40 if kinds[:1] == ["Car"] else 210) if learnable else None
        Image.fromarray(pixels_for(rng, (size[1], size[0], 3), shade)).save(images / f"{image_id}.png")
        (label_dir / f"{image_id}.txt").write_text("".join(KITTI_LINE.format(kind=k) + "\n" for k in kinds))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_copy(root: Path, per_class: int = 3, seed: int = 0, archive: bool = False, learnable=False) -> Path:
    """The CIFAR-10 image copy's layout, cifar10-jpeg/{train,test}/<class>/NNNN.png (lossless), or its .tar.gz."""
    folder = root / "cifar10-jpeg"
    for split in ("train", "test"):
        write_image_folder(folder / split, CIFAR10_CLASSES, per_class, (32, 32), seed, learnable)
    if not archive:
        return folder
    path = root / "cifar10-jpeg.tar.gz"
    with tarfile.open(path, "w:gz") as handle:
        handle.add(folder, arcname="cifar10-jpeg")
    shutil.rmtree(folder)
    return path
