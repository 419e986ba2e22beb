"""Build the mnist-mini subset that ships inside the package.

    python scripts/build_mnist_mini.py [--mnist ../shared/data/MNIST/raw]

Reads the original MNIST IDX files, picks a seeded random subset of 5,000
training and 1,000 test images (kept in their original order), and writes
src/nrs_cli/assets/mnist-mini.npz. The archive is byte-for-byte reproducible:
fixed seed, fixed zip timestamps, fixed compression.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": 5000, "test": 1000}
PREFIX = {"train": "train", "test": "t10k"}
SEED = 0


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "MNIST" / "raw")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "nrs_cli" / "assets" / "mnist-mini.npz")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, size in SIZES.items():
        images = read_idx(args.mnist / f"{PREFIX[split]}-images-idx3-ubyte")
        labels = read_idx(args.mnist / f"{PREFIX[split]}-labels-idx1-ubyte")
        chosen = np.sort(rng.permutation(len(images))[:size])
        arrays[f"{split}_images"] = np.ascontiguousarray(images[chosen])
        arrays[f"{split}_labels"] = np.ascontiguousarray(labels[chosen])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    counts = np.bincount(arrays["train_labels"], minlength=10)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    print(f"train labels per class: {counts.tolist()}")


if __name__ == "__main__":
    main()
