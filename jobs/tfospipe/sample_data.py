"""Dataset versions of real handwritten digits for the demo, the tests and the benchmarks.

scikit-learn's ``load_digits`` (1,797 images of 8x8 pixels, values 0-16, shipped with the package: no
download), written in the TFoS MNIST CSV layout: a header ``label,pixel0,...,pixel63`` then one row per
image. Each version holds the digits in a version-specific order.
"""

import os
import random

from . import paths


def write_version(root: str, version: str, limit: int | None = None) -> tuple[str, int]:
    """Write ``{root}/raw/{version}/digits.csv`` (local root) and return ``(path, rows)``: the first
    ``limit`` digits (all 1,797 when None) in an order seeded by ``version``. The file appears complete
    or not at all (written beside, then renamed)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    rows = list(zip(digits.target.tolist(), digits.data.astype(int).tolist()))
    random.Random(version).shuffle(rows)
    rows = rows[:limit] if limit else rows
    out_dir = paths.Layout(root).raw(version)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits.csv")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("label," + ",".join(f"pixel{i}" for i in range(64)) + "\n")
        for label, pixels in rows:
            f.write(f"{label}," + ",".join(map(str, pixels)) + "\n")
    os.replace(tmp, path)
    return path, len(rows)
