"""Inspect the serving area or roll it back: which promoted model serves, and point it at another.

    python scripts/serving.py list                        promoted models, the serving one marked *
    python scripts/serving.py rollback                    back to the model that served before the current one
    python scripts/serving.py rollback --to MODEL_VERSION point at a given promoted model
    python scripts/serving.py rollback --expect MV        only if MV (as list showed it) still serves
    python scripts/serving.py history [--model MV]        every decision: promote, rollback, rejected, unchanged
    python scripts/serving.py sync-mlflow                 mirror every promoted model and the champion alias to MLflow

Promoted models are never replaced or deleted, so every one of them can be rolled back to. A plain
rollback steps back one model each time it runs (the pointer keeps the order in which models served);
``rollback --to`` a model and a plain rollback returns to the one that served before. Every
rollback is recorded in ``serving/history/`` with who ran it, like every promotion and rejection.
A rollback is a compare-and-swap on the pointer state it read (``--expect``: and that state must name
the model you saw): if a promotion or another rollback lands first, it changes nothing and says so.
With ``MLFLOW_TRACKING_URI`` set, a rollback that moved the pointer then moves the registered model's
alias ``champion`` to the model now serving (tfospipe.tracking.set_champion; a server that does not take
it leaves one WARNING line, the rollback stands). ``sync-mlflow`` brings MLflow up to the serving area
after mirrors lagged (tfospipe.tracking.sync).

``--root`` defaults to $AIRFLOW_VAR_TFOS_DATA_ROOT, else ``data``. Exit status 0, or 2 with one
``error: ...`` line: a root that cannot be read (an unsupported scheme, refused or missing credentials,
an unreachable store, a bucket or root that does not exist: fs.check_access), or a rollback that
cannot be made (nothing to roll back to, or serving changed since it was read).
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import fs, paths, serving, tracking
from tfospipe.runner import JobError


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


def _figure(value):
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def format_event(e: dict) -> str:
    """One line per history event: time, action, from -> to, then the facts recorded with it."""
    line = f"{e.get('time', '?')[:19]}  {e.get('action', '?'):<9}  {e.get('from') or '-'} -> {e.get('to') or '-'}"
    if e.get("action") in ("rejected", "unchanged") or e.get("model_version") not in (None, e.get("to")):
        line += f"  model {e.get('model_version')}"
    facts = []
    for key in ("run_id", "dataset_version", "data_date"):
        if e.get(key):
            facts.append(f"{key} {e[key]}")
    if isinstance(e.get("accuracy"), (int, float)):
        acc = f"accuracy {_figure(e['accuracy'])}"
        if e.get("eval_data"):
            acc += f" on {e['eval_data']}"
        if "champion_accuracy" in e and e.get("compared_with"):
            acc += f" vs {_figure(e['champion_accuracy'])} of {e['compared_with']}"
        facts.append(acc)
    if e.get("rounds", 1) > 1:
        facts.append(f"after {e['rounds']} evaluation rounds")
    if e.get("rule"):
        facts.append(f"rule: {e['rule']}")
    if e.get("gate"):
        facts.append(f"gate: {serving.gate_line(e['gate'])}")
    if e.get("triggered_by"):
        facts.append(f"by {e['triggered_by']}")
    return line + "".join(f"\n    {f}" for f in facts)


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: sys.argv[1:]); exit status 0, or 2 with one ``error:`` line on
    stderr when the root cannot be read (fs.StorageError, also mid-command; an OSError), a rollback
    cannot be made (ValueError, TimeoutError), or sync-mlflow cannot reach MLflow (JobError)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("AIRFLOW_VAR_TFOS_DATA_ROOT", "data"), help="data root")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="promoted models (the serving one marked *) and the models rollback returns to")
    rb = sub.add_parser("rollback", help="point serving at an earlier model")
    rb.add_argument("--to", default=None, help="promoted model version (default: the one that served before)")
    rb.add_argument("--expect", default=None, metavar="MODEL_VERSION",
                    help="the model version you saw serving (list): refuse if another one serves now")
    hist = sub.add_parser("history", help="every serving decision, oldest first")
    hist.add_argument("--model", default=None, help="only the events naming this model version")
    sub.add_parser("sync-mlflow", help="register every promoted model in MLflow ($MLFLOW_TRACKING_URI) and point "
                                       "the champion alias at the serving one")
    args = p.parse_args(argv)
    try:
        fs.check_access(args.root, must_exist=True)
        return _command(args)
    except (fs.StorageError, ValueError, TimeoutError, OSError, serving.ChampionChanged, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    """The command of the parsed ``args`` on a root that exists; raises what :func:`main` reports."""
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
    if args.command == "history":
        events = serving.history(layout, args.model)
        if not events:
            print(f"no serving history in {serving.history_dir(layout)}"
                  + (f" for model {args.model}" if args.model else ""))
        for e in events:
            print(format_event(e))
        return 0
    if args.command == "sync-mlflow":
        for line in tracking.sync(layout):
            print(line)
        return 0
    by = f"scripts/serving.py rollback{' --to ' + args.to if args.to else ''} by {serving.user()}"
    fs.check_commits(args.root)  # the pointer moves by a conditional write
    pointer = serving.rollback(layout, args.to, by=by,
                               expected=serving.ANY if args.expect is None else args.expect)
    print(f"serving {pointer['model_version']} (was {pointer['from']}; previous now {pointer['previous']})")
    # the compare-and-swap moved the pointer: MLflow's champion alias follows it
    tracking.set_champion(layout, pointer["model_version"], job="rollback")
    return 0


if __name__ == "__main__":
    sys.exit(main())
