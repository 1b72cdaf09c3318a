"""Inspect the serving area or roll it back: which promoted model serves, and point it at another.

    python scripts/serving.py list                        promoted models, the serving one marked *
    python scripts/serving.py rollback                    back to the model that served before the current one
    python scripts/serving.py rollback --to MODEL_VERSION point at a given promoted model

Promoted models are never replaced or deleted, so every one of them can be rolled back to. A plain
rollback steps back one model each time it runs (the pointer keeps the order in which models served);
``rollback --to`` a model and a plain rollback returns to the one that served before.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jobs"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import paths, serving  # noqa: E402


def _describe(layout, mv):
    """One line of facts from a promoted model's manifest (empty when it has none)."""
    try:
        info = serving.model_info(layout, mv)
    except (OSError, ValueError):
        return ""
    parts = []
    if isinstance(info.get("accuracy"), (int, float)):
        parts.append(f"accuracy {info['accuracy']:.4f}")
    for key in ("dataset_version", "run_id", "promoted_at"):
        if info.get(key):
            parts.append(f"{key} {info[key]}")
    return "  ".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("AIRFLOW_VAR_TFOS_DATA_ROOT", "data"), help="data root")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="promoted models (the serving one marked *) and the models rollback returns to")
    rb = sub.add_parser("rollback", help="point serving at an earlier model")
    rb.add_argument("--to", default=None, help="promoted model version (default: the one that served before)")
    args = p.parse_args(argv)
    layout = paths.Layout(args.root)
    if args.command == "list":
        now = serving.current(layout)
        promoted = serving.versions(layout)
        if not promoted:
            print(f"no promoted model in {layout.serving()}/models")
        for mv in promoted:
            mark = "* " if now and now["model_version"] == mv else "  "
            print(f"{mark}{mv}  {_describe(layout, mv)}".rstrip())
        if now and now.get("history"):
            print("a plain rollback steps back to, in turn: " + ", ".join(now["history"]))
        return 0
    try:
        pointer = serving.rollback(layout, args.to)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {pointer['model_version']} (was {pointer['from']}; previous now {pointer['previous']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
