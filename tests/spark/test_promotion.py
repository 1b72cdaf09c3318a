"""Promotion under concurrent validate jobs and backfills, with real spark-submits on one data root.

One converted version and two trainings (a strong model: the session's ``served_version``; a weak one,
learning rate 1e-6) are shared by the module. Two validate jobs started at the same moment race for the serving pointer: whatever the
interleaving, the model left serving was compared with every model it replaced, and the history
records both decisions. Then models of two older dataset versions are validated while the newer
version's model serves: the default policy leaves serving as it is, ``promotion=auto`` promotes.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import SERVED_RUN, SERVED_VERSION, run_job
from tfospipe import launch, paths, serving

pytestmark = pytest.mark.spark
NEW = "2026-11-20"
OLD = ("2026-11-05", "2026-11-10")
STRONG, WEAK = "manual__strong", "manual__weak"
PROJECT_DIR = os.path.dirname(launch.JOBS_DIR)
#: Each concurrent validate job gets one executor: two apps side by side fit a small machine.
ONE_EXECUTOR = "local-cluster[1,1,1024]"


def start_validate(root, build_dir, version, run, **flags):
    """spark-submit the validate job as the DAG does, without waiting for it; its output goes to a file
    (a full pipe would stall one job while the other runs on)."""
    args = dict({"data_root": str(root), "version": version, "run_id": run}, **flags)
    cmd = launch.spark_submit_argv("validate", args, ONE_EXECUTOR, 1, str(build_dir))
    env = dict(os.environ, **launch.TF_ENV)
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    proc.log = log
    return proc


def finish(proc, timeout=400):
    proc.wait(timeout=timeout)
    proc.log.seek(0)
    out = proc.log.read()
    proc.log.close()
    result = next((json.loads(line.split("] ", 1)[1]) for line in out.splitlines() if line.startswith("RESULT [")),
                  None)
    errors = [line for line in out.splitlines() if line.startswith("ERROR [")]
    return proc.returncode, result, errors, out


def race(root, build_dir, jobs):
    """Start every (version, run, flags) validate at once; returns their finish() tuples in order."""
    procs = [start_validate(root, build_dir, version, run, **flags) for version, run, flags in jobs]
    return [finish(p) for p in procs]


def serving_cli(root, *argv):
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root", str(root),
                           *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def root(tmp_path_factory, build_dir, served_version):
    """A root with one converted version and two trained runs of it, nothing serving: the strong run is the
    session's trained model (two epochs), the weak one is trained here (one epoch at learning rate 1e-6)."""
    src = paths.Layout(str(served_version.root))
    root = tmp_path_factory.mktemp("promotion")
    layout = paths.Layout(str(root))
    shutil.copytree(src.tfrecords(SERVED_VERSION), layout.tfrecords(NEW))  # as a backfill's copies below
    shutil.copytree(src.model_run(SERVED_VERSION, paths.run_slug(SERVED_RUN)), layout.model_run(NEW, STRONG))
    run = run_job("train", {"data_root": str(root), "version": NEW, "batch_size": 16, "run_id": WEAK, "epochs": 1,
                            "learning_rate": 1e-6}, build_dir)
    assert run.returncode == 0, run.explain(6000)
    return root


def decisions(layout, run_ids):
    """The history events of validate decisions, by run id."""
    out = {}
    for e in serving.history(layout):
        if e.get("run_id") in run_ids and e["action"] in ("promote", "rejected", "unchanged"):
            out.setdefault(e["run_id"], []).append(e)
    return out


def assert_every_replaced_model_was_compared(layout):
    """Each promote event replaced the very model it was compared with, and the promotions chain."""
    served = None
    for e in serving.history(layout):
        if e["action"] in ("promote", "rollback"):
            assert e["from"] == served, e
            if e["action"] == "promote":
                assert e["compared_with"] == e["from"], e
            served = e["to"]
    assert serving.current(layout)["model_version"] == served


