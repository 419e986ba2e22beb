"""Base classifiers: the model a spec describes, and the weights a file may hold (never code).

Every base classifier is ``nn.Sequential(Normalize, network)``: normalisation is its first layer,
so the classifier takes raw pixels in [0, 1] and noise, sigma and certificates all live in pixel
space (the identity unless the spec gives a mean and std). The network comes from an architecture
name (:mod:`nrs_cli.io.architectures`). The same layout is what Cohen et al. and Salman et al.
save, so their checkpoints (``{"arch": ..., "state_dict": ...}`` with keys ``1.<layer>`` or
``1.module.<layer>``) load directly; so do plain state dicts of the network (bare keys, or
DataParallel's ``module.``) once the architecture is named.

Checkpoints are read weights-only (:func:`~nrs_cli.io.serialization.load_weights_only`), and a
checkpoint may not name a factory as its architecture: nothing stored in a file runs. TorchScript
archives and ``torch.export`` programs (``.pt2``) are refused before anything reads them: loading
either runs code stored in the file, and ``torch.export.load`` has no safe mode.
"""

from __future__ import annotations

import numbers
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.io import loaders  # noqa: F401 - registers the loaders, whose families data_family compares
from nrs_cli.io.architectures import architecture, known_archs, torchvision_names
from nrs_cli.io.data import data_family
from nrs_cli.io.folders import load_dataset_spec
from nrs_cli.io.serialization import atomic_torch_save, check_digest, load_weights_only, tensor_digest, with_digest
from nrs_cli.io.spec import TORCHVISION_PREFIX, RunSpec, build_spec, is_factory
from nrs_cli.io.spec_files import error_line, short
from nrs_cli.io.spec_ranges import RANGES
from nrs_cli.version import __version__

CHECKPOINT_FORMAT = "nrs-checkpoint/1"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; not saved in the state dict (it comes from the spec)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != len(self.mean):  # broadcasting would silently turn one channel into three
            raise ValueError(f"inputs have {x.shape[-3]} channels, the normalisation {len(self.mean)}")
        return (x - self.mean) / self.std


def build_model(spec: RunSpec, arch: str | None = None, pretrained: bool | None = None) -> nn.Sequential:
    """A fresh base classifier for the spec's data: Normalize followed by the network.

    ``arch`` (default ``model.arch``) is trusted: a spec's own factory can only have come from the
    caller (:func:`~nrs_cli.io.spec.load_spec` refuses one in a file). Random initial weights come
    from ``spec.seed`` (without touching the global RNG). The network is tried on two inputs of the
    spec's shape, so an architecture that cannot take them fails here in one line.
    """
    name = arch or spec.model.arch
    if name is None:
        raise NrsError(f"no architecture for {spec.name}: pass --arch ({known_archs()}) or set model.arch")
    build = architecture(name)
    use_pretrained = spec.model.pretrained if pretrained is None else pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        network = build(tuple(spec.data.input_shape), spec.data.num_classes, use_pretrained)
    model = nn.Sequential(Normalize(spec.data.mean, spec.data.std), network)
    check_outputs(model, spec.data.input_shape, spec.data.num_classes, f"{name} for {spec.name}")
    return model


def check_outputs(
    model: nn.Module, input_shape: tuple[int, ...], num_classes: int, what: str, device: torch.device | None = None
) -> None:
    """Run the model on two zero inputs (on ``device``) in eval mode, training flags restored after: it
    must give ``num_classes`` scores per input."""
    modes = [(module, module.training) for module in model.modules()]
    shape = "x".join(map(str, input_shape))
    try:
        with torch.inference_mode():
            outputs = model.eval()(torch.zeros((2, *input_shape), device=device))
    except Exception as err:  # noqa: BLE001 - any failure of a foreign network on this input
        raise NrsError(f"{what} cannot take {shape} inputs: {error_line(err)}") from None
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (2, num_classes):
        found = f"shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise NrsError(f"{what} returns {found} for 2 inputs of {shape}, not (2, {num_classes}) class scores")


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


# Where a checkpoint dict keeps the weights: ours and Cohen's, PyTorch's tutorials', torchvision's references'.
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
WORKING_FORMATS = (
    "nrs reads weights-only PyTorch files: torch.save(model.state_dict()) with --arch naming the network, "
    "or a checkpoint {'arch', 'state_dict'} (nrs, Cohen, Salman)"
)


