"""Inspect the serving area or roll it back: which promoted model serves, and point it at another.

    python scripts/serving.py list                        promoted models, the serving one marked *
    python scripts/serving.py rollback                    back to the model that served before
    python scripts/serving.py rollback --to MODEL_VERSION point at a given promoted model
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jobs"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import paths, serving  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("AIRFLOW_VAR_TFOS_DATA_ROOT", "data"), help="data root")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    rb = sub.add_parser("rollback")
    rb.add_argument("--to", default=None, help="promoted model version (default: the previous one)")
    args = p.parse_args(argv)
    layout = paths.Layout(args.root)
    if args.command == "list":
        now = serving.current(layout)
        for mv in serving.versions(layout):
            print(("* " if now and now["model_version"] == mv else "  ") + mv)
        return 0
    try:
        pointer = serving.rollback(layout, args.to)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {pointer['model_version']} (was {pointer['previous']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
