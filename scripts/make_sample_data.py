"""Write dataset versions of real handwritten digits (scikit-learn's load_digits, 8x8, values 0-16).

One directory per version under {root}/raw/{version}/digits.csv, in the TFoS MNIST CSV layout:
a header ``label,pixel0,...,pixel63`` then one row per image. No download: the digits ship with
scikit-learn. Each version holds all 1,797 digits in a version-specific order.
"""
import argparse
import os

from tfospipe.sample_data import write_version


def main(argv: list[str] | None = None) -> None:
    """Write the versions of ``argv`` (default: sys.argv[1:])."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("TFOS_DATA_ROOT", "data"), help="data root (default: ./data)")
    p.add_argument("--limit", type=int, default=None, help="rows per version (default: all 1,797)")
    p.add_argument("versions", nargs="+", help="dataset versions to write, e.g. 2026-11-27 2026-11-28")
    args = p.parse_args(argv)
    for v in args.versions:
        path, n = write_version(args.root, v, args.limit)
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
