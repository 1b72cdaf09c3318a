"""Training on uneven and empty per-node shares, in both input modes: every node runs the same train and
eval step budget, and a node that fails ends the job with one ERROR [train] line; a hang fails the test.

Each dataset version holds two gzip inputs, and a gzip input is one shard per split (num_shards=2):
``uneven-eval``: a.csv.gz 10 train + 10 eval rows, b.csv.gz 20 train rows -> train shards [10, 20],
eval shards [10, 0]; ``empty-train``: a.csv.gz as before, b.csv.gz 8 eval rows -> train [10, 0],
eval [10, 8]. Rows are picked by the pipeline's own content hash (csvparse.splits_of, as convert splits).
"""
import gzip
import json
import os
import shutil
import signal
import subprocess

import pytest
from sklearn.datasets import load_digits

from conftest import TEST_MASTER, JobRun, run_job
from tfospipe import csvparse, launch

pytestmark = pytest.mark.spark
#: A job that hangs fails its test after this many seconds (the job and its executors are killed); a
#: healthy run takes 60-120 s on a loaded 2-core machine (the end-to-end tests run beside it on the other
#: test worker), a hung one would wait for minutes more.
JOB_TIMEOUT = 300
TRAIN_ARGS = {"batch_size": 4, "epochs": 2, "cluster_size": 2}


def run_bounded(job, args, build_dir, timeout=JOB_TIMEOUT):
    """run_job, but a job still running after ``timeout`` s fails the test, and its whole process group
    (spark-submit, the Python driver, the executors) is killed rather than left behind."""
    argv = launch.spark_submit_argv(job, args, TEST_MASTER, 2, str(build_dir))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **launch.TF_ENV), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{job} did not finish within {timeout}s (hung):\n{out[-5000:]}")
    return JobRun(subprocess.CompletedProcess(argv, proc.returncode, out))


def digits_rows():
    """scikit-learn's digits as (label, pixels) rows, grouped by the split the pipeline's hash puts them in."""
    d = load_digits()
    rows = {"train": [], "eval": []}
    splits = csvparse.splits_of(d.target, d.data.astype(int), 0.2)
    for label, pixels, split in zip(d.target.tolist(), d.data.astype(int).tolist(), splits.tolist()):
        rows[split].append((label, pixels))
    return rows


def write_gz(path, rows):
    with gzip.open(path, "wt") as f:
        for label, pixels in rows:
            f.write(",".join(map(str, [label] + pixels)) + "\n")