def test_two_validate_jobs_racing_leave_the_better_model_serving(root, build_dir):
    layout = paths.Layout(str(root))
    gate = {"min_accuracy": 0.0, "max_regression": 0.0}  # a candidate may not trail the serving model
    (rc_s, res_s, err_s, out_s), (rc_w, res_w, err_w, out_w) = race(
        root, build_dir, [(NEW, STRONG, gate), (NEW, WEAK, gate)])
    assert rc_s == 0 and res_s["decision"] == "promote", out_s[-6000:]
    strong_mv = res_s["promoted"]
    assert serving.current(layout)["model_version"] == strong_mv
    assert "PROMOTION [validate] round 1:" in out_s

    events = decisions(layout, {paths.run_slug(STRONG), paths.run_slug(WEAK)})
    (strong_event,), (weak_event,) = events[paths.run_slug(STRONG)], events[paths.run_slug(WEAK)]
    assert strong_event["action"] == "promote" and strong_event["to"] == strong_mv
    if weak_event["action"] == "promote":  # the weak one swapped first: the strong one was judged against it
        assert rc_w == 0 and strong_event["from"] == weak_event["to"] == strong_event["compared_with"]
        assert res_s["compared_with"][-1] == weak_event["to"]  # in round 2 if it first saw nothing serving
        assert res_s["champion_accuracy"] == weak_event["accuracy"] < res_s["accuracy"]
    else:  # the weak one was compared with the strong one (at once, or after a changed pointer) and rejected
        assert weak_event["action"] == "rejected" and weak_event["compared_with"] == strong_mv
        assert rc_w == 2 and "trails the serving model" in err_w[-1], out_w[-6000:]
        assert strong_event["from"] is None
    assert_every_replaced_model_was_compared(layout)
    print(f"race: strong rounds {res_s['rounds']} compared with {res_s['compared_with']}; "
          f"weak {weak_event['action']} after {weak_event['rounds']} round(s)")

    metrics = json.load(open(os.path.join(layout.validation(NEW, paths.run_slug(STRONG)), "metrics.json")))
    assert metrics["promotion"]["decision"] == "promote"
    assert metrics["promotion"]["compared_with"] == res_s["compared_with"]


def test_a_backfill_of_older_versions_leaves_the_newer_model_serving_unless_auto(root, build_dir):
    layout = paths.Layout(str(root))
    now = serving.current(layout)
    assert now is not None and now["dataset_version"] == NEW and now["data_date"] == NEW
    newer = now["model_version"]
    for version, source in zip(OLD, (STRONG, WEAK)):  # the older versions' data and trained runs
        shutil.copytree(layout.tfrecords(NEW), layout.tfrecords(version))
        shutil.copytree(layout.model_run(NEW, paths.run_slug(source)), layout.model_run(version, "backfill__run"))
    gate = {"min_accuracy": 0.0, "max_regression": 1.0}  # the gate passes both: the policy decides

    held = race(root, build_dir, [(v, "backfill__run", gate) for v in OLD])  # default policy
    for (rc, result, errors, out), version in zip(held, OLD):
        assert rc == 0 and result["decision"] == "held" and result["promoted"] is None, out[-6000:]
        assert f"data date {version} is older than serving model {newer}'s {NEW}" in result["rule"]
        assert "PROMOTION [validate] round 1:" in out and "held (promotion=if_not_older" in out
        metrics = json.load(open(os.path.join(layout.validation(version, "backfill__run"), "metrics.json")))
        assert metrics["passed"] and metrics["promotion"]["policy"] == "if_not_older"
        assert metrics["promotion"]["decision"] == "held" and "older than" in metrics["promotion"]["rule"]
        report = open(os.path.join(layout.validation(version, "backfill__run"), "report.md")).read()
        assert "not promoted (promotion policy)" in report and "`if_not_older`" in report
    assert serving.current(layout)["model_version"] == newer
    rejected = [e for e in serving.history(layout) if e["action"] == "rejected" and e["dataset_version"] in OLD]
    assert len(rejected) == 2 and all(e["from"] == e["to"] == newer and e["gate_passed"] for e in rejected)

    promoted = race(root, build_dir, [(v, "backfill__run", dict(gate, promotion="auto")) for v in OLD])
    for rc, result, errors, out in promoted:
        assert rc == 0 and result["decision"] == "promote" and result["promoted"], out[-6000:]
        assert result["rule"].startswith("promotion=auto")
    final = serving.current(layout)
    assert final["dataset_version"] in OLD and final["model_version"] in {r[1]["promoted"] for r in promoted}
    assert_every_replaced_model_was_compared(layout)
    assert {e["dataset_version"] for e in serving.history(layout)[-2:]} == set(OLD)

    rolled = serving_cli(root, "rollback", "--to", newer)
    assert rolled.returncode == 0, rolled.stderr
    assert serving.current(layout)["model_version"] == newer
    shown = serving_cli(root, "history")
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    text = shown.stdout
    events = serving.history(layout)
    heads = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(heads) == len(events) and [h.split()[1] for h in heads] == [e["action"] for e in events]
    assert sum(e["action"] == "promote" for e in events) >= 3  # strong, and both older versions under auto
    assert f"rollback   {final['model_version']} -> {newer}" in text
    assert f"by scripts/serving.py rollback --to {newer} by " in text
    assert "promotion=if_not_older: data date 2026-11-05 is older" in text
    assert f"on eval split of dataset version {NEW}" in text
