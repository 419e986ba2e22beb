"""The built-in dataset loaders, one per on-disk format, and the function that serves a split.

Every loader returns a map-style dataset of ``(image, label)`` pairs with the image a float
tensor of raw pixels in [0, 1] (normalisation lives inside the model, so noise and sigma speak
of pixels). Loaders read the real on-disk formats through torchvision; when files are missing
they try torchvision's download once (if the spec allows it) and otherwise raise a one-line
:class:`NrsError` naming the folder layout they expect.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from collections import Counter
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.data import (
    LOADERS,
    SPLITS,
    ImageTensorDataset,
    Selection,
    ensure_files,
    interleaved_order,
    missing_data,
    register_loader,
    resolve_data_root,
    split_labels,
)
from nrs_cli.io.folders import image_transform, load_dataset_spec, open_rgb, read_image_folder
from nrs_cli.io.spec import DataSpec

# Object types of KITTI's 2D detection labels, in the order that breaks ties
# when two types are equally frequent in an image. DontCare regions are ignored.
KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")


def load_split(spec: DataSpec, split: str, root: str | os.PathLike | None = None) -> Dataset:
    """One split of a dataset, subsetted as the spec says, shape-checked."""
    if split not in SPLITS:
        raise NrsError(f"unknown split '{split}' (expected one of: {', '.join(SPLITS)})")
    if spec.loader not in LOADERS:
        raise NrsError(f"unknown dataset loader '{spec.loader}' (known: {', '.join(sorted(LOADERS))})")
    dataset = LOADERS[spec.loader].read(spec, resolve_data_root(root), split)
    _check_labels(dataset, spec, split)
    size = spec.train_size if split == "train" else spec.test_size
    if size is not None and size < len(dataset):
        generator = torch.Generator().manual_seed(spec.split_seed + (0 if split == "train" else 1))
        chosen = torch.randperm(len(dataset), generator=generator)[:size].sort().values
        dataset = Selection(dataset, chosen.tolist())
    if spec.order == "interleaved":
        dataset = Selection(dataset, interleaved_order(split_labels(dataset), spec.split_seed))
    if len(dataset) == 0:
        raise NrsError(f"the {split} split of '{spec.loader}' is empty")
    shape = tuple(dataset[0][0].shape)
    if shape != tuple(spec.input_shape):
        raise NrsError(
            f"{spec.loader} {split} images have shape {'x'.join(map(str, shape))}, "
            f"but the spec says input_shape {'x'.join(map(str, spec.input_shape))}"
        )
    return dataset


def load_data(
    dataset: str, split: str = "test", data_root: str | os.PathLike | None = None, resize: int | None = None
) -> Dataset:
    """One split of a dataset by name (built-in, YAML spec file or image folder), in the order the
    commands use: item ``i`` is the row with ``idx`` i of a certify table. Images are float tensors
    of pixels in [0, 1]; ``resize`` brings a folder's images to ``resize`` x ``resize``."""
    spec = load_dataset_spec(dataset, {"data.resize": resize} if resize else None, data_root)
    return load_split(spec.data, split, data_root)


def _check_labels(dataset: Dataset, spec: DataSpec, split: str) -> None:
    """Labels held in memory must name one of the spec's classes (others are checked as images are read)."""
    if isinstance(dataset, ImageTensorDataset) and len(dataset.labels):
        low, high = int(dataset.labels.min()), int(dataset.labels.max())
        if low < 0 or high >= spec.num_classes:
            raise NrsError(
                f"{spec.loader} {split} labels run from {low} to {high}, but the spec has {spec.num_classes} classes"
            )


def _read_idx_dataset(cls, what: str, folder: str):
    def read(spec: DataSpec, root: Path, split: str) -> Dataset:
        raw = root / folder / "raw"
        names = [f"{p}-{kind}-ubyte" for p in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
        ensure_files(
            spec,
            what,
            root,
            f"{raw}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
            lambda: all((raw / name).is_file() for name in names),
            lambda: cls(str(root), download=True),
        )
        try:
            data = cls(str(root), train=(split == "train"), download=False)
            return ImageTensorDataset(data.data.unsqueeze(1).contiguous(), data.targets)
        except Exception as err:  # noqa: BLE001 - torchvision raises many types for damaged IDX files
            raise NrsError(f"cannot read the {what} {split} files in {raw}: damaged or truncated ({err})") from None

    return read


def _register_torchvision_idx():
    from torchvision.datasets import MNIST, FashionMNIST

    register_loader("mnist", "MNIST digits, torchvision IDX files (MNIST/raw/...)")(
        _read_idx_dataset(MNIST, "MNIST", "MNIST")
    )
    register_loader("fashion-mnist", "Fashion-MNIST, torchvision IDX files (FashionMNIST/raw/...)")(
        _read_idx_dataset(FashionMNIST, "Fashion-MNIST", "FashionMNIST")
    )


_register_torchvision_idx()


@register_loader("mnist-mini", "5,000 train / 1,000 test MNIST digits shipped inside nrs (no download)", "mnist")
def _read_mnist_mini(spec: DataSpec, root: Path, split: str) -> Dataset:
    with np.load(str(files("nrs_cli") / "assets" / "mnist-mini.npz"), allow_pickle=False) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1).contiguous()
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return ImageTensorDataset(images, labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR-10 batch pickles: dicts, lists, strings and numpy arrays, no other objects."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")


CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar10_batches(folder: Path, split: str) -> ImageTensorDataset:
    """The original CIFAR-10 python batches (cifar-10-batches-py/) of one split."""
    images, labels = [], []
    for name in CIFAR10_BATCHES[split]:
        try:
            with open(folder / name, "rb") as handle:
                batch = _ArrayUnpickler(handle, encoding="latin1").load()
        except (OSError, pickle.UnpicklingError, ValueError, EOFError, AttributeError, IndexError) as err:
            raise NrsError(f"cannot read CIFAR-10 batch {folder / name}: {err}") from None
        pixels, classes = _cifar_batch_arrays(batch, folder / name)
        images.append(pixels)
        labels.append(classes)
    return ImageTensorDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _cifar_batch_arrays(batch, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch's pixels (N, 3, 32, 32) uint8 and labels (N,) int64, after checking what the pickle holds:
    a dict with ``data`` (N x 3072 whole numbers from 0 to 255) and ``labels`` (N whole numbers)."""
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise NrsError(f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")
    try:
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except ValueError:  # lists of unequal lengths make no array
        raise NrsError(f"{path}: its data or labels are ragged, not N x 3072 pixel values and N labels") from None
    if data.dtype.kind not in "uif" or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise NrsError(f"{path}: its data is {data.dtype} {data.shape}, not N x 3072 pixel values (damaged?)")
    if data.size and (not np.isfinite(data).all() or data.min() < 0 or data.max() > 255 or (data % 1).any()):
        raise NrsError(f"{path}: its pixels must be whole numbers from 0 to 255 (found {data.min()} to {data.max()})")
    if labels.dtype.kind not in "ui" or labels.shape != (len(data),):
        raise NrsError(
            f"{path}: its labels are {labels.dtype} {labels.shape}, not {len(data)} whole numbers (damaged?)"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"  # the JPEG copy as distributed: cifar10-jpeg/{train,test}/<class>/*.jpg


def read_cifar10_images(source: Path, split: str) -> ImageTensorDataset:
    """An image copy of CIFAR-10 (``<split>/<class>/<image>``), from its folder or straight from its .tar.gz,
    decoded into memory (60,000 JPEGs take a few seconds), in class then file-name order."""

    found: dict[str, list[tuple[str, bytes]]] = {}
    for class_name, name, data in _image_files(source, split):
        found.setdefault(class_name, []).append((name, data))
    missing = [c for c in CIFAR10_CLASSES if c not in found]
    if missing or len(found) != len(CIFAR10_CLASSES):
        extra = sorted(set(found) - set(CIFAR10_CLASSES))
        raise NrsError(
            f"{source} is not a whole CIFAR-10 copy: its {split} split lacks the classes {', '.join(missing) or '-'}"
            + (f" and has others ({', '.join(extra)})" if extra else "")
        )
    images, labels = [], []
    for label, class_name in enumerate(CIFAR10_CLASSES):
        for name, data in sorted(found[class_name]):
            pixels = np.asarray(open_rgb(data, f"{source}: {split}/{class_name}/{name}"))
            if pixels.shape != (32, 32, 3):
                raise NrsError(
                    f"{source}: {split}/{class_name}/{name} is {pixels.shape[1]}x{pixels.shape[0]}, not 32x32"
                )
            images.append(pixels)
            labels.append(label)
    array = np.stack(images).transpose(0, 3, 1, 2).copy()
    return ImageTensorDataset(torch.from_numpy(array), torch.tensor(labels))


def _image_files(source: Path, split: str):
    """``(class, file name, bytes)`` of one split of an image copy: a folder, or a .tar.gz holding one."""
    if source.is_dir():
        folder = source / split
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            for path in sorted(p for p in class_dir.iterdir() if p.is_file()):
                yield class_dir.name, path.name, path.read_bytes()
        return
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 4 and parts[1] == split:
                    yield parts[2], parts[3], archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise NrsError(f"cannot read the archive {source}: {err}") from None


@register_loader(
    "cifar10",
    f"CIFAR-10: the python batches (cifar-10-batches-py/), a JPEG copy cifar10-jpeg/, or {CIFAR10_ARCHIVE} as it is",
)
def _read_cifar10(spec: DataSpec, root: Path, split: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    pickles = root / "cifar-10-batches-py"
    jpeg, archive = root / (spec.folder or "cifar10-jpeg"), root / CIFAR10_ARCHIVE
    if spec.folder is not None or (not pickles.is_dir() and jpeg.is_dir()):
        return read_cifar10_images(jpeg, split)
    if not pickles.is_dir() and archive.is_file():
        return read_cifar10_images(archive, split)
    layout = f"{pickles}/{{data_batch_1..5,test_batch}}, {jpeg}/{{train,test}}/<class>/<image> or {archive}"
    ensure_files(
        spec,
        "CIFAR-10",
        root,
        layout,
        lambda: all((pickles / name).is_file() for names in CIFAR10_BATCHES.values() for name in names),
        lambda: CIFAR10(str(root), download=True),
    )
    return read_cifar10_batches(pickles, split)


# What to download, for the error when the data is missing (neither can be downloaded for you).
IMAGENET_FETCH = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org (free account), unpack "
    "each into imagenet/train and imagenet/val with one sub-folder per wnid (the validation images sorted by "
    "ILSVRC2012_devkit_t12's labels)"
)
KITTI_FETCH = (
    "download data_object_image_2.zip (12 GB) and data_object_label_2.zip of the KITTI 2D object benchmark "
    "(cvlibs.net/datasets/kitti/eval_object.php) and unzip both into Kitti/raw/"
)


@register_loader("imagenet", "ILSVRC-2012 as ImageFolder: imagenet/{train,val}/<wnid>/<image> (test = val)")
def _read_imagenet(spec: DataSpec, root: Path, split: str) -> Dataset:
    base = root / (spec.folder or "imagenet")
    folder = base / ("train" if split == "train" else "val")
    layout = f"{base}/{{train,val}}/<wnid>/<image>.JPEG"
    return read_image_folder(spec, folder, "ImageNet", layout, root, IMAGENET_FETCH)


class KittiClassification(Dataset):
    """KITTI 2D object detection turned into image classification (paper section 5).

    An image's label is its most frequent object type (``DontCare`` ignored;
    ties go to the type listed first in :data:`KITTI_CLASSES`). Images without
    any labelled object are dropped and counted in :attr:`dropped`. The labelled
    training images are split by ``split_seed`` into train and test parts.
    """

    def __init__(self, spec: DataSpec, root: Path, split: str):
        from torchvision.datasets import Kitti

        layout = f"{root}/Kitti/raw/training/{{image_2,label_2}}/"
        try:
            kitti = Kitti(str(root), train=True, download=False)
        except RuntimeError:
            raise missing_data("KITTI", root, layout, KITTI_FETCH) from None
        pairs = sorted(zip(kitti.images, kitti.targets))
        labelled = [(image, kitti_image_label(target)) for image, target in pairs]
        kept = [(image, label) for image, label in labelled if label is not None]
        self.dropped = len(labelled) - len(kept)
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(spec.split_seed)).tolist()
        num_test = round(len(kept) * spec.test_fraction)
        chosen = sorted(order[:num_test] if split == "test" else order[num_test:])
        self.samples = [kept[i] for i in chosen]
        self.targets = [label for _, label in self.samples]
        self.transform = image_transform(spec)
        self.summary = (
            f"KITTI: {len(kept)} of {len(labelled)} training images have labelled objects "
            f"({self.dropped} without any dropped); {split} split: {len(self.samples)} images"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(open_rgb(path, path)), label


def kitti_image_label(label_file: str | os.PathLike) -> int | None:
    """Index in KITTI_CLASSES of the most frequent object type in a label_2 file (None: no object)."""
    try:
        with open(label_file) as lines:
            types = [line.split()[0] for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise NrsError(f"cannot read the KITTI label file {label_file}: {err}") from None
    unknown = sorted(set(types) - set(KITTI_CLASSES) - {"DontCare"})
    if unknown:
        raise NrsError(
            f"{label_file}: unknown object type {unknown[0][:30]!r} (KITTI's are {', '.join(KITTI_CLASSES)}, DontCare)"
        )
    counts = Counter(t for t in types if t in KITTI_CLASSES)
    if not counts:
        return None
    return max(range(len(KITTI_CLASSES)), key=lambda c: (counts[KITTI_CLASSES[c]], -c))


@register_loader("kitti", "KITTI 2D objects (Kitti/raw/training/...), label = most frequent object type")
def _read_kitti(spec: DataSpec, root: Path, split: str) -> Dataset:
    return KittiClassification(spec, root, split)
