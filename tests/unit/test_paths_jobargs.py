import pytest

from tfospipe import jobargs, paths


@pytest.mark.parametrize("bad", ["..", "../etc", "/abs", "a/b", "a b", "a;rm", "$(x)", "", "-rf", ".hidden",
                                 "a..b", "x\n", "a|b", "`id`"])
def test_unsafe_versions_are_rejected(bad):
    with pytest.raises(paths.PathError):
        paths.check_segment(bad)


def test_segment_pattern_is_the_rule_under_re_search():
    """JSON schema applies "pattern" with re.search, where a bare "$" matches before a final newline."""
    import re
    for good in ("v1", "2026-11-28", "a" * 128, "a.b_c-d"):
        assert re.search(paths.SEGMENT_PATTERN, good) and paths.check_segment(good) == good
    for bad in ("v1\n", "\n", "a" * 129, "a..b", "é", ""):
        assert not re.search(paths.SEGMENT_PATTERN, bad)
        with pytest.raises(paths.PathError, match="1-128 characters"):
            paths.check_segment(bad)


def test_layout_keys_outputs_by_version_and_run(tmp_path):
    layout = paths.Layout(str(tmp_path))
    assert layout.tfrecords("2026-11-28") == str(tmp_path / "tfrecords" / "2026-11-28")
    assert layout.model_run("v1", "r1") == str(tmp_path / "models" / "v1" / "r1")
    assert paths.Layout("hdfs://nn:8020/data/").predictions("v1") == "hdfs://nn:8020/data/predictions/v1"
    with pytest.raises(paths.PathError):
        layout.raw("../x")
    # the lineage index sits inside the version's TFRecords, where no shard glob ("part-*") reaches it
    assert layout.lineage("v1") == str(tmp_path / "tfrecords" / "v1" / "_lineage")
    assert paths.LINEAGE_DIR.startswith("_")


#: What Spark reports when an executor JVM is killed during a job (py4j's message, trimmed).
SPARK_LOSS = (
    "An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
    ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 0.0 failed 1 times, most "
    "recent failure: Lost task 1.0 in stage 0.0 (TID 1) (192.0.2.2 executor 1): ExecutorLostFailure (executor 1 "
    "exited caused by one of the running tasks) Reason: Command exited with code 137\nDriver stacktrace:\n"
    "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2935)\n")


def test_a_lost_executor_is_read_from_sparks_failure_and_told_in_one_line():
    from tfospipe import runner
    loss = runner.executor_loss(Exception(SPARK_LOSS))
    assert loss == runner.ExecutorLoss("1", "192.0.2.2", 1, "ExecutorLostFailure (executor 1 exited caused by one "
                                       "of the running tasks) Reason: Command exited with code 137")
    assert runner.executor_loss("ERROR TaskSchedulerImpl: Lost executor 3 on 10.0.0.7: Command exited with code 143") \
        == runner.ExecutorLoss("3", "10.0.0.7", None, "Command exited with code 143")
    assert runner.executor_loss(ValueError("a bug")) is None and runner.executor_loss(None) is None
    assert runner.executor_loss(RuntimeError("tool failed: Command exited with code 1")) is None  # not a lost executor
    for job in ("convert", "train", "validate", "infer"):
        message = runner.executor_loss_message(job, loss)
        assert "\n" not in message and "Spark executor 1 on host 192.0.2.2" in message
        assert "code 137" in message and "retry" in message
    assert "nothing was promoted" in runner.executor_loss_message("validate", loss)


def test_airflow_run_ids_become_segments():
    slug = paths.run_slug("manual__2026-11-28T10:00:00.123+00:00")
    assert slug == "manual__2026-11-28T10.3a00.3a00.2e123.2b00.3a00"
    assert paths.run_slug("scheduled__2026-11-28T00:00:00+00:00") != slug
    assert paths.run_slug("manual..run") == "manual.2e.2erun"  # Airflow allows '..' in a run id; a segment may not
    assert paths.legacy_run_slug("manual..run") == "manual_run"


