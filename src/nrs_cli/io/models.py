"""Architecture registry and checkpoints.

A name maps to a constructor ``(input_shape, num_classes, pretrained) ->
nn.Module``. Every base classifier is ``nn.Sequential(Normalize, network)``:
normalisation is its first layer, so the classifier takes raw pixels in [0, 1]
and noise, sigma and certificates all live in pixel space. The same layout is
what Cohen et al. and Salman et al. save, so their checkpoints
(``{"arch": ..., "state_dict": ...}`` with keys ``1.<layer>`` or
``1.module.<layer>``) load directly.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.io.data import data_family
from nrs_cli.io.serialization import atomic_torch_save, check_digest, load_weights_only, tensor_digest, with_digest
from nrs_cli.io.spec import RunSpec
from nrs_cli.version import __version__

CHECKPOINT_FORMAT = "nrs-checkpoint/1"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; not saved in the state dict (it comes from the spec)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class Arch:
    name: str
    description: str
    build: Callable[[tuple[int, ...], int, bool], nn.Module]


_ARCHS: dict[str, Arch] = {}


def register_arch(name: str, description: str):
    def decorate(build):
        _ARCHS[name] = Arch(name, description, build)
        return build

    return decorate


def list_archs() -> dict[str, str]:
    return {name: arch.description for name, arch in sorted(_ARCHS.items())}


@register_arch("mnist_cnn", "the paper's MNIST / Fashion-MNIST CNN: 2 conv, max-pool, 2 fully connected")
def mnist_cnn(input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False) -> nn.Module:
    channels, height, width = input_shape
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 32, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            dropout1=nn.Dropout(0.25),
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat, 128),
            relu3=nn.ReLU(),
            dropout2=nn.Dropout(0.5),
            fc2=nn.Linear(128, num_classes),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, section 4.2): depth 6n+2, widths 16/32/64.

    Layer names follow the CIFAR ResNet that Cohen et al. trained, so their
    ``cifar_resnet20`` / ``cifar_resnet110`` checkpoints load as they are.
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_arch("cifar_resnet20", "CIFAR ResNet-20 (Cohen et al.'s layout)")
def cifar_resnet20(input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False) -> nn.Module:
    return CifarResNet(20, num_classes, input_shape[0])


@register_arch("cifar_resnet110", "CIFAR ResNet-110 (Cohen et al.'s layout), the paper's CIFAR-10 model")
def cifar_resnet110(input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False) -> nn.Module:
    return CifarResNet(110, num_classes, input_shape[0])


@register_arch("resnet50", "torchvision ResNet-50 (ImageNet weights when pretrained), for ImageNet and KITTI")
def resnet50(input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False) -> nn.Module:
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as torchvision_resnet50

    if not pretrained:
        return torchvision_resnet50(weights=None, num_classes=num_classes)
    try:
        network = torchvision_resnet50(weights=ResNet50_Weights.IMAGENET1K_V1)
    except Exception as err:  # noqa: BLE001 - offline downloads fail in many ways
        raise NrsError(
            f"cannot get torchvision's pretrained ResNet-50 weights ({type(err).__name__}); offline, put "
            "resnet50-0676ba61.pth in $TORCH_HOME/hub/checkpoints, or pass --checkpoint or --no-pretrained"
        ) from None
    if num_classes != network.fc.out_features:
        network.fc = nn.Linear(network.fc.in_features, num_classes)
    return network


def build_model(spec: RunSpec, arch: str | None = None, pretrained: bool | None = None) -> nn.Sequential:
    """A fresh base classifier for the spec's data: Normalize followed by the network.

    Random initial weights come from ``spec.seed`` (without touching the global RNG).
    """
    name = arch or spec.model.arch
    if name not in _ARCHS:
        raise NrsError(f"unknown architecture '{name}' (known: {', '.join(sorted(_ARCHS))})")
    use_pretrained = spec.model.pretrained if pretrained is None else pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        network = _ARCHS[name].build(tuple(spec.data.input_shape), spec.data.num_classes, use_pretrained)
    return nn.Sequential(Normalize(spec.data.mean, spec.data.std), network)


def model_digest(model: nn.Module) -> str:
    """Identity of a model's weights, whatever file or download they came from."""
    return tensor_digest(model.state_dict())


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: RunSpec, arch: str, **extra: Any) -> None:
    """Our checkpoint: Cohen's ``{"arch", "state_dict"}`` plus what the data must look like."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "dataset": spec.name,
        "loader": spec.data.loader,
        "input_shape": list(spec.data.input_shape),
        "num_classes": spec.data.num_classes,
        "mean": list(spec.data.mean),
        "std": list(spec.data.std),
        "nrs_version": __version__,
        **extra,
    }
    atomic_torch_save(with_digest(payload), path)


# Architecture names in Cohen et al.'s and Salman et al.'s checkpoints.
_FOREIGN_ARCHS = {"resnet50": "resnet50", "cifar_resnet20": "cifar_resnet20", "cifar_resnet110": "cifar_resnet110"}


def load_checkpoint(path: str | os.PathLike, spec: RunSpec) -> tuple[nn.Sequential, dict[str, Any]]:
    """Load a base classifier saved by nrs or by Cohen/Salman et al.

    Returns the model (on the CPU, in eval mode) and the checkpoint's metadata.
    Refuses files that are not weights-only, damaged ones (nrs checkpoints carry
    a content digest), metadata of the wrong type, weights that are not finite,
    and checkpoints made for data of another shape, class count or dataset.
    """
    payload = load_weights_only(path, "checkpoint")
    state = _checked_state(path, payload)
    check_digest(payload, "checkpoint", path)
    arch = payload.get("arch")
    if not isinstance(arch, str) or (arch not in _ARCHS and arch not in _FOREIGN_ARCHS):
        raise NrsError(f"{path}: unknown architecture {str(arch)[:40]!r} (known: {', '.join(sorted(_ARCHS))})")
    metadata = {key: value for key, value in payload.items() if key != "state_dict"}
    model = build_model(spec, _FOREIGN_ARCHS.get(arch, arch), pretrained=False)
    if payload.get("format") == CHECKPOINT_FORMAT:
        model[0] = Normalize(*_checked_data(path, payload, spec))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise NrsError(f"{path} does not fit a {arch} for {spec.name}: {first[:200]}") from None
    return model.eval(), metadata


def _checked_state(path, payload: Any) -> dict[str, torch.Tensor]:
    """The state dict (Cohen's ``1.module.`` prefix removed), every entry a named, finite tensor."""
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise NrsError(f"{path} is not a model checkpoint (expected a dict with 'arch' and 'state_dict')")
    state = {}
    for key, value in payload["state_dict"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise NrsError(f"{path}: the state dict holds {type(key).__name__} {str(key)[:40]!r}, not a named tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NrsError(f"{path}: the weights {key} are not finite (NaN or infinity)")
        state[key.replace("1.module.", "1.", 1)] = value
    return state


def _shape_text(shape: Any) -> str:
    if isinstance(shape, list) and all(isinstance(v, int) for v in shape):
        return "x".join(map(str, shape))
    return str(shape)[:40]


def _checked_data(path, payload: dict[str, Any], spec: RunSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """An nrs checkpoint's data description, checked against the spec; returns its normalisation."""
    shape, classes = payload.get("input_shape"), payload.get("num_classes")
    mean, std = payload.get("mean"), payload.get("std")
    if shape != list(spec.data.input_shape) or classes != spec.data.num_classes:
        raise NrsError(
            f"{path} was trained on {str(payload.get('dataset'))[:40]} ({_shape_text(shape)}, "
            f"{str(classes)[:20]} classes), which does not match {spec.name}"
        )
    if data_family(str(payload.get("loader"))) != data_family(spec.data.loader):
        raise NrsError(
            f"{path} was trained on {payload.get('dataset')}, not {spec.name} (choose the matching --dataset)"
        )
    channels = spec.data.input_shape[0]
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean or [])]
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels and all(numbers)):
        raise NrsError(f"{path}: its mean and std must be lists of {channels} numbers (damaged metadata)")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in std):
        raise NrsError(f"{path}: its std must be positive numbers, got {str(std)[:60]}")
    if not all(1e-6 <= v <= 1e6 for v in std) or not all(-1e6 <= v <= 1e6 for v in mean):
        raise NrsError(
            f"{path}: its normalisation (mean {str(mean)[:40]}, std {str(std)[:40]}) lies outside what pixels in "
            "[0, 1] can have (std 1e-6 to 1e6, mean -1e6 to 1e6): damaged metadata"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
