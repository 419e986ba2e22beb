"""Image folders as datasets without YAML, `nrs spec new`, and checkpoints of any classifier."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
import yaml
from fixtures import write_image_folder
from PIL import Image
from torch import nn
from torchvision import transforms

from nrs_cli.errors import NrsError
from nrs_cli.io.folders import ImageFiles, folder_spec, image_transform, is_image_folder, load_dataset_spec
from nrs_cli.io.loaders import load_data, load_split
from nrs_cli.io.models import build_model, load_checkpoint, load_model, model_digest, save_checkpoint
from nrs_cli.io.spec import load_spec

CLASSES = ["cat", "dog", "eel"]


def test_one_folder_is_split_per_class_seeded_and_served_interleaved(tmp_path):
    write_image_folder(tmp_path / "pets", CLASSES, 10, (12, 8), learnable=True)
    spec = folder_spec(tmp_path / "pets")
    assert (spec.name, spec.data.input_shape, spec.data.num_classes) == ("pets", (3, 8, 12), 3)
    assert spec.data.mean == (0.0, 0.0, 0.0) and spec.data.std == (1.0, 1.0, 1.0)  # identity normalisation
    assert spec.engine.precision == "fp32" and spec.data.order == "interleaved" and spec.model.arch is None
    train, test = load_split(spec.data, "train"), load_split(spec.data, "test")
    assert (len(train), len(test)) == (27, 3)  # a tenth of every class to test
    assert [test[i][1] for i in range(3)] == [0, 1, 2]  # the classes in turn
    assert [train[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    files = {tuple(test[i][0].flatten()[:8].tolist()) for i in range(3)}
    assert not files & {tuple(train[i][0].flatten()[:8].tolist()) for i in range(27)}  # disjoint
    image, label = test[0]
    assert image.dtype == torch.float32 and 0 <= float(image.min()) and float(image.max()) <= 1
    again = load_split(folder_spec(tmp_path / "pets").data, "test")
    assert all(torch.equal(again[i][0], test[i][0]) for i in range(3))  # seeded
    other = load_split(folder_spec(tmp_path / "pets", {"data.split_seed": 1}).data, "test")
    assert any(not torch.equal(other[i][0], test[i][0]) for i in range(3))


def test_train_and_test_folders_are_used_as_they_are(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        write_image_folder(tmp_path / "d" / split, CLASSES, count, (16, 16))
    spec = load_dataset_spec(str(tmp_path / "d"))
    assert len(load_split(spec.data, "train")) == 12 and len(load_split(spec.data, "test")) == 6
    assert len(load_data(str(tmp_path / "d"), "test", resize=8)[0][0][0]) == 8
    (tmp_path / "d" / "test" / "eel").rename(tmp_path / "d" / "test" / "emu")
    with pytest.raises(NrsError, match="train and test have different classes .*eel"):
        load_dataset_spec(str(tmp_path / "d"))


def test_images_in_nested_folders_belong_to_their_class_in_torchvisions_order(tmp_path):
    from torchvision.datasets import ImageFolder

    write_image_folder(tmp_path / "pets" / "cat", ["indoor", "outdoor"], 2, (8, 8))  # cat holds no image itself
    write_image_folder(tmp_path / "pets", ["dog"], 3, (8, 8))
    write_image_folder(tmp_path / "pets" / "dog", ["puppy", "puppy-old"], 1, (8, 8), seed=1)
    assert is_image_folder(tmp_path / "pets")
    spec = folder_spec(tmp_path / "pets")
    assert spec.data.num_classes == 2 and spec.data.input_shape == (3, 8, 8)
    ours = ImageFiles(tmp_path / "pets", image_transform(spec.data), spec.data.input_shape)
    theirs = ImageFolder(str(tmp_path / "pets"))
    assert [(str(path), label) for path, label in ours.samples] == theirs.samples and len(ours) == 9
    assert torch.equal(ours[8][0], transforms.ToTensor()(theirs[8][0]))


def test_a_long_folder_name_makes_a_run_name_of_the_length_a_spec_allows(tmp_path):
    for folder, name in (("a" * 99 + " b" * 20, "a" * 99), ("_ photos " + "x" * 150, "images-_-photos-" + "x" * 84)):
        write_image_folder(tmp_path / folder, ["cat", "dog"], 1, (8, 8))
        assert folder_spec(tmp_path / folder).name == name


def test_channels_and_size_come_from_the_images(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "grey" / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((20, 30), 40 * k, dtype=np.uint8)).save(tmp_path / "grey" / name / f"{k}.png")
    assert folder_spec(tmp_path / "grey").data.input_shape == (1, 20, 30)
    resized = folder_spec(tmp_path / "grey", {"data.resize": 16})
    assert resized.data.input_shape == (1, 16, 16) and load_split(resized.data, "test")[0][0].shape == (1, 16, 16)
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "grey" / "b" / "2.png")
    assert folder_spec(tmp_path / "grey").data.input_shape == (3, 20, 30)  # one colour image: RGB


def test_images_of_another_size_are_a_one_line_error_naming_the_file(tmp_path):
    write_image_folder(tmp_path / "mixed", ["a", "b"], 2, (16, 16))
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "mixed" / "b" / "0009.png")
    data = load_split(folder_spec(tmp_path / "mixed").data, "train")
    with pytest.raises(NrsError, match=r"0009.png is 3x9x9, but the spec says input_shape 3x16x16 .*--resize N"):
        [data[i] for i in range(len(data))]


def test_what_is_and_is_not_an_image_folder(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imgs", CLASSES, 2, (8, 8))
    (tmp_path / "mnist").mkdir()  # a folder named like a built-in dataset: the built-in wins
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "notes.txt").write_text("no classes")
    assert is_image_folder(tmp_path / "imgs") and not is_image_folder(tmp_path / "flat")
    monkeypatch.chdir(tmp_path)
    assert load_dataset_spec("mnist").data.loader == "mnist"
    assert load_dataset_spec(None, None, tmp_path / "imgs").name == "imgs"  # --data-root DIR alone
    assert load_dataset_spec(None, None, tmp_path / "flat").name == "mnist-mini"
    with pytest.raises(NrsError, match="flat is not an image folder: expected DIR/<class>/<image>"):
        load_dataset_spec("flat")
    with pytest.raises(NrsError, match="or an image folder <class>/<image>"):
        load_dataset_spec("nowhere")
    with pytest.raises(NrsError, match="data/mine: no such image folder or spec file"):
        load_dataset_spec("data/mine")


def test_spec_new_writes_every_field_and_loads_back(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "imgs", CLASSES, 3, (10, 10))
    result = run_cli("spec", "new", "--data-root", "imgs", "--arch", "torchvision:resnet18", "--mean", "0.5,0.5,0.5")
    assert result.code == 0, result.stderr
    text = (tmp_path / "imgs.yaml").read_text()
    spec = load_spec("imgs.yaml")
    expected = folder_spec("imgs", {"model.arch": "torchvision:resnet18", "data.mean": [0.5] * 3})
    assert dataclasses.replace(spec, source="") == dataclasses.replace(expected, source="")
    raw = yaml.safe_load(text)
    for section in ("data", "model", "train", "optimize", "certify", "engine", "figures", "cooptimize", "compare"):
        assert set(raw[section]) == {f.name for f in dataclasses.fields(getattr(spec, section))}
    assert "  n: 100000                     # samples that bound its probability" in text.splitlines()
    assert "# Test-time CERTIFY / PREDICT (Cohen et al., paper Theorem 3.1)." in text
    refused = run_cli("spec", "new", "--dataset", "imgs")
    assert refused.code == 2 and "imgs.yaml exists" in refused.stderr
    mine = run_cli("spec", "new", "--dataset", "imgs", "--arch", "mynets:build", "--out", "mine.yaml")
    assert mine.code == 0 and load_spec("mine.yaml").model.arch is None  # a factory is never written into a file
    assert "pass --arch mynets:build on the command line" in (tmp_path / "mine.yaml").read_text()
    for name in ("cifar10-cpu", "kitti"):  # built-in specs, their extends chains resolved
        assert run_cli("spec", "new", "--dataset", name, "--out", f"{name}.yaml").code == 0
        assert dataclasses.replace(load_spec(f"{name}.yaml"), source="") == dataclasses.replace(
            load_spec(name), source=""
        )


def test_train_and_optimize_sections_are_optional(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: tiny\ndata:\n  loader: mnist-mini\n  input_shape: [1, 28, 28]\n  num_classes: 10\n"
        "  mean: [0.0]\n  std: [1.0]\n"
    )
    spec = load_spec(str(tmp_path / "s.yaml"))
    assert spec.train.optimizer == "adam" and spec.optimize.inits >= 1 and spec.model.arch is None


def linear_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))


def test_state_dicts_load_with_any_known_prefix(tmp_path):
    spec = load_spec("mnist-mini")
    network = build_model(spec)[1]
    reference = None
    for prefix in ("", "1.", "1.module.", "module."):
        state = collections.OrderedDict((prefix + k, v) for k, v in network.state_dict().items())
        torch.save(state, tmp_path / "s.pt")
        model, metadata = load_checkpoint(tmp_path / "s.pt", spec)
        assert metadata == {} and (reference is None or model_digest(model) == reference)
        reference = model_digest(model)
    torch.save({"epoch": 3, "model_state_dict": network.state_dict()}, tmp_path / "tutorial.pt")
    assert model_digest(load_checkpoint(tmp_path / "tutorial.pt", spec)[0]) == reference
    lightning = {"state_dict": {f"model.{k}": v for k, v in network.state_dict().items()}, "epoch": 3}
    torch.save(lightning, tmp_path / "lightning.ckpt")
    assert model_digest(load_checkpoint(tmp_path / "lightning.ckpt", spec)[0]) == reference


def test_plain_state_dicts_need_their_architecture_named(tmp_path):
    spec = folder_spec(write_folder(tmp_path))
    state = build_model(spec, "mnist_cnn")[1].state_dict()
    torch.save(state, tmp_path / "s.pt")
    with pytest.raises(NrsError, match=r"holds weights only: name their architecture with --arch .*torchvision:"):
        load_checkpoint(tmp_path / "s.pt", spec)
    torch.save({"arch": "resnet18", "state_dict": state}, tmp_path / "n")
    with pytest.raises(NrsError, match="unknown architecture 'resnet18': torchvision's is --arch torchvision:resnet18"):
        load_checkpoint(tmp_path / "n", spec)
    torch.save({"arch": "resnet1234", "state_dict": state}, tmp_path / "r")
    with pytest.raises(NrsError, match="unknown architecture 'resnet1234' .*torchvision:NAME"):
        load_checkpoint(tmp_path / "r", spec)
    given = folder_spec(spec.data.folder, {"model.arch": "mnist_cnn"})  # --arch says what the file means
    assert load_checkpoint(tmp_path / "n", given)[0][1].fc2.out_features == 2
    wrong = folder_spec(spec.data.folder, {"model.arch": "cifar_resnet20"})
    with pytest.raises(
        NrsError,
        match=r"does not fit a cifar_resnet20 .*names the architecture 'resnet18', unknown to "
        r"nrs: pass --arch torchvision:resnet18",
    ):
        load_checkpoint(tmp_path / "n", wrong)


def write_folder(tmp_path, size=(28, 28)):
    """Two classes of greyscale images."""
    folder = tmp_path / "digits"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(2):
            Image.fromarray(np.full(size[::-1], 100 * k, dtype=np.uint8)).save(folder / name / f"{k}.png")
    return folder


def test_torchvision_models_by_name_and_what_they_cannot_take(tmp_path):
    spec = load_spec("cifar10", {"model.arch": "torchvision:mobilenet_v3_small"})
    model = build_model(spec)
    assert type(model[1]).__name__ == "MobileNetV3" and model[1].classifier[-1].out_features == 10
    with pytest.raises(NrsError, match="torchvision has no classification model 'fasterrcnn_resnet50_fpn'"):
        build_model(load_spec("cifar10", {"model.arch": "torchvision:fasterrcnn_resnet50_fpn"}))
    with pytest.raises(NrsError, match="torchvision:vit_b_16 for cifar10 cannot take 3x32x32 inputs"):
        build_model(load_spec("cifar10", {"model.arch": "torchvision:vit_b_16"}))


def test_load_model_from_python(tmp_path, monkeypatch):
    (tmp_path / "callers_nets.py").write_text(
        "from torch import nn\n\n\ndef build(num_classes, input_shape):\n"
        "    c, h, w = input_shape\n    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = linear_net(2)
    torch.save(net.state_dict(), tmp_path / "s.pt")
    model = load_model(tmp_path / "s.pt", "callers_nets:build", num_classes=2, input_shape=(1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), net(x)) and not model.training
    with pytest.raises(NrsError, match="say what the model classifies"):
        load_model(tmp_path / "s.pt", "torchvision:resnet18")
    folder = write_folder(tmp_path)
    same = load_model(tmp_path / "s.pt", "callers_nets:build", dataset=str(folder), mean=(0.5,), std=(0.25,))
    assert torch.allclose(same(x), net((x - 0.5) / 0.25))


def test_load_model_reads_what_an_nrs_checkpoint_says_about_its_data(tmp_path):
    spec = load_spec("mnist-mini")
    trained = build_model(spec).eval()
    save_checkpoint(tmp_path / "c.pt", trained, spec, "mnist_cnn")
    model = load_model(tmp_path / "c.pt")  # no arch, classes, shape or normalisation to give
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), trained(x)) and model[0].mean.flatten().tolist() == pytest.approx(spec.data.mean)