def test_run_ids_that_the_old_encoding_merged_get_folders_of_their_own():
    import random
    assert paths.run_slug("exp:1") == "exp.3a1" and paths.run_slug("exp+1") == "exp.2b1"
    assert paths.legacy_run_slug("exp:1") == paths.legacy_run_slug("exp+1") == "exp_1"   # the collision fixed
    assert paths.run_slug("exp_1") == "exp_1" and paths.run_slug("_r") == "x.-.5fr" and paths.run_slug("x_r") == "x_r"
    assert paths.run_slug("März") == "M.c3.a4rz"
    rng = random.Random(5)
    alphabet = "ab_-.:+~ xX0é"
    seen = {}
    for _ in range(20000):
        run = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        folder = paths.run_slug(run)
        assert paths.check_segment(folder, "run id") == folder
        assert seen.setdefault(folder, run) == run, (run, seen[folder])      # injective
    long = [paths.run_slug("m" * 200 + c) for c in "ab"] + [paths.run_slug("m" * 110 + ":" * 50)]
    assert len(set(long)) == 3 and all(len(f) <= 128 for f in long)
    with pytest.raises(paths.PathError):
        paths.run_slug("")


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


def test_each_job_parses_into_its_frozen_params_dataclass():
    """One dataclass per job: its fields are the job's flags in parser order, its defaults are what the
    parser gives, and the object is frozen and pickles whole (the training nodes receive it)."""
    import dataclasses
    import pickle
    for job, cls in jobargs.PARAMS.items():
        assert [f.name for f in dataclasses.fields(cls)] == [a.name for a in jobargs.JOBS[job]]
        values = {"data_root": "/tmp/root", "version": "v1"}
        if "run_id" in {f.name for f in dataclasses.fields(cls)}:
            values["run_id"] = "r1"
        params = jobargs.parse(job, jobargs.to_argv(job, values))
        assert type(params) is cls and params == cls(**values)
        assert pickle.loads(pickle.dumps(params)) == params
        with pytest.raises(dataclasses.FrozenInstanceError):
            params.version = "v2"


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


def _train(*extra):
    return jobargs.parse("train", ["--data-root", "/x", "--version", "v1", "--run-id", "r"] + list(extra))