def convert_version(root, version, b_rows, build_dir):
    rows = digits_rows()
    raw = root / "raw" / version
    raw.mkdir(parents=True)
    write_gz(raw / "a.csv.gz", rows["train"][:10] + rows["eval"][:10])
    write_gz(raw / "b.csv.gz", b_rows(rows))
    run = run_job("convert", {"data_root": str(root), "version": version, "num_shards": 2, "pixel_max": 16},
                  build_dir)
    assert run.returncode == 0, run.explain(4000)
    manifest = json.load(open(root / "tfrecords" / version / "_manifest.json"))
    return {split: [s["records"] for s in manifest["shards"][split]] for split in ("train", "eval")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("shares")


@pytest.fixture(scope="module")
def uneven_eval(root, build_dir):
    counts = convert_version(root, "uneven-eval", lambda rows: rows["train"][10:30], build_dir)
    assert counts == {"train": [10, 20], "eval": [10, 0]}
    return "uneven-eval"


@pytest.fixture(scope="module")
def empty_train(root, build_dir):
    counts = convert_version(root, "empty-train", lambda rows: rows["eval"][10:18], build_dir)
    assert counts == {"train": [10, 0], "eval": [10, 8]}
    return "empty-train"


def train(root, version, mode, run_id, build_dir):
    return run_bounded("train", dict(TRAIN_ARGS, data_root=str(root), version=version, run_id=run_id,
                                     input_mode=mode), build_dir)


def finished_run(root, version, run_id, run):
    assert run.returncode == 0, run.explain(6000)
    run_dir = root / "models" / version / run_id
    manifest = json.load(open(run_dir / "_manifest.json"))
    markers = [json.load(open(run_dir / "workers" / f"worker-{i}.json")) for i in range(2)]
    return manifest, markers


@pytest.mark.parametrize("mode", ["tensorflow", "spark"])
def test_an_empty_eval_shard_is_shared_by_record_and_both_nodes_meet_the_budgets(root, uneven_eval, build_dir,
                                                                                  mode):
    run = train(root, uneven_eval, mode, f"uneven-{mode}", build_dir)
    manifest, markers = finished_run(root, uneven_eval, f"uneven-{mode}", run)
    # eval shards [10, 0]: one non-empty shard for two nodes, so each keeps one record in two of it
    assert "eval shards hold [10, 0] records" in run.output and "num_shards >= 2" in run.output
    assert manifest["shares"] == {"train": [20, 10], "eval": [5, 5]}
    # 30 train rows / (batch 4 x 2 nodes) = 3 steps per epoch; the largest eval share, 5 rows: 2 eval steps
    assert (manifest["steps_per_epoch"], manifest["eval_steps"]) == (3, 2)
    assert [(m["steps_run"], m["eval_steps_run"]) for m in markers] == [(6, 4), (6, 4)]
    assert [m["eval_share_records"] for m in markers] == [5, 5]
    if mode == "tensorflow":
        assert [m["train_share_records"] for m in markers] == [20, 10]
    else:  # Spark fed each node rows: one train shard partition each
        assert all(m["rows_fed"] > 0 for m in markers)
    assert run.result()["steps_run"] == 6


@pytest.mark.parametrize("mode", ["tensorflow", "spark"])
def test_an_empty_train_shard_is_shared_by_record_and_both_nodes_meet_the_budgets(root, empty_train, build_dir,
                                                                                   mode):
    run = train(root, empty_train, mode, f"empty-{mode}", build_dir)
    manifest, markers = finished_run(root, empty_train, f"empty-{mode}", run)
    assert "train shards hold [10, 0] records" in run.output
    assert manifest["shares"] == {"train": [5, 5], "eval": [10, 8]}
    # 10 train rows / 8 per step = 1 step per epoch; the larger eval share, 10 rows: 3 eval steps
    assert (manifest["steps_per_epoch"], manifest["eval_steps"]) == (1, 3)
    assert [(m["steps_run"], m["eval_steps_run"]) for m in markers] == [(2, 6), (2, 6)]
    assert [m["eval_share_records"] for m in markers] == [10, 8]
    if mode == "tensorflow":
        assert [m["train_share_records"] for m in markers] == [5, 5]
    else:  # one partition of every other record per node: both are fed
        assert all(m["rows_fed"] > 0 for m in markers)


@pytest.mark.parametrize("mode", ["tensorflow", "spark"])
def test_a_failing_node_ends_the_job_with_one_error_line_naming_it(root, empty_train, build_dir, mode):
    """A truncated eval shard: the node reading it (worker-1, eval shares [10, 8]) fails at the first
    evaluation; the job ends with one ERROR [train] line naming that node, not a hang or a bare traceback."""
    version = f"corrupt-{mode}"
    shutil.copytree(root / "tfrecords" / empty_train, root / "tfrecords" / version)
    shard = root / "tfrecords" / version / "eval" / "part-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    run = train(root, version, mode, "corrupt", build_dir)
    assert run.returncode == 2, run.explain(6000)
    lines = run.output.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR [")]
    assert len(errors) == 1, run.explain(6000)
    assert not any("Traceback" in line or "Error" in line for line in lines[errors[0] + 1:])  # nothing after it
    error = run.error()
    assert error.startswith("ERROR [train] TensorFlow node worker-1 failed: ")
    assert "worker-1.error" in error and "rerun the task" in error
    assert "DataLossError" in run.output and "truncated record" in run.output.lower()
