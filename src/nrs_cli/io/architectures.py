"""Architectures by name: the paper's networks, torchvision's classifiers, and the caller's own factories.

:func:`architecture` turns a name into a builder ``(input_shape, num_classes, pretrained) -> nn.Module``:

- a built-in name (:func:`register_arch`; ``nrs list archs``);
- ``torchvision:NAME``: any model of torchvision's classification registry
  (``torchvision.models.list_models(module=torchvision.models)``), random weights, ``num_classes`` outputs;
- ``package.module:function``: the caller's own factory, imported and called with ``num_classes``
  (and ``input_shape`` when it takes that). This runs the caller's code, so a name read from a
  file (``origin``) may never be a factory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.io.spec import TORCHVISION_PREFIX, is_factory
from nrs_cli.io.spec_files import error_line

Builder = Callable[[tuple[int, ...], int, bool], nn.Module]
FACTORY_FORM = "package.module:function"


@dataclass(frozen=True)
class Arch:
    name: str
    description: str
    build: Builder


_ARCHS: dict[str, Arch] = {}


def register_arch(name: str, description: str):
    def decorate(build):
        _ARCHS[name] = Arch(name, description, build)
        return build

    return decorate


def list_archs() -> dict[str, str]:
    """Every architecture name nrs builds, with what it is."""
    listed = {name: arch.description for name, arch in sorted(_ARCHS.items())}
    names = torchvision_names()
    listed[f"{TORCHVISION_PREFIX}NAME"] = (
        f"any of torchvision's {len(names)} classification models, random weights, num_classes from the data "
        f"({', '.join(n for n in names if n in ('resnet18', 'resnet50', 'vgg16', 'vit_b_16', 'convnext_tiny'))}, ...)"
    )
    listed[FACTORY_FORM] = (
        "your own network: the function is called with num_classes (and input_shape if it takes it); "
        "named with --arch or from Python only, since it runs your code"
    )
    return listed


def known_archs() -> str:
    """What an architecture name may be, for error messages."""
    return (
        f"built-in: {', '.join(sorted(_ARCHS))}; torchvision's models as {TORCHVISION_PREFIX}NAME, e.g. "
        f"{TORCHVISION_PREFIX}resnet18; your own as --arch {FACTORY_FORM}"
    )


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


def architecture(name: str, origin: str | None = None) -> Builder:
    """The builder an architecture name stands for; ``origin`` is the file the name was read from
    (then it may not be a factory: nrs never runs code a file chose)."""
    if name in _ARCHS:
        return _ARCHS[name].build
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_builder(name[len(TORCHVISION_PREFIX) :])
    if is_factory(name):
        if origin is not None:
            raise NrsError(
                f"{origin} names the factory {name[:60]!r} as its architecture, and nrs never runs code named in "
                f"a file: if you trust it, pass --arch {name[:60]} on the command line (which runs it)"
            )
        return _factory_builder(name)
    where = f"{origin}: " if origin else ""
    if name in torchvision_names():
        raise NrsError(f"{where}unknown architecture {name!r}: torchvision's is --arch {TORCHVISION_PREFIX}{name}")
    raise NrsError(f"{where}unknown architecture {name[:40]!r} ({known_archs()})")


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """The classification models in torchvision's registry (not detection, segmentation, video, ...)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _torchvision_builder(model: str) -> Builder:
    if model not in torchvision_names():
        raise NrsError(
            f"torchvision has no classification model {model[:40]!r} (e.g. resnet18, vgg16, vit_b_16; `nrs list archs`)"
        )

    def build(input_shape: tuple[int, ...], num_classes: int, pretrained: bool) -> nn.Module:
        import torchvision

        if pretrained:
            raise NrsError(
                f"{TORCHVISION_PREFIX}{model}: pretrained weights are for torchvision's classes; load your own "
                "weights with --checkpoint, or train from scratch (--no-pretrained)"
            )
        return torchvision.models.get_model(model, weights=None, num_classes=num_classes)

    return build


@contextlib.contextmanager
def _working_directory_importable():
    """Let ``import`` find modules in the working directory, as ``python -m`` would (the nrs script does not)."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def _factory_builder(name: str) -> Builder:
    """Import ``package.module`` and return a builder that calls its ``function``."""
    module_name, _, function_name = name.partition(":")
    try:
        with _working_directory_importable():
            module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - the caller's module may fail in any way
        raise NrsError(f"--arch {name}: cannot import {module_name}: {error_line(err)}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise NrsError(f"--arch {name}: {module_name} has no function {function_name!r}")

    def build(input_shape: tuple[int, ...], num_classes: int, pretrained: bool) -> nn.Module:
        offered = {"num_classes": num_classes, "input_shape": input_shape}
        try:
            parameters = inspect.signature(factory).parameters
            takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
            arguments = {k: v for k, v in offered.items() if takes_any or k in parameters}
        except (TypeError, ValueError):  # no signature to read (a builtin): offer the class count
            arguments = {"num_classes": num_classes}
        try:
            network = factory(**arguments)
        except Exception as err:  # noqa: BLE001 - the caller's code may fail in any way
            raise NrsError(f"--arch {name}: the factory failed: {error_line(err)}") from None
        if not isinstance(network, nn.Module):
            raise NrsError(f"--arch {name} returned a {type(network).__name__}, not a torch.nn.Module")
        return network

    return build
