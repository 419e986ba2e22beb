import dataclasses
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_cifar_batches, write_image_folder, write_kitti, write_mnist_raw

from nrs_cli.errors import NrsError
from nrs_cli.io.data import DATA_ROOT_ENV, ensure_files, resolve_data_root
from nrs_cli.io.loaders import KITTI_CLASSES, kitti_image_label, load_split
from nrs_cli.io.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def data_spec(name="mnist", **changes):
    return dataclasses.replace(load_spec(name).data, **changes)


@pytest.mark.parametrize("loader, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_loaders_read_the_files_pixel_for_pixel(tmp_path, loader, folder):
    arrays = write_mnist_raw(tmp_path, folder, train=12, test=6)
    spec = data_spec("mnist", loader=loader, download=False)
    train, test = load_split(spec, "train", tmp_path), load_split(spec, "test", tmp_path)
    assert (len(train), len(test)) == (12, 6)
    image, label = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image[0], torch.from_numpy(arrays["t10k"][0][3]).float() / 255)
    assert label == int(arrays["t10k"][1][3])


def test_cifar10_python_batches(tmp_path):
    written = write_cifar_batches(tmp_path, per_batch=4)
    spec = data_spec("cifar10", download=False, order="stored")
    train, test = load_split(spec, "train", tmp_path), load_split(spec, "test", tmp_path)
    assert (len(train), len(test)) == (20, 4)
    data, labels = written["data_batch_2"]
    image, label = train[5]  # second image of the second batch
    assert label == labels[1]
    # rows are 1024 red, then green, then blue values, each row-major 32x32
    assert torch.equal(image, torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255)


def test_cifar10_batches_refuse_arbitrary_objects(tmp_path):
    write_cifar_batches(tmp_path, per_batch=2)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": dataclasses.Field}, handle)
    with pytest.raises(NrsError, match="not allowed"):
        load_split(data_spec("cifar10", download=False), "test", tmp_path)