@pytest.mark.parametrize("flag, text, value", [
    ("--epochs", "2.0", 2), ("--epochs", "1e1", 10), ("--epochs", "1E+1", 10), ("--cluster-size", "4.0", 4),
    ("--executor-wait", "5.0", 5), ("--learning-rate", "1e-05", 1e-05), ("--learning-rate", "1", 1.0),
])
def test_number_flags_read_the_json_number_a_param_renders_to(flag, text, value):
    """JSON schema counts 2.0 and 1e1 as integers, and the DAG renders a param as str(value)."""
    args = _train(flag, text)
    got = getattr(args, flag[2:].replace("-", "_"))
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("flag, text, why", [
    ("--epochs", "2.5", "is not of type 'integer'"), ("--epochs", "nan", "not a JSON number"),
    ("--epochs", " 2", "not a JSON number"), ("--epochs", "2_0", "not a JSON number"),
    ("--executor-wait", "1e400", "inf is not of type 'integer'"), ("--executor-wait", "0", "less than the minimum"),
    ("--learning-rate", "NaN", "not a JSON number"), ("--learning-rate", "inf", "not a JSON number"),
    ("--learning-rate", "0", "less than or equal to the minimum of 0"), ("--cluster-size", "1", "minimum of 2"),
    ("--input-mode", "Spark", "is not one of"), ("--epochs", "\u0662", "not a JSON number"),
    ("--epochs", "+2", "not a JSON number"), ("--epochs", "02", "not a JSON number"),
    ("--epochs", "1" * 5000, "not a JSON number"),
])
def test_refused_flags_say_what_was_given_and_what_to_use(capsys, flag, text, why):
    with pytest.raises(SystemExit) as e:
        _train(flag, text)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {text!r} is refused (" in err and why in err and "; use " in err


def test_image_shape_is_auto_or_positive_hxw():
    def shape(text):
        return jobargs.parse("convert", ["--data-root", "/x", "--version", "v1", "--image-shape", text]).image_shape
    assert shape("auto") is None and shape("28x28") == (28, 28) and shape("1x9999") == (1, 9999)
    for bad in ("0x0", "0x28", "28x0", "10000x1", "28X28", "028x28", "", "28x28\n", " 28x28", "-1x4"):
        with pytest.raises(SystemExit):
            shape(bad)


def test_rules_and_defaults_agree():
    """Every rule is a valid JSON schema its default satisfies; only flags with a rule are params."""
    from jsonschema.validators import validator_for
    for job, args in jobargs.JOBS.items():
        for a in args:
            if a.schema is None:
                assert a.param is None, (job, a.name)
                continue
            validator_for(a.schema).check_schema(a.schema)
            default = None if a.default is jobargs.NULL else a.default  # an optional param: null
            assert jobargs.check(a.schema, default) is None, (job, a.name, default)
            assert a.type(str(default)) == (None if a.name == "image_shape" else default), (job, a.name)
    assert jobargs.check(jobargs.NOT_NAN, float("nan")) is None
    assert all(jobargs.check(jobargs.NOT_NAN, x) for x in (0, 0.5, 1, -1e308, float("inf")))


def test_version_with_traversal_is_rejected_by_the_job_parser():
    with pytest.raises(SystemExit):
        jobargs.parse("convert", ["--data-root", "/x", "--version", "../../etc"])


def test_unknown_argument_names_are_a_programming_error():
    with pytest.raises(KeyError):
        jobargs.to_argv("infer", {"epochs": 3})


def test_parameter_server_topologies_that_cannot_run_are_refused():
    from tfospipe import trainplan
    from tfospipe.runner import JobError
    trainplan.check_topology(3, 1, "tensorflow")
    trainplan.check_topology(2, 0, "spark")
    with pytest.raises(JobError, match=r"cluster_size >= num_ps \+ 2 = 3"):
        trainplan.check_topology(2, 1, "tensorflow")
    with pytest.raises(JobError, match="needs input_mode=tensorflow"):
        trainplan.check_topology(4, 1, "spark")
    trainplan.check_topology(2, 0, "tensorflow", "fp16")
    with pytest.raises(JobError, match="applies to all-reduce training"):
        trainplan.check_topology(3, 1, "tensorflow", "fp16")


def test_spark_mode_feeds_every_row_once_in_blocks():
    from tfospipe import train
    rows = [bytes([i % 256]) * 3 for i in range(train.FEED_BLOCK_ROWS * 2 + 5)]
    blocks = list(train.feed_blocks(iter(rows)))
    assert [len(b) for b in blocks] == [train.FEED_BLOCK_ROWS, train.FEED_BLOCK_ROWS, 5]
    assert [r for b in blocks for r in b] == rows
    assert list(train.feed_blocks(iter([]))) == []


def test_executors_preload_tcmalloc_where_installed_unless_turned_off(monkeypatch, tmp_path):
    import os

    from tfospipe import launch
    monkeypatch.delenv("TFOS_EXECUTOR_MALLOC", raising=False)
    installed = next((p for p in launch.TCMALLOC_PATHS if os.path.exists(p)), None)
    assert launch.spark_conf("2").get("spark.executorEnv.LD_PRELOAD") == installed
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    monkeypatch.setenv("TFOS_EXECUTOR_MALLOC", str(lib))
    assert launch.spark_conf("2")["spark.executorEnv.LD_PRELOAD"] == str(lib)
    monkeypatch.setenv("TFOS_EXECUTOR_MALLOC", "")
    assert "spark.executorEnv.LD_PRELOAD" not in launch.spark_conf("2")
