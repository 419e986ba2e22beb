"""Natural images: CIFAR-10 in all its layouts, class-balanced first inputs, small sigmas through the
figures pipeline, and ImageNet and KITTI end to end on fixtures in their real on-disk layouts."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import CIFAR10_CLASSES, write_cifar_batches, write_cifar_copy, write_image_folder, write_kitti
from PIL import Image

from nrs_cli.errors import NrsError
from nrs_cli.io.data import split_labels
from nrs_cli.io.loaders import load_split
from nrs_cli.io.spec import load_spec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def cifar(**changes):
    return dataclasses.replace(load_spec("cifar10").data, download=False, **changes)


def pixels_and_labels(dataset):
    return sorted((int(label), image.numpy().tobytes()) for image, label in (dataset[i] for i in range(len(dataset))))


def test_cifar10_image_copy_reads_alike_from_its_folder_and_its_archive(tmp_path):
    folder = write_cifar_copy(tmp_path / "a", per_class=2)
    archive = write_cifar_copy(tmp_path / "b", per_class=2, archive=True)
    assert archive.name == "cifar10-jpeg.tar.gz" and not (tmp_path / "b" / "cifar10-jpeg").exists()
    for split in ("train", "test"):
        from_folder, from_archive = (
            load_split(cifar(), split, folder.parent),
            load_split(cifar(), split, tmp_path / "b"),
        )
        assert len(from_folder) == len(from_archive) == 20
        assert pixels_and_labels(from_folder) == pixels_and_labels(from_archive)
    image, label = from_folder[3]
    expected = np.asarray(Image.open(folder / "test" / CIFAR10_CLASSES[label] / "0000.png"))
    assert torch.equal(image, torch.from_numpy(expected.transpose(2, 0, 1).copy()).float() / 255)


@pytest.mark.parametrize("layout", ["pickles", "folder", "archive"])
def test_the_first_inputs_of_cifar10_cover_every_class(tmp_path, layout):
    if layout == "pickles":
        write_cifar_batches(tmp_path, per_batch=40)
    else:
        write_cifar_copy(tmp_path, per_class=4, archive=layout == "archive")
    test = load_split(cifar(), "test", tmp_path)
    labels = split_labels(test)
    assert sorted(labels[:10]) == list(range(10)) or layout == "pickles"  # a copy: every class in turn
    assert set(labels[: min(100, len(labels))]) == set(labels)


def test_the_first_100_inputs_of_the_shipped_and_shared_mnist_cover_every_class():
    for name in ("mnist-mini", "mnist", "fashion-mnist"):
        spec = load_spec(name).data
        if name != "mnist-mini" and not SHARED.is_dir():
            continue  # the full datasets live beside the checkout, not in CI's clone
        labels = split_labels(load_split(spec, "test", SHARED))
        assert set(labels[:100]) == set(range(10)), name  # their published order is already mixed


def test_imagenet_and_kitti_first_inputs_are_a_spread_of_classes(tmp_path):
    wnids = [f"n{k:08d}" for k in range(20)]
    for split in ("train", "val"):
        write_image_folder(tmp_path / "imagenet" / split, wnids, per_class=4, size=(12, 12))
    spec = dataclasses.replace(
        load_spec("imagenet").data, num_classes=20, resize=8, crop=8, input_shape=(3, 8, 8), test_size=60
    )
    labels = split_labels(load_split(spec, "test", tmp_path))
    assert len(set(labels[:20])) >= 18  # a seeded subset of 60 of 80, then the classes in turn
    kitti = {f"{i:06d}": ["Car"] * 3 for i in range(30)} | {f"1{i:05d}": ["Tram"] for i in range(6)}
    write_kitti(tmp_path, kitti)
    spec = dataclasses.replace(load_spec("kitti").data, resize=16, input_shape=(3, 16, 16), test_fraction=0.5)
    labels = split_labels(load_split(spec, "test", tmp_path))
    assert len(set(labels[:2])) == 2  # Car and Tram from the start, though Car is 5 times as common


def test_bad_natural_image_data_is_one_line(tmp_path):
    folder = write_cifar_copy(tmp_path / "partial", per_class=1)
    for name in ("dog", "frog"):
        for path in (folder / "test" / name).iterdir():
            path.unlink()
        (folder / "test" / name).rmdir()
    with pytest.raises(NrsError, match="its test split lacks the classes dog, frog"):
        load_split(cifar(), "test", tmp_path / "partial")
    write_kitti(tmp_path / "k", {"000000": ["Car", "Spaceship"], "000001": ["Van"]})
    with pytest.raises(NrsError, match="unknown object type 'Spaceship'"):
        load_split(load_spec("kitti").data, "train", tmp_path / "k")
    write_image_folder(tmp_path / "i" / "imagenet" / "val", ["n01", "n02"], per_class=2, size=(8, 8))
    (tmp_path / "i" / "imagenet" / "val" / "n03").mkdir()  # a class without images
    with pytest.raises(NrsError, match="n03"):
        load_split(dataclasses.replace(load_spec("imagenet").data, num_classes=3), "test", tmp_path / "i")


TINY = [
    "--set", "train.epochs=3", "--set", "train.batch_size=16", "--set", "optimize.batch_size=4",
    "--set", "optimize.n0=4", "--set", "optimize.eval_n0=8", "--set", "optimize.eval_n=32",
    "--set", "figures.inits=2", "--set", "figures.sub_epochs=1", "--set", "figures.steps_per_sub_epoch=2",
    "--set", "figures.eval_max=12", "--set", "figures.certify_max=12", "--set", "certify.n0=8",
    "--set", "certify.n=40", "--set", "data.workers=0", "--set", "inputs.refine_steps=2",
    "--set", "inputs.bootstrap=200",
]  # fmt: skip


def figures_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_figures_with_small_sigmas_on_cifar_sized_images(run_cli, tmp_path, monkeypatch):
    write_cifar_copy(tmp_path / "data", per_class=6, archive=True, learnable=True)
    monkeypatch.chdir(tmp_path)
    small = ["--set", "figures.init=0.002", "--set", "figures.init_step=0.001", "--set", "figures.baseline_step=0.0005"]
    args = ["figures", "--dataset", "cifar10-cpu", "--data-root", tmp_path / "data", *TINY, *small]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    written = figures_files(tmp_path / "figures" / "cifar10-cpu")
    assert {"fig1-certified-accuracy-area.png", "fig2-clean-accuracy.pdf", "fig3-sigma.png"} <= written
    certified = sorted(p.name for p in (tmp_path / "runs" / "cifar10-cpu" / "certify").glob("figures-iso-*.tsv"))
    assert certified and all(0.001 <= float(name[len("figures-iso-") : -4]) <= 0.01 for name in certified)
    assert run_cli(*args).code == 0  # everything finished is reused


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["imagenet", "kitti"])
def test_figures_end_to_end_on_real_layout_fixtures(run_cli, tmp_path, monkeypatch, dataset):
    if dataset == "imagenet":
        for split in ("train", "val"):
            write_image_folder(tmp_path / "data" / "imagenet" / split, ["n01440764", "n01443537"], 6, (40, 30), 0, True)
        sizes = ["--set", "data.num_classes=2", "--set", "data.resize=40", "--set", "data.crop=32"]
    else:
        kinds = {f"{i:06d}": ["Car", "Car", "DontCare"] if i % 2 else ["Pedestrian"] for i in range(12)}
        write_kitti(tmp_path / "data", kinds, size=(60, 40), learnable=True)
        sizes = ["--set", "data.resize=32", "--set", "train.batch_size=4"]
    monkeypatch.chdir(tmp_path)
    result = run_cli(
        "figures", "--dataset", dataset, "--data-root", tmp_path / "data", "--set", "model.pretrained=false",
        "--set", "data.input_shape=[3, 32, 32]", *sizes, *TINY, "--set", "figures.init=0.01",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    figure = "fig4-clean-accuracy.png" if dataset == "kitti" else "fig2-clean-accuracy.png"
    assert {figure, "fig3-sigma.png", "table-certified-accuracy-radius.md"} <= figures_files(
        tmp_path / "figures" / dataset
    )
    assert os.path.getsize(tmp_path / "figures" / dataset / "fig3-sigma.png") > 1000
