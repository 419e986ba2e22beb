import collections
import os
import stat

import pytest
import torch

from nrs_cli.errors import NrsError
from nrs_cli.io.architectures import list_archs
from nrs_cli.io.models import Normalize, build_model, load_checkpoint, load_model, model_digest, save_checkpoint
from nrs_cli.io.spec import load_spec


def test_registry_lists_the_paper_architectures():
    assert {"mnist_cnn", "cifar_resnet110", "resnet50"} <= set(list_archs())


def test_models_take_raw_pixels_and_normalise_first():
    spec = load_spec("cifar10", {"model.arch": "cifar_resnet20"})
    model = build_model(spec).eval()
    assert isinstance(model[0], Normalize)
    x = torch.rand(2, 3, 32, 32)
    expected = model[1]((x - torch.tensor(spec.data.mean).view(3, 1, 1)) / torch.tensor(spec.data.std).view(3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert not any(key.startswith("0.") for key in model.state_dict())  # normalisation is not a weight


def test_mnist_cnn_is_two_conv_maxpool_two_fc():
    model = build_model(load_spec("mnist"))[1]
    kinds = [type(m).__name__ for m in model]
    assert kinds.count("Conv2d") == 2 and kinds.count("MaxPool2d") == 1 and kinds.count("Linear") == 2
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_cifar_resnet110_depth():
    model = build_model(load_spec("cifar10"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 110  # 109 3x3 convolutions and the final fully connected layer


def test_checkpoint_round_trip(tmp_path):
    spec = load_spec("mnist-mini")
    model = build_model(spec).eval()
    save_checkpoint(tmp_path / "c.pt", model, spec, "mnist_cnn", test_accuracy=0.5)
    loaded, meta = load_checkpoint(tmp_path / "c.pt", spec)
    assert meta["arch"] == "mnist_cnn" and meta["test_accuracy"] == 0.5 and meta["dataset"] == "mnist-mini"
    assert model_digest(loaded) == model_digest(model)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    # the same images in other folders: a mnist-mini model serves mnist
    load_checkpoint(tmp_path / "c.pt", load_spec("mnist"))


def test_cohen_checkpoints_load(tmp_path):
    spec = load_spec("cifar10", {"model.arch": "cifar_resnet20"})
    model = build_model(spec).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    # Cohen et al.'s train.py: torch.save({'epoch', 'arch', 'state_dict', 'optimizer'})
    torch.save(
        {"epoch": 90, "arch": "cifar_resnet20", "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
        tmp_path / "checkpoint.pth.tar",
    )
    loaded, meta = load_checkpoint(tmp_path / "checkpoint.pth.tar", load_spec("cifar10"))
    assert meta["arch"] == "cifar_resnet20" and model_digest(loaded) == model_digest(model)


def test_cohen_imagenet_checkpoint_with_dataparallel_keys(tmp_path):
    spec = load_spec("imagenet", {"model.pretrained": False})
    model = build_model(spec).eval()
    state = collections.OrderedDict(
        (key.replace("1.", "1.module.", 1), value) for key, value in model.state_dict().items()
    )
    torch.save({"arch": "resnet50", "state_dict": state}, tmp_path / "r50.pth.tar")
    loaded, _ = load_checkpoint(tmp_path / "r50.pth.tar", spec)
    assert model_digest(loaded) == model_digest(model)


class Gadget:
    """Not plain data: a weights-only load must refuse to build it."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_refuses_a_checkpoint_that_is_not_weights_only(tmp_path):
    spec = load_spec("mnist-mini")
    state = build_model(spec).state_dict()
    torch.save({"arch": "mnist_cnn", "state_dict": state, "extra": Gadget()}, tmp_path / "evil.pt")
    with pytest.raises(NrsError, match="refusing to load checkpoint .*evil.pt"):
        load_checkpoint(tmp_path / "evil.pt", spec)


def test_corrupt_truncated_and_missing_checkpoints(tmp_path):
    spec = load_spec("mnist-mini")
    save_checkpoint(tmp_path / "good.pt", build_model(spec), spec, "mnist_cnn")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 10)
    for name in ("half.pt", "noise.pt"):
        with pytest.raises(NrsError, match="cannot read checkpoint .*corrupt"):
            load_checkpoint(tmp_path / name, spec)
    with pytest.raises(NrsError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt", spec)
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(NrsError, match="is not a model checkpoint"):
        load_checkpoint(tmp_path / "other.pt", spec)


def test_refuses_a_checkpoint_for_another_dataset(tmp_path):
    spec = load_spec("mnist")
    save_checkpoint(tmp_path / "m.pt", build_model(spec), spec, "mnist_cnn")
    with pytest.raises(NrsError, match="trained on mnist, not fashion-mnist"):
        load_checkpoint(tmp_path / "m.pt", load_spec("fashion-mnist"))
    with pytest.raises(NrsError, match=r"trained on mnist \(1x28x28, 10 classes\), which does not match cifar10"):
        load_checkpoint(tmp_path / "m.pt", load_spec("cifar10"))
    # a foreign checkpoint with no dataset recorded still has to fit the network
    torch.save(
        {"arch": "cifar_resnet20", "state_dict": build_model(load_spec("cifar10"), "cifar_resnet20").state_dict()},
        tmp_path / "c.pth.tar",
    )
    with pytest.raises(NrsError, match="does not fit a cifar_resnet20 for mnist"):
        load_checkpoint(tmp_path / "c.pth.tar", spec)


@pytest.mark.parametrize(
    "metadata, given, message",
    [
        ({"input_shape": 3, "num_classes": 2}, {}, "m.pt: its metadata: input_shape: expected [channels"),
        ({"input_shape": "1x28x28", "num_classes": 2}, {}, "input_shape: expected [channels, height, width]"),
        ({"input_shape": [1, 28, 28], "num_classes": "2"}, {}, "m.pt: its metadata: num_classes: expected from 2"),
        ({"input_shape": [1, 28, 28], "num_classes": 2}, {"num_classes": 0}, "load_model: num_classes: expected"),
    ],
)
def test_load_model_checks_the_data_it_is_told_or_the_checkpoint_says(tmp_path, metadata, given, message):
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 2))
    torch.save({"state_dict": network.state_dict(), **metadata}, tmp_path / "m.pt")
    with pytest.raises(NrsError) as err:
        load_model(tmp_path / "m.pt", arch="torchvision:resnet18", **given)
    assert message in str(err.value) and "\n" not in str(err.value)  # num_classes=0 is refused, not replaced


def test_a_saved_checkpoint_has_the_permissions_of_a_new_file_not_of_its_private_temporary(tmp_path):
    spec = load_spec("mnist-mini")
    callers = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "c.pt", build_model(spec), spec, "mnist_cnn")
    finally:
        os.umask(callers)
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o640 and os.listdir(tmp_path) == ["c.pt"]
