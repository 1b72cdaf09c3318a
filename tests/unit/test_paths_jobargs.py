import pytest

from tfospipe import jobargs, paths


@pytest.mark.parametrize("bad", ["..", "../etc", "/abs", "a/b", "a b", "a;rm", "$(x)", "", "-rf", ".hidden",
                                 "a..b", "x\n", "a|b", "`id`"])
def test_unsafe_versions_are_rejected(bad):
    with pytest.raises(paths.PathError):
        paths.check_segment(bad)


def test_layout_keys_outputs_by_version_and_run(tmp_path):
    layout = paths.Layout(str(tmp_path))
    assert layout.tfrecords("2026-11-28") == str(tmp_path / "tfrecords" / "2026-11-28")
    assert layout.model_run("v1", "r1") == str(tmp_path / "models" / "v1" / "r1")
    assert paths.Layout("hdfs://nn:8020/data/").predictions("v1") == "hdfs://nn:8020/data/predictions/v1"
    with pytest.raises(paths.PathError):
        layout.raw("../x")


def test_airflow_run_ids_become_segments():
    slug = paths.run_slug("manual__2026-11-28T10:00:00.123+00:00")
    assert slug == "manual__2026-11-28T10_00_00.123_00_00"
    assert paths.run_slug("scheduled__2026-11-28T00:00:00+00:00") != slug


def test_argv_round_trip_for_every_job():
    for job in jobargs.JOBS:
        values = {"data_root": "/tmp/root", "version": "2026-11-28"}
        if any(a.name == "run_id" for a in jobargs.JOBS[job]):
            values["run_id"] = "manual__2026-11-28T10:00:00+00:00"
        args = jobargs.parse(job, jobargs.to_argv(job, values))
        assert args.version == "2026-11-28"
        for name, default in jobargs.defaults(job).items():
            if name != "image_shape":
                assert getattr(args, name) == default


@pytest.mark.parametrize("job, extra", [
    ("convert", ["--eval-fraction", "1.5"]),
    ("convert", ["--num-shards", "0"]),
    ("convert", ["--image-shape", "28by28"]),
    ("train", ["--run-id", "r", "--cluster-size", "0"]),
    ("validate", ["--run-id", "r", "--min-accuracy", "2"]),
    ("infer", ["--batch-size", "-3"]),
])
def test_invalid_arguments_exit_with_usage(job, extra):
    with pytest.raises(SystemExit) as e:
        jobargs.parse(job, ["--data-root", "/x", "--version", "v1"] + extra)
    assert e.value.code == 2


def test_version_with_traversal_is_rejected_by_the_job_parser():
    with pytest.raises(SystemExit):
        jobargs.parse("convert", ["--data-root", "/x", "--version", "../../etc"])


def test_unknown_argument_names_are_a_programming_error():
    with pytest.raises(KeyError):
        jobargs.to_argv("infer", {"epochs": 3})


def test_parameter_server_topologies_that_cannot_run_are_refused():
    from tfospipe import train
    from tfospipe.runner import JobError
    train.check_topology(3, 1, "tensorflow")
    train.check_topology(2, 0, "spark")
    with pytest.raises(JobError, match=r"cluster_size >= num_ps \+ 2 = 3"):
        train.check_topology(2, 1, "tensorflow")
    with pytest.raises(JobError, match="needs input_mode=tensorflow"):
        train.check_topology(4, 1, "spark")
    train.check_topology(2, 0, "tensorflow", "fp16")
    with pytest.raises(JobError, match="applies to all-reduce training"):
        train.check_topology(3, 1, "tensorflow", "fp16")


def test_spark_mode_feeds_every_row_once_in_blocks():
    from tfospipe import train
    rows = [bytes([i % 256]) * 3 for i in range(train.FEED_BLOCK_ROWS * 2 + 5)]
    blocks = list(train.feed_blocks(iter(rows)))
    assert [len(b) for b in blocks] == [train.FEED_BLOCK_ROWS, train.FEED_BLOCK_ROWS, 5]
    assert [r for b in blocks for r in b] == rows
    assert list(train.feed_blocks(iter([]))) == []


def test_executors_preload_tcmalloc_where_installed_unless_turned_off(monkeypatch, tmp_path):
    import os

    import tfos_spark
    monkeypatch.delenv("TFOS_EXECUTOR_MALLOC", raising=False)
    installed = next((p for p in tfos_spark.TCMALLOC_PATHS if os.path.exists(p)), None)
    assert tfos_spark.spark_conf("2").get("spark.executorEnv.LD_PRELOAD") == installed
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    monkeypatch.setenv("TFOS_EXECUTOR_MALLOC", str(lib))
    assert tfos_spark.spark_conf("2")["spark.executorEnv.LD_PRELOAD"] == str(lib)
    monkeypatch.setenv("TFOS_EXECUTOR_MALLOC", "")
    assert "spark.executorEnv.LD_PRELOAD" not in tfos_spark.spark_conf("2")
