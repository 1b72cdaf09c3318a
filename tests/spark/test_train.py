"""The train job on multi-executor clusters: Spark input mode with uneven partitions, parameter-server
training. (Resume after a kill: test_executor_loss.py on a local root, tests/e2e/test_cluster.py on s3://
through Airflow.)"""
import json

import pytest

from conftest import run_job
from tfospipe import launch, model

pytestmark = pytest.mark.spark
VERSION = "2026-11-02"


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory, build_dir):
    """Digits converted into 3 shards: with 2 workers, Spark feeds one of them twice as many rows."""
    root = tmp_path_factory.mktemp("train-data")
    from tfospipe.sample_data import write_version
    write_version(str(root), VERSION)
    run = run_job("convert", {"data_root": str(root), "version": VERSION, "num_shards": 3}, build_dir)
    assert run.returncode == 0, run.explain(4000)
    return root


def train_args(root, run_id, **extra):
    return dict({"data_root": str(root), "version": VERSION, "run_id": run_id, "batch_size": 16}, **extra)


def test_spark_input_mode_with_uneven_partitions_finishes(digits_root, build_dir):
    # also all-reduces in float16 (gradient_compression), which must still learn
    run = run_job("train", train_args(digits_root, "spark-mode", input_mode="spark", epochs=1,
                                      gradient_compression="fp16"), build_dir)
    assert run.returncode == 0, run.explain(6000)
    run_dir = digits_root / "models" / VERSION / "spark-mode"
    manifest = json.load(open(run_dir / "_manifest.json"))
    workers = manifest["workers"]
    assert manifest["params"]["input_mode"] == "spark" and manifest["params"]["gradient_compression"] == "fp16"
    assert [w["worker"] for w in workers] == [0, 1]
    assert workers[0]["steps_run"] == workers[1]["steps_run"] == manifest["steps_per_epoch"]
    # every node evaluates the same number of steps on its share of the eval shards (3 shards, 2 nodes)
    assert workers[0]["eval_steps_run"] == workers[1]["eval_steps_run"] == manifest["eval_steps"]
    eval_rows = json.load(open(digits_root / "tfrecords" / VERSION / "_manifest.json"))["splits"]["eval"]
    assert sum(manifest["shares"]["eval"]) == eval_rows and min(manifest["shares"]["eval"]) > 0
    # three shards, one epoch, two nodes: one node is fed one shard, fewer rows than its step budget
    # needs; it replays what it received instead of leaving the collective early or blocking it
    fed = sorted(w["rows_fed"] for w in workers)
    assert 0 < fed[0] < manifest["steps_per_epoch"] * 16 and sum(fed) <= 1410
    assert max(w["rows_replayed"] for w in workers) > 0
    if launch.executor_malloc():  # TCMalloc installed (make install-test): the TF nodes run with it
        assert [w["malloc"] for w in workers] == ["tcmalloc", "tcmalloc"]
    assert manifest["final_eval_accuracy"] > 0.5
    predict = model.load_serving(str(run_dir / "model"), (8, 8))
    assert predict(__import__("numpy").zeros((2, 8, 8, 1), "float32"))[0].shape == (2, 10)


def test_parameter_server_training_on_three_executors(digits_root, build_dir):
    """num_ps=1: a parameter server, the chief as coordinator and one worker (ParameterServerStrategy)."""
    run = run_job("train", train_args(digits_root, "ps", num_ps=1, cluster_size=3, epochs=3), build_dir,
                  cluster_size=3, master="local-cluster[3,1,1024]")
    assert run.returncode == 0, run.explain(6000)
    run_dir = digits_root / "models" / VERSION / "ps"
    manifest = json.load(open(run_dir / "_manifest.json"))
    assert manifest["params"]["num_ps"] == 1 and manifest["params"]["cluster_size"] == 3
    train_rows = json.load(open(digits_root / "tfrecords" / VERSION / "_manifest.json"))["splits"]["train"]
    assert manifest["steps_per_epoch"] == train_rows // 16  # one batch on one worker per step
    chief, worker = manifest["workers"]
    assert chief["job_name"] == "chief" and chief["steps_run"] == 3 * manifest["steps_per_epoch"]
    assert worker["job_name"] == "worker" and "steps_run" not in worker  # a server the chief drives
    assert [p["job_name"] for p in manifest["parameter_servers"]] == ["ps"]
    assert manifest["final_eval_accuracy"] > 0.7
    assert "epoch 3/3 step" in (run_dir / "progress.log").read_text()
    predict = model.load_serving(str(run_dir / "model"), (8, 8))
    assert predict(__import__("numpy").zeros((2, 8, 8, 1), "float32"))[0].shape == (2, 10)
