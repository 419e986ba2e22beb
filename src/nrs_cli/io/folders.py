"""Image folders: read any folder of class sub-folders, and make its run spec without a YAML file.

Two layouts, as torchvision's ``ImageFolder`` reads them (classes are the sorted sub-folder names):

- ``DIR/<class>/<image>``: one folder, split into train and test by ``data.split_seed``, a share
  of ``data.test_fraction`` of every class going to test;
- ``DIR/{train,test}/<class>/<image>``: the split as the folders say.

:func:`folder_spec` infers what a spec needs from the images: the classes, the channels (1 when
every image sampled is greyscale, else 3) and the size (of the first image, or ``data.resize`` /
``data.crop``). Everything else keeps its default; the normalisation is the identity unless
``data.mean`` / ``data.std`` are given; the classes are taken in turn (``data.order: interleaved``).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.data import Selection, missing_data, positions_by_class, register_loader
from nrs_cli.io.spec import DataSpec, RunSpec, build_spec, builtin_specs, load_spec
from nrs_cli.io.spec_ranges import NAME_LENGTH

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SAMPLED_PER_CLASS = 4  # images per class whose colour mode decides the channels
FOLDER_LAYOUTS = "DIR/<class>/<image> or DIR/{train,test}/<class>/<image>"


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """The image files in a class folder at any depth, in the order torchvision's ``ImageFolder`` lists them
    (folders by path, then files by name); links to folders are not followed, so a loop cannot hang the walk."""
    return [
        Path(parent) / name
        for parent, _, names in sorted(os.walk(folder))
        for name in sorted(names)
        if name.lower().endswith(IMAGE_SUFFIXES)
    ]


def _class_folders(folder: Path) -> list[Path] | None:
    """The class sub-folders of a folder, if it has two or more and each holds an image (at any depth)."""
    if not folder.is_dir():
        return None
    classes = _subfolders(folder)
    if len(classes) < 2 or not all(_images(c) for c in classes):
        return None
    return classes


def is_split_layout(folder: Path) -> bool:
    """``DIR/{train,test}/<class>/<image>`` rather than ``DIR/<class>/<image>``."""
    return _class_folders(folder / "train") is not None and _class_folders(folder / "test") is not None


def is_image_folder(folder: Path) -> bool:
    """Whether a folder is in one of the two layouts."""
    return is_split_layout(folder) or _class_folders(folder) is not None


def class_names(folder: Path) -> list[str]:
    """The classes of an image folder (the train split's, which the test split must repeat)."""
    if is_split_layout(folder):
        train = [c.name for c in _class_folders(folder / "train")]
        test = [c.name for c in _class_folders(folder / "test")]
        if train != test:
            extra = sorted(set(train) ^ set(test))
            raise NrsError(f"{folder}: train and test have different classes ({', '.join(extra[:5])} in only one)")
        return train
    found = _class_folders(folder)
    if found is None:
        raise NrsError(f"{folder} is not an image folder: expected {FOLDER_LAYOUTS} (two or more classes)")
    return [c.name for c in found]


def _sampled_images(folder: Path) -> list[Path]:
    base = folder / "train" if is_split_layout(folder) else folder
    return [image for c in _class_folders(base) for image in _images(c)[:SAMPLED_PER_CLASS]]


# Decoded images larger than this are refused (PIL's decompression-bomb guard, as an error rather than a
# warning): a few hundred bytes of PNG can otherwise expand to gigabytes. ImageNet's largest is under 2^25.
MAX_IMAGE_PIXELS = 2**27


def open_rgb(source: str | os.PathLike | bytes, where: str):
    """An image file (or its bytes) decoded to RGB, with a one-line error for a damaged file or a
    decompression bomb."""
    return _read_image(source, where, lambda image: image.convert("RGB"))


def _read_image(source: str | os.PathLike | bytes, where: str, read: Callable[[Any], Any]) -> Any:
    """``read(image)`` of an image file (or its bytes) under nrs's pixel limit, with a one-line error for a
    damaged file or a decompression bomb."""
    from PIL import Image

    callers_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PIL checks its global limit while opening and decoding: ours for this read only, whatever the
            # caller set, and theirs again afterwards
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                return read(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NrsError(
            f"{where}: the image is larger than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise NrsError(f"{where}: cannot read the image: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = callers_limit


def infer_input_shape(folder: Path, resize: int | None = None, crop: int | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` of a folder's images as the loader serves them."""
    modes, sizes = [], []
    for path in _sampled_images(folder):
        mode, size = _read_image(path, str(path), lambda image: (image.mode, image.size))
        modes.append(mode)
        sizes.append(size)
    channels = 1 if all(mode in GREY_MODES for mode in modes) else 3
    width, height = sizes[0]
    side = crop or resize
    return (channels, side, side) if side else (channels, height, width)


def run_name(folder: Path) -> str:
    """A run name from a folder's name (it names run folders: letters, digits, '.', '_' and '-'; cut to
    the length a spec allows)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.")
    name = name if name and name[0].isalnum() else f"images-{name}"
    return name[:NAME_LENGTH].rstrip("-.")


def folder_spec(folder: str | Path, overrides: dict[str, Any] | None = None) -> RunSpec:
    """The run spec of an image folder: classes, channels and size from its images, identity
    normalisation, fp32, every other field its default; ``overrides`` as in :func:`load_spec`
    (``data.resize`` / ``data.crop`` also set the inferred size)."""
    folder = Path(folder)
    overrides = dict(overrides or {})
    classes = class_names(folder)
    size = {key: overrides.get(f"data.{key}") for key in ("resize", "crop")}
    for key, value in size.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NrsError(f"command line: data.{key}: expected a positive integer, got {value!r}")
    channels, height, width = infer_input_shape(folder, size["resize"], size["crop"])
    raw = {
        "name": run_name(folder),
        "description": f"the images in {folder}",
        "data": {
            "loader": "imagefolder",
            "folder": str(folder.resolve()),
            "input_shape": [channels, height, width],
            "num_classes": len(classes),
            "mean": [0.0] * channels,
            "std": [1.0] * channels,
            "download": False,
            "order": "interleaved",
        },
        # the network runs in the memory format it was given, as from Python (identical certificates)
        "engine": {"channels_last": False},
    }
    return build_spec(raw, str(folder), overrides)


def load_dataset_spec(
    dataset: str | None, overrides: dict[str, Any] | None = None, data_root: str | Path | None = None
) -> RunSpec:
    """The spec of a built-in dataset name, a YAML spec file or an image folder (no YAML needed).

    With no dataset: the image folder ``data_root`` if it is one, else ``mnist-mini``. A built-in
    name wins over a folder of the same name in the working directory (write ``./name`` for that).
    """
    if dataset is None:
        root = Path(data_root) if data_root else None
        if root is None or not is_image_folder(root):
            return load_spec("mnist-mini", overrides)
        dataset = str(root)
    path = Path(dataset)
    if path.is_dir() and not (dataset in builtin_specs() and path.name == dataset):
        return folder_spec(path, overrides)
    if not path.exists() and len(path.parts) > 1:  # a path, not a name
        raise NrsError(f"{dataset}: no such image folder or spec file")
    return load_spec(dataset, overrides)


def image_transform(spec: DataSpec):
    """Decoded image -> float tensor in [0, 1] of the spec's size and channels."""
    from torchvision import transforms

    steps = []
    if spec.resize is not None:
        steps.append(transforms.Resize(spec.resize if spec.crop else (spec.resize, spec.resize), antialias=True))
    if spec.crop is not None:
        steps.append(transforms.CenterCrop(spec.crop))
    if spec.input_shape[0] == 1:
        steps.append(transforms.Grayscale())
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


class ImageFiles(Dataset):
    """The images of ``<class>/<image>`` folders, as torchvision's ``ImageFolder`` lists them (every file
    with an image suffix under a class folder, at any depth; hidden folders are not classes), decoded to RGB,
    transformed, and checked against the input shape as they are read."""

    def __init__(self, folder: Path, transform, input_shape: tuple[int, ...]):
        self.classes = [c.name for c in _subfolders(folder)]
        self.samples = [(path, label) for label, name in enumerate(self.classes) for path in _images(folder / name)]
        self.targets = [label for _, label in self.samples]  # labels without reading images (split_labels)
        self.transform = transform
        self.input_shape = tuple(input_shape)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        pixels = self.transform(open_rgb(path, str(path)))
        if tuple(pixels.shape) != self.input_shape:
            found, wanted = "x".join(map(str, pixels.shape)), "x".join(map(str, self.input_shape))
            raise NrsError(
                f"{path} is {found}, but the spec says input_shape {wanted} (--resize N brings every image to NxN)"
            )
        return pixels, label


def read_image_folder(spec: DataSpec, folder: Path, what: str, layout: str, root: Path, fetch: str = "") -> ImageFiles:
    """One split's ``<class>/<image>`` folder (``fetch``: where to get it, for the error when it is missing)."""
    if not folder.is_dir():
        raise missing_data(what, root, layout, fetch)
    dataset = ImageFiles(folder, image_transform(spec), spec.input_shape)
    present = set(dataset.targets)
    empty = [name for label, name in enumerate(dataset.classes) if label not in present]
    if empty:
        raise NrsError(f"{what}: {folder / empty[0]} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    if len(dataset.classes) != spec.num_classes:
        raise NrsError(
            f"{folder} has {len(dataset.classes)} class folders, but the spec says num_classes {spec.num_classes}"
        )
    return dataset


def split_of_one_folder(labels: list[int], fraction: float, seed: int, split: str) -> list[int]:
    """Positions of one split of a single folder: per class, a seeded share ``fraction`` goes to test
    (at least one image of every class with two or more), the rest to train; in stored order."""
    generator = torch.Generator().manual_seed(seed)
    by_class = positions_by_class(labels)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        test = {members[k] for k in order[:count]}
        chosen += [m for m in members if (m in test) == (split == "test")]
    return sorted(chosen)


@register_loader("imagefolder", f"any image folder data.folder (under the data root, or absolute): {FOLDER_LAYOUTS}")
def _read_imagefolder(spec: DataSpec, root: Path, split: str) -> Dataset:
    if spec.folder is None:
        raise NrsError("the imagefolder loader needs data.folder in the spec (a folder under the data root)")
    base = root / spec.folder
    layout = f"{base}/<class>/<image> or {base}/{{train,test}}/<class>/<image>"
    if is_split_layout(base):
        class_names(base)  # train and test must name the same classes
        return read_image_folder(spec, base / split, spec.folder, layout, root)
    if _class_folders(base) is None:
        raise missing_data(spec.folder, root, layout)
    whole = read_image_folder(spec, base, spec.folder, layout, root)
    return Selection(whole, split_of_one_folder(whole.targets, spec.test_fraction, spec.split_seed, split))