def load_checkpoint(path: str | os.PathLike, spec: RunSpec) -> tuple[nn.Sequential, dict[str, Any]]:
    """Load a base classifier: an nrs or Cohen/Salman checkpoint, or a plain state dict of the network.

    Returns the model (on the CPU, in eval mode) and the checkpoint's metadata. The architecture
    is the one the checkpoint names if nrs knows it (never a factory named in the file), else the
    spec's ``model.arch`` (``--arch``). Refuses code archives (TorchScript, ``.pt2``), files that
    are not weights-only, damaged ones (nrs checkpoints carry a content digest), metadata of the
    wrong type, weights that are not finite, weights that do not fit the network, and nrs
    checkpoints made for data of another shape, class count or dataset.
    """
    state, metadata = read_checkpoint(path)
    return _assembled(path, state, metadata, spec), metadata


def _assembled(path, state: dict[str, torch.Tensor], metadata: dict[str, Any], spec: RunSpec) -> nn.Sequential:
    """The checkpoint's network built for the spec, its weights loaded, in eval mode."""
    name = _checkpoint_arch(path, metadata, spec)
    model = build_model(spec, name, pretrained=False)
    if metadata.get("format") == CHECKPOINT_FORMAT:
        model[0] = Normalize(*_checked_data(path, metadata, spec))
    network = model[1]
    try:
        network.load_state_dict(_fitting_keys(state, set(network.state_dict())), strict=True)
    except RuntimeError as err:
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise NrsError(
            f"{path} does not fit a {name} for {spec.name}: {first[:200]}{_arch_hint(metadata.get('arch'), name)}"
        ) from None
    return model.eval()


def _arch_hint(named: Any, built: str) -> str:
    """What to pass when the weights do not fit the network built for them."""
    if named == built:
        return ""
    if named is None:
        return " (the file holds weights only: name their network with --arch, and their data with --dataset)"
    suggestion = f"{TORCHVISION_PREFIX}{named}" if str(named) in torchvision_names() else "the network's name"
    return f" (the file names the architecture {str(named)[:40]!r}, unknown to nrs: pass --arch {suggestion})"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights in a model file and its other entries (metadata), without running anything stored in it."""
    refuse_code_archives(path)
    try:
        payload = load_weights_only(path, "checkpoint")
    except NrsError as err:
        if not Path(path).is_file():
            raise
        raise NrsError(f"{err}; {WORKING_FORMATS}") from None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return _checked_state(path, payload), {}
    key = next((k for k in _STATE_KEYS if isinstance(payload, dict) and isinstance(payload.get(k), dict)), None)
    if key is None:
        raise NrsError(f"{path} is not a model checkpoint ({WORKING_FORMATS})")
    check_digest(payload, "checkpoint", path)
    return _checked_state(path, payload[key]), {k: v for k, v in payload.items() if k != key}


def refuse_code_archives(path: str | os.PathLike) -> None:
    """Refuse TorchScript archives and ``torch.export`` programs by their zip entries, before anything
    reads them: loading either runs code stored in the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.replace("\\", "/") for name in archive.namelist()]
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip archive: torch.load's weights-only reader decides
    basenames = {name.rsplit("/", 1)[-1] for name in names}
    exported = bool({"archive_format", "serialized_exported_program.json"} & basenames)  # torch >= 2.8, older
    if exported or (Path(path).suffix == ".pt2" and "data.pkl" not in basenames):
        raise NrsError(
            f"{path} is a torch.export program (.pt2): nrs does not load these, since torch.export.load runs code "
            f"stored in the file and has no safe mode; {WORKING_FORMATS}"
        )
    if "constants.pkl" in basenames:
        raise NrsError(
            f"{path} is a TorchScript archive: nrs does not load these, since they run code stored in the file; "
            f"{WORKING_FORMATS}"
        )


def _checkpoint_arch(path, metadata: dict[str, Any], spec: RunSpec) -> str:
    """The architecture to build: the checkpoint's if nrs knows it, else the spec's (``--arch``)."""
    named, given = metadata.get("arch"), spec.model.arch
    if named is None:
        if given is None:
            raise NrsError(f"{path} holds weights only: name their architecture with --arch ({known_archs()})")
        return given
    if not isinstance(named, str):
        raise NrsError(f"{path}: its 'arch' is a {type(named).__name__}, not an architecture name")
    if named == given:
        return named
    if is_factory(named) or given is None:
        architecture(named, origin=str(path))  # refuses a factory, or explains an unknown name
    elif not _is_known(named):
        return given  # a name nrs does not know: the caller's architecture (the error says so if it does not fit)
    return named


