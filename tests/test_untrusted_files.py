"""Nothing that loads from a file runs code stored in it: a malicious file of every kind nrs reads
or refuses, each with a payload that would create a marker file, from the command line.

Each payload is shown to be live (loading it the unsafe way creates the marker), then nrs must
refuse the file in one ``error:`` line that names the formats that work, the marker never created.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from nrs_cli.io.models import build_model
from nrs_cli.io.spec import load_spec

WORKING = "nrs reads weights-only PyTorch files"


class Payload:
    """Creates ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def one_error_line(result) -> str:
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def mnist_state() -> dict[str, torch.Tensor]:
    return build_model(load_spec("mnist-mini"))[1].state_dict()


def test_a_state_dict_with_a_reduce_payload_is_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that got past the refusal writes here, not into the checkout
    marker, path = tmp_path / "pwned", tmp_path / "state.pt"
    torch.save({**mnist_state(), "evil": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live
    assert marker.exists()
    marker.unlink()
    result = run_cli("certify", "--checkpoint", path, "--arch", "mnist_cnn", "--sigma", 0.25, "--n", 10, "--max", 1)
    line = one_error_line(result)
    assert "refusing to load checkpoint" in line and "(exec)" in line and WORKING in line
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_and_the_error_says_what_works(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that got past the refusal writes here, not into the checkout
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), path)
    line = one_error_line(run_cli("certify", "--checkpoint", path, "--sigma", 0.25, "--max", 1))
    assert "torch.nn.modules.container.Sequential" in line
    assert "torch.save(model.state_dict()) with --arch" in line


def write_import_payload(folder: Path, marker: Path, name: str = "evilnets") -> str:
    """A module that creates ``marker`` when imported, with a factory ``build``."""
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from torch import nn\n\n\ndef build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    return f"{name}:build"


def test_a_checkpoint_naming_a_factory_as_its_architecture_is_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    factory = write_import_payload(tmp_path, marker)
    for arch in ("os:system", factory):
        torch.save({"arch": arch, "state_dict": mnist_state()}, tmp_path / "c.pt")
        line = one_error_line(run_cli("certify", "--checkpoint", "c.pt", "--sigma", 0.25, "--max", 1))
        assert f"names the factory '{arch}'" in line and "never runs code named in a file" in line
        assert f"--arch {arch}" in line  # how to run it, if the user trusts it
    assert not marker.exists() and "evilnets" not in sys.modules


def test_a_spec_naming_a_factory_is_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    factory = write_import_payload(tmp_path, marker, "evilspec")
    (tmp_path / "spec.yaml").write_text(f"extends: mnist-mini\nname: mine\nmodel:\n  arch: {factory}\n")
    torch.save(mnist_state(), tmp_path / "state.pt")
    for command in (["certify", "--checkpoint", "state.pt", "--sigma", 0.25], ["train-base"]):
        line = one_error_line(run_cli(*command, "--dataset", "spec.yaml"))
        assert "spec.yaml: model.arch 'evilspec:build' names Python code" in line and "--arch evilspec:build" in line
    assert not marker.exists() and "evilspec" not in sys.modules


def test_a_factory_named_on_the_command_line_runs(run_cli, tmp_path, monkeypatch):
    """The other side: the user's own factory, named by the user, is imported and called."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "imported"
    factory = write_import_payload(tmp_path, marker, "mynets")
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), tmp_path / "state.pt")
    result = run_cli(
        "certify", "--checkpoint", "state.pt", "--arch", factory, "--sigma", 0.25, "--n0", 8, "--n", 16, "--max", 2
    )
    assert result.code == 0, result.stderr
    assert marker.exists() and (tmp_path / "runs/mnist-mini/certify/iso-0.25_n16.tsv").is_file()
    sys.modules.pop("mynets", None)


@pytest.fixture(scope="module")
def exported_programs(tmp_path_factory) -> tuple[Path, Path | None, Path]:
    """A real torch.export program of a tiny network, and a copy with an opaque-object constant that
    unpickles a payload (attack "opaque_obj" of the .pt2 investigation); None on torch writing the
    pre-2.8 layout. Returns (clean, malicious, marker)."""
    folder = tmp_path_factory.mktemp("pt2")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    clean, marker = folder / "clean.pt2", folder / "pwned"
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 8, 8),)), clean)
    with zipfile.ZipFile(clean) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config_name = next((n for n in entries if n.endswith("data/constants/model_constants_config.json")), None)
    if config_name is None:
        return clean, None, marker
    root = config_name[: -len("data/constants/model_constants_config.json")]
    config = json.loads(entries[config_name])
    config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    entries[config_name] = json.dumps(config).encode()
    entries[root + "data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker), protocol=2)
    malicious = folder / "evil.pt2"
    with zipfile.ZipFile(malicious, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return clean, malicious, marker


def test_torch_export_programs_are_refused_without_loading_them(run_cli, exported_programs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that got past the refusal writes here, not into the checkout
    clean, malicious, marker = exported_programs
    renamed = tmp_path / "model.pt"  # the content decides, not the name
    renamed.write_bytes((malicious or clean).read_bytes())
    for path in [clean, renamed] + ([malicious] if malicious else []):
        line = one_error_line(run_cli("certify", "--checkpoint", path, "--arch", "mnist_cnn", "--sigma", 0.25))
        assert "is a torch.export program (.pt2)" in line and "has no safe mode" in line and WORKING in line
    assert not marker.exists()


@pytest.mark.slow
def test_the_malicious_program_runs_its_payload_in_torch_export_load(exported_programs):
    """Why .pt2 is refused: torch.export.load itself unpickles the constant (in a separate process)."""
    _, malicious, marker = exported_programs
    if malicious is None:
        pytest.skip("this torch writes the pre-2.8 .pt2 layout, which the payload is not built for")
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(malicious)!r})"], timeout=300)
    assert marker.exists()
    marker.unlink()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archives_are_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that got past the refusal writes here, not into the checkout
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(4, 2)), path)
    line = one_error_line(run_cli("certify", "--checkpoint", path, "--arch", "mnist_cnn", "--sigma", 0.25))
    assert "is a TorchScript archive" in line and WORKING in line