def test_cifar10_reads_an_imagefolder_copy(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        write_image_folder(tmp_path / "cifar10-jpeg" / split, classes, per_class=1, size=(32, 32))
    test = load_split(data_spec("cifar10", download=False), "test", tmp_path)
    assert len(test) == 10 and test[9][1] == 9 and test[0][0].shape == (3, 32, 32)


def test_imagefolder_loader_and_class_count_check(tmp_path):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "pets" / split, ["cat", "dog"], per_class=3, size=(8, 8))
    spec = data_spec(
        "cifar10", loader="imagefolder", folder="pets", input_shape=(3, 8, 8), num_classes=2, order="stored"
    )
    train = load_split(spec, "train", tmp_path)
    assert len(train) == 6 and [train[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(NrsError, match="2 class folders, but the spec says num_classes 10"):
        load_split(dataclasses.replace(spec, num_classes=10), "train", tmp_path)
    with pytest.raises(NrsError, match="0000.png is 3x8x8, but the spec says input_shape 3x9x9"):
        load_split(dataclasses.replace(spec, input_shape=(3, 9, 9)), "train", tmp_path)


def test_imagenet_subset_is_seeded_and_resized(tmp_path):
    for split in ("train", "val"):
        write_image_folder(tmp_path / "imagenet" / split, ["n01", "n02"], per_class=5, size=(40, 30))
    spec = data_spec("imagenet", num_classes=2, resize=20, crop=16, input_shape=(3, 16, 16), train_size=4, test_size=3)
    train = load_split(spec, "train", tmp_path)
    test = load_split(spec, "test", tmp_path)  # the val folder
    assert (len(train), len(test)) == (4, 3)
    assert train.indices == load_split(spec, "train", tmp_path).indices  # same seed, same subset
    other = load_split(dataclasses.replace(spec, split_seed=5), "train", tmp_path)
    assert other.indices != train.indices
    assert train[0][0].shape == (3, 16, 16)


KITTI_LABELS = {
    "000000": ["Car", "Car", "Pedestrian", "DontCare", "DontCare", "DontCare"],  # Car
    "000001": ["Pedestrian"] * 4 + ["Car"] * 2,  # Pedestrian despite fewer lines of others
    "000002": ["Cyclist", "Van"],  # a tie: Van comes first in KITTI_CLASSES
    "000003": ["DontCare", "DontCare"],  # no labelled object: dropped
    "000004": [],  # empty label file: dropped
    **{f"0000{i:02d}": ["Truck", "Tram", "Tram"] for i in range(5, 15)},  # Tram
}


def test_kitti_image_label_majority_and_tie_break(tmp_path):
    write_kitti(tmp_path, KITTI_LABELS)
    labels = tmp_path / "Kitti" / "raw" / "training" / "label_2"
    assert KITTI_CLASSES[kitti_image_label(labels / "000000.txt")] == "Car"
    assert KITTI_CLASSES[kitti_image_label(labels / "000001.txt")] == "Pedestrian"
    assert KITTI_CLASSES[kitti_image_label(labels / "000002.txt")] == "Van"
    assert kitti_image_label(labels / "000003.txt") is None
    assert kitti_image_label(labels / "000004.txt") is None


def test_kitti_loader_drops_counts_resizes_and_splits(tmp_path):
    write_kitti(tmp_path, KITTI_LABELS, size=(40, 30))
    spec = data_spec("kitti", resize=24, input_shape=(3, 24, 24), test_fraction=0.25)
    train, test = load_split(spec, "train", tmp_path), load_split(spec, "test", tmp_path)
    assert train.dropped == test.dropped == 2
    assert "13 of 15 training images" in train.summary and "2 without any dropped" in train.summary
    assert (len(train), len(test)) == (10, 3)  # 13 labelled images, 25% to test
    names = {Path(p).stem for p, _ in train.samples} | {Path(p).stem for p, _ in test.samples}
    assert len(names) == 13 and not {Path(p).stem for p, _ in train.samples} & {Path(p).stem for p, _ in test.samples}
    by_name = {Path(p).stem: label for p, label in train.samples + test.samples}
    assert [KITTI_CLASSES[by_name[n]] for n in ("000000", "000001", "000002", "000007")] == [
        "Car",
        "Pedestrian",
        "Van",
        "Tram",
    ]
    image, _ = train[0]
    assert image.shape == (3, 24, 24) and 0 <= float(image.min()) and float(image.max()) <= 1
    again = load_split(spec, "test", tmp_path)
    assert again.samples == test.samples  # deterministic split


@pytest.mark.parametrize(
    "name, layout, fetch",
    [
        ("mnist", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", ""),
        ("fashion-mnist", "FashionMNIST/raw/", ""),
        ("cifar10", "cifar-10-batches-py/{data_batch_1..5,test_batch}", ""),
        ("imagenet", "imagenet/{train,val}/<wnid>/<image>.JPEG", "ILSVRC2012_img_val.tar from image-net.org"),
        ("kitti", "Kitti/raw/training/{image_2,label_2}/", "data_object_label_2.zip"),
    ],
)
def test_missing_data_names_the_expected_layout_and_what_to_download(tmp_path, name, layout, fetch):
    spec = dataclasses.replace(load_spec(name).data, download=False)
    with pytest.raises(NrsError) as err:
        load_split(spec, "test", tmp_path)
    message = str(err.value)
    assert layout in message and fetch in message and "--data-root" in message and "\n" not in message


def test_a_failed_download_is_one_line_with_the_error_it_met(tmp_path):
    def download():
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz\nTried 2 mirrors")

    with pytest.raises(NrsError) as err:
        ensure_files(data_spec("mnist"), "MNIST", tmp_path, "MNIST/raw/", lambda: False, download)
    message = str(err.value)
    assert "download failed: RuntimeError: Error downloading train-images-idx3-ubyte.gz)" in message
    assert message.startswith("MNIST not found under") and "\n" not in message


def test_missing_data_from_the_cli_exits_2_with_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train-base", "--dataset", "mnist", "--data-root", tmp_path / "empty", "--no-download")
    assert result.code == 2
    assert result.stderr.startswith("error: MNIST not found under") and result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing is created before the data is found


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "option") == tmp_path / "option"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "nrs" / "data"


def test_mnist_mini_ships_in_the_package():
    spec = load_spec("mnist-mini").data
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert (len(train), len(test)) == (5000, 1000)
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    assert torch.bincount(labels, minlength=10).min() > 60  # every digit is there


def test_mnist_mini_is_rebuilt_byte_for_byte_by_its_script(tmp_path):
    source = REPO.parent / "shared" / "data" / "MNIST" / "raw"
    if not source.is_dir():
        pytest.skip("the MNIST copy in ../shared/data is not next to this checkout")
    out = tmp_path / "mini.npz"
    script = REPO / "scripts" / "build_mnist_mini.py"
    subprocess.run([sys.executable, script, "--mnist", source, "--out", out], check=True, capture_output=True)
    shipped = REPO / "src" / "nrs_cli" / "assets" / "mnist-mini.npz"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(shipped.read_bytes()).digest()