def _is_known(name: str) -> bool:
    try:
        architecture(name, origin="checkpoint")
    except NrsError:
        return False
    return True


def _fitting_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The state dict with the prefix that makes its keys the network's removed: ours ``1.``, Cohen's
    ``1.module.``, DataParallel's ``module.``, or one all keys share (a wrapper's attribute, such as
    Lightning's ``model.``); as it is when none fits, so the error names the keys."""
    candidates = [state]
    shared = {key.split(".", 1)[0] for key in state}
    for prefix in ("1.module.", "1.", "module.", *(f"{name}." for name in shared if len(shared) == 1)):
        if all(key.startswith(prefix) for key in state):
            candidates.append({key[len(prefix) :]: value for key, value in state.items()})
    return next((c for c in candidates if set(c) == expected), candidates[-1])


def _checked_state(path, state: dict[Any, Any]) -> dict[str, torch.Tensor]:
    """Every entry of a state dict a named, dense, finite tensor."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise NrsError(f"{path}: the state dict holds {type(key).__name__} {str(key)[:40]!r}, not a named tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NrsError(f"{path}: the weights {key} are not finite (NaN or infinity)")
    return dict(state)


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
    lists = isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels
    if not lists or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std]):
        raise NrsError(f"{path}: its mean and std must be lists of {channels} numbers (damaged metadata)")
    for key, values in (("mean", mean), ("std", std)):
        test, expected = RANGES[f"data.{key}"]  # what a spec's normalisation may be
        if not test(values):
            raise NrsError(f"{path}: its {key} must be {expected}, got {short(values)} (damaged metadata)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    dataset: str | None = None,
) -> nn.Sequential:
    """A base classifier from a file, for Python: ``Normalize`` then the network, on the CPU, in eval mode.

    ``arch`` names the network of a plain state dict: a built-in name, ``torchvision:NAME``, or
    your own ``package.module:function`` (imported and called: it runs your code). Say what the
    model classifies with ``dataset`` (a built-in name, a YAML spec or an image folder: exactly the
    model the commands load) or with ``num_classes`` and ``input_shape``; an nrs checkpoint says it
    itself. The normalisation is the identity unless ``mean`` and ``std`` (per channel) or the
    dataset give one.
    """
    state, metadata = read_checkpoint(path)
    given = {"model.arch": arch, "data.mean": mean, "data.std": std}
    overrides = {key: list(v) if isinstance(v, tuple) else v for key, v in given.items() if v is not None}
    if dataset is not None:
        spec = load_dataset_spec(dataset, overrides)
    else:
        num_classes, input_shape = _data_described(path, metadata, num_classes, input_shape)
        channels = input_shape[0]
        data = {"loader": str(metadata.get("loader", "imagefolder")), "input_shape": input_shape}
        data |= {"num_classes": num_classes, "mean": [0.0] * channels, "std": [1.0] * channels}
        spec = build_spec({"name": "model", "data": data}, "load_model", overrides)
    return _assembled(path, state, metadata, spec)


def _data_described(path, metadata: dict[str, Any], num_classes: Any, input_shape: Any) -> tuple[int, list[int]]:
    """load_model's class count and input shape: the arguments, else the checkpoint's, of the types and
    within the ranges a spec allows (checked before the shape sizes any list)."""
    found: dict[str, Any] = {}
    for key, given in (("num_classes", num_classes), ("input_shape", input_shape)):
        value = metadata.get(key) if given is None else given
        if value is None:
            raise NrsError(
                "load_model: say what the model classifies: dataset= (a built-in name, a YAML spec or an image "
                "folder), or num_classes= and input_shape="
            )
        parts = value if key == "input_shape" and isinstance(value, (list, tuple)) else [value]
        whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in parts)
        test, expected = RANGES[f"data.{key}"]
        if not whole or not test(tuple(map(int, parts)) if key == "input_shape" else int(value)):
            origin = "load_model" if given is not None else f"{path}: its metadata"
            raise NrsError(f"{origin}: {key}: expected {expected}, got {short(value)}")
        found[key] = [int(v) for v in parts] if key == "input_shape" else int(value)
    return found["num_classes"], found["input_shape"]
