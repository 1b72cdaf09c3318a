"""Reading OpenLineage events back (the file transport's files) as the lineage graph of the pipeline's tasks,
for tests/spark/test_tracking_lineage.py and tests/e2e/test_pipeline.py."""
import glob
import json


def read_events(path_prefix):
    """The events the file transport wrote under ``path_prefix`` (``log_file_path``): one JSON event per
    file (``<prefix>-<time>.json``, append off) or per line (append on), in file-name (time) order."""
    events = []
    for name in sorted(glob.glob(path_prefix + "*")):
        with open(name) as f:
            events += [json.loads(line) for line in f if line.strip()]
    return events


def task_name(event):
    """The task of a task event (job name ``<dag_id>.<task_id>``), or None for a DAG-run event."""
    name = event["job"]["name"]
    return name.split(".", 1)[1] if "." in name else None


def datasets(event, side):
    """``{dataset name: dataset}`` of an event's ``inputs`` or ``outputs`` (names relative to nothing: the
    spec's name, e.g. an absolute path on a local root)."""
    return {d["name"]: d for d in event.get(side) or []}


def edges(events):
    """``{(input name, output name)}`` over the COMPLETE events of the tasks."""
    found = set()
    for e in events:
        if e["eventType"] == "COMPLETE" and task_name(e):
            found |= {(i, o) for i in datasets(e, "inputs") for o in datasets(e, "outputs")}
    return found
