"""Export scikit-learn's handwritten digits as an image folder, and score a classic baseline on the same split.

``sklearn.datasets.load_digits`` ships 1797 real 8×8 greyscale digits (no download). This writes them upscaled to
SIZE×SIZE PNGs in ``OUT/{train,validation}/<digit>/<index>.png`` (a stratified 80/20 split, seed 0) and prints
the validation accuracy of ``sklearn.svm.SVC()`` (RBF kernel, default settings) trained on the raw 8×8 pixels of
the train part: the figure that ``hubclf train`` with default flags is compared with (docs/recipes.md).

    python scripts/digits.py /tmp/digits --size 32
    hubclf train --model hubclf_alexnet_slim --no-pretrained --data /tmp/digits --img-size 64 64 --epochs 15 ...

Needs scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def export_digits(out: Path, size: int = 32, seed: int = 0) -> float:
    """Write the image folder; return the SVM's validation accuracy on the same split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    digits = load_digits()
    rows = np.arange(len(digits.target))
    train_rows, val_rows = train_test_split(rows, test_size=0.2, stratify=digits.target, random_state=seed)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for split, split_rows in (("train", train_rows), ("validation", val_rows)):
        for row in split_rows:
            folder = staging / split / str(digits.target[row])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.rint(digits.images[row] * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{row:04d}.png")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)  # the folder appears complete or not at all

    svm = SVC().fit(digits.data[train_rows], digits.target[train_rows])
    return float(svm.score(digits.data[val_rows], digits.target[val_rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="image folder to write (replaced if it exists)")
    parser.add_argument("--size", type=int, default=32, help="side of the exported images, in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified train/validation split")
    args = parser.parse_args()
    accuracy = export_digits(args.out, args.size, args.seed)
    print(f"wrote {args.out}; SVC() on the raw 8x8 pixels, same split: validation accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
