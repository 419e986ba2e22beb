"""The Python guide's examples run: every ```python block of docs/python.md, in order and in one namespace,
then the three lines of the README's "Certify your own model", with sample counts shrunk so that they take
seconds."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_MODEL = "## Certify your own model"
# the guide's real settings -> a few samples and steps (every one must still be in the docs)
SMALLER = {
    "n=100_000": "n=24",
    "n=10_000": "n=24",
    "n0=100": "n0=4",
    "batch_size=1000": "batch_size=28",
    "steps=100": "steps=2",
    "batch_size=32": "batch_size=4",
    "n0=16": "n0=2",
}


def page(name: str) -> str:
    """docs/python.md, or the README's section on certifying one's own model."""
    if name == "python.md":
        return (ROOT / "docs" / name).read_text()
    readme = (ROOT / "README.md").read_text()
    start = readme.index(OWN_MODEL)
    return readme[start : readme.index("\n## ", start)]


def python_blocks(name: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", page(name), re.S | re.M)


def test_the_python_guide_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pages = ("python.md", OWN_MODEL)
    blocks = [(name, k, block) for name in pages for k, block in enumerate(python_blocks(name))]
    assert len(blocks) >= 10
    text = "".join(block for _, _, block in blocks)
    assert all(real in text for real in SMALLER), [real for real in SMALLER if real not in text]
    namespace: dict = {}
    for name, k, block in blocks:
        for real, small in SMALLER.items():
            block = block.replace(real, small)
        exec(compile(block, f"{name}, python block {k + 1}", "exec"), namespace)
    assert namespace["prediction"] in range(-1, 10) and namespace["radius"] >= 0
