"""tfospipe.reproduce without Spark: comparing two SavedModels variable by variable, finding a promoted
model's training run, checking its dataset version, and the rerun's flags."""
import hashlib
import json
import os

import numpy as np
import pytest

from tfospipe import jobargs, paths, reproduce


def save_module(path, a, b):
    """A SavedModel of a tf.Module holding variables ``a`` and ``b`` (and a serving function)."""
    import tensorflow as tf

    module = tf.Module()
    module.a = tf.Variable(np.asarray(a, np.float32))
    module.b = tf.Variable(np.asarray(b, np.float32))
    module.f = tf.function(lambda x: x * module.a[0] + module.b[0],
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.f})
    return str(path)


def test_identical_models_compare_identical(tmp_path):
    a = save_module(tmp_path / "a", [1.0, 2.0], [[0.5, 0.25]])
    b = save_module(tmp_path / "b", [1.0, 2.0], [[0.5, 0.25]])
    c = reproduce.compare_models(a, b)
    # saved twice in one process: the functions' names differ (saved_model.pb), the weights do not
    assert c.identical and set(c.diffs) == {"a", "b"} and all(d == 0.0 for d in c.diffs.values())
    assert reproduce.describe(c)[-1] == "identical"


def test_the_digest_leaves_out_the_fingerprints_random_uuid(tmp_path):
    import shutil

    from tfospipe import serving

    a = save_module(tmp_path / "a", [1.0, 2.0], [[0.5, 0.25]])
    b = shutil.copytree(a, tmp_path / "b")
    fingerprint = b / serving.FINGERPRINT
    assert fingerprint.exists()
    fingerprint.write_bytes(fingerprint.read_bytes()[:-4] + b"0000")  # another uuid's last digits
    c = reproduce.compare_models(a, str(b))
    assert c.identical and c.same_digest and reproduce.describe(c)[0].endswith("the same")
    (b / "variables" / "extra").write_bytes(b"x")
    assert serving.model_digest(a) != serving.model_digest(str(b))


def test_one_variable_that_differs_gets_its_largest_absolute_difference(tmp_path):
    a = save_module(tmp_path / "a", [1.0, 2.0], [[0.5, 0.25], [3.0, -1.0]])
    b = save_module(tmp_path / "b", [1.0, 2.0], [[0.5, 0.75], [3.0, -1.125]])
    c = reproduce.compare_models(a, b)
    assert not c.identical and not c.same_digest
    assert c.diffs == {"a": 0.0, "b": 0.5}
    lines = reproduce.describe(c)
    assert lines[0].startswith("digest: original ") and lines[0].endswith("different")
    assert "identical" not in lines[1] and "1 of 2 variables differ" in lines[1]
    assert [line.split() for line in lines[2:]] == [["a", "identical"], ["b", "0.5"]]


def test_variable_difference_bits_shapes_and_nan():
    x = np.array([0.0, 1.0], np.float32)
    assert reproduce.variable_difference(x, x.copy()) == 0.0
    assert reproduce.variable_difference(x, np.array([0.0, 1.5], np.float32)) == 0.5
    assert reproduce.variable_difference(x, np.zeros(3, np.float32)) is None
    assert reproduce.variable_difference(x, x.astype(np.float64)) is None


def test_signed_zeros_are_equal_values_but_not_identical():
    c = reproduce.Comparison("d" * 64, "e" * 64, {"a": 0.0, "b": 0.0}, frozenset({"a"}))
    assert not c.identical
    assert reproduce.describe(c)[-1].split(None, 2) == ["b", "0", "(equal values, other bits: signed zeros or NaNs)"]


# --- the training run of a promoted model, and its data -------------------------------------------------------

VERSION, RUN, MV = "2026-11-03", "manual__x", "2026-11-03__manual__x__0123456789ab"


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def promoted_root(tmp_path, with_run=True):
    """A root with one input file, its conversion (manifest and one shard), a training run's manifest and
    the promoted model's serving manifest."""
    root = str(tmp_path / "root")
    layout = paths.Layout(root)
    raw = os.path.join(layout.raw(VERSION), "digits.csv")
    os.makedirs(os.path.dirname(raw))
    with open(raw, "w") as f:
        f.write("label,p0\n1,2\n")
    sha = hashlib.sha256(open(raw, "rb").read()).hexdigest()
    write_json(os.path.join(layout.tfrecords(VERSION), "_manifest.json"),
               {"inputs": [{"file": "digits.csv", "bytes": 14, "sha256": sha}]})
    open(os.path.join(layout.tfrecords(VERSION), "_SUCCESS"), "w").close()
    os.makedirs(layout.split(VERSION, "train"))
    with open(os.path.join(layout.split(VERSION, "train"), "part-00000.tfrecord"), "wb") as f:
        f.write(b"x" * 10)
    conversion_sha = hashlib.sha256(open(os.path.join(layout.tfrecords(VERSION), "_manifest.json"), "rb")
                                    .read()).hexdigest()
    if with_run:
        write_json(os.path.join(layout.model_run(VERSION, RUN), "_manifest.json"), {
            "dataset_version": VERSION, "run_id": RUN,
            "params": {"data_root": root, "version": VERSION, "run_id": RUN, "seed": 7, "deterministic": "on",
                       "input_mode": "tensorflow", "cluster_size": 2, "min_class_fraction": None,
                       "data_checks": "fail", "retired_param": 1},
            "dataset": {"manifest_sha256": conversion_sha, "shard_bytes": {"train/part-00000.tfrecord": 10}}})
        open(os.path.join(layout.model_run(VERSION, RUN), "_SUCCESS"), "w").close()
    write_json(os.path.join(layout.serving_model(MV), "_manifest.json"),
               {"dataset_version": VERSION, "run_id": RUN, "digest": "0" * 64})
    open(os.path.join(layout.serving_model(MV), "_SUCCESS"), "w").close()
    return layout, raw


def test_find_run_and_an_unchanged_dataset(tmp_path):
    layout, _raw = promoted_root(tmp_path)
    original = reproduce.find_run(layout, MV)
    assert original.run_dir == layout.model_run(VERSION, RUN) and original.digest == "0" * 64
    checked = reproduce.check_dataset(layout, original.manifest)
    assert "1 input files" in checked[0] and "1 shard sizes" in checked[1]


def test_unknown_model_version_and_missing_manifest(tmp_path):
    layout, _raw = promoted_root(tmp_path, with_run=False)
    with pytest.raises(reproduce.ReproduceError, match=f"unknown model version 'nope'.*promoted: {MV}"):
        reproduce.find_run(layout, "nope")
    with pytest.raises(reproduce.ReproduceError, match="no training manifest"):
        reproduce.find_run(layout, MV)


def test_a_changed_input_file_is_named(tmp_path):
    layout, raw = promoted_root(tmp_path)
    with open(raw, "a") as f:
        f.write("2,3\n")
    with pytest.raises(reproduce.ReproduceError, match=f"input file {raw} has sha256"):
        reproduce.check_dataset(layout, reproduce.find_run(layout, MV).manifest)


def test_a_changed_shard_is_named(tmp_path):
    layout, _raw = promoted_root(tmp_path)
    shard = os.path.join(layout.split(VERSION, "train"), "part-00000.tfrecord")
    with open(shard, "ab") as f:
        f.write(b"y")
    with pytest.raises(reproduce.ReproduceError, match=f"shard {shard} has 11 bytes, the run read 10"):
        reproduce.check_dataset(layout, reproduce.find_run(layout, MV).manifest)


def test_retrain_args_are_the_runs_params_into_a_scratch_run(tmp_path):
    layout, _raw = promoted_root(tmp_path)
    manifest = reproduce.find_run(layout, MV).manifest
    run_id = reproduce.scratch_run_id(RUN)
    assert run_id.startswith("reproduce-") and run_id.endswith(RUN)
    args = reproduce.retrain_args(manifest, "/other/root", run_id)
    assert args == {"data_root": "/other/root", "version": VERSION, "run_id": run_id, "seed": 7,
                    "deterministic": "on", "input_mode": "tensorflow", "cluster_size": 2, "data_checks": "off",
                    "mlflow_required": "false"}
    jobargs.parse("train", jobargs.to_argv("train", args))  # flags the train job takes


def test_differences_name_versions_revision_and_a_missing_seed():
    manifest = {"versions": {"tensorflow": "2.20.0", "python": "3.12.0"}, "git_revision": "abc", "params": {}}
    notes = reproduce.differences(manifest, {"tensorflow": "2.21.0", "python": "3.12.0"}, "def")
    assert notes[0] == "tensorflow 2.21.0 here, the run had 2.20.0"
    assert "git revision def here, the run had abc" in notes and "no seed" in notes[-1]


# --- the command's errors: one line, exit status 2, before any Spark application ------------------------------

def run_script(*argv):
    import subprocess
    import sys

    from conftest import PROJECT_DIR

    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "reproduce.py"), *argv],
                          capture_output=True, text=True, timeout=120)


def one_error(proc):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR [reproduce] ")]
    assert len(errors) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return errors[0]


def test_the_command_refuses_an_unknown_model_a_missing_manifest_and_changed_data(tmp_path):
    layout, raw = promoted_root(tmp_path)
    assert f"unknown model version 'nope'" in one_error(run_script("nope", "--root", layout.root))
    with open(raw, "a") as f:
        f.write("2,3\n")
    assert f"input file {raw} has sha256" in one_error(run_script(MV, "--root", layout.root))
    os.remove(os.path.join(layout.model_run(VERSION, RUN), "_manifest.json"))
    assert "no training manifest" in one_error(run_script(MV, "--root", layout.root))


def test_differences_name_a_resumed_run_and_the_modes_that_are_not_reproducible():
    resumed = {"params": {"seed": 1, "epochs": 2, "num_ps": 0, "input_mode": "tensorflow"}, "steps_per_epoch": 10,
               "steps_run": 10}
    assert "resumed from its backup" in reproduce.differences(resumed, {}, "r")[0]
    assert reproduce.differences(dict(resumed, steps_run=20), {}, "r") == []
    ps = {"params": {"seed": 1, "num_ps": 1, "input_mode": "tensorflow"}}
    assert "asynchronous" in reproduce.differences(ps, {}, "r")[0]
    spark = {"params": {"seed": 1, "num_ps": 0, "input_mode": "spark"}}
    assert "which node is fed which partition" in reproduce.differences(spark, {}, "r")[0]


def test_each_node_seeds_from_the_run_seed_and_its_index_before_op_determinism():
    import dataclasses
    from types import SimpleNamespace

    from tfospipe import node

    calls = []
    fake_tf = SimpleNamespace(
        keras=SimpleNamespace(utils=SimpleNamespace(set_random_seed=lambda s: calls.append(("seed", s)))),
        config=SimpleNamespace(experimental=SimpleNamespace(enable_op_determinism=lambda: calls.append("determinism"))))
    params = jobargs.TrainParams(data_root="/r", version="v", run_id="r", seed=5)
    assert params.deterministic == "on" and jobargs.TrainParams(data_root="/r", version="v", run_id="r").seed == \
        jobargs.DEFAULT_SEED
    node.make_reproducible(fake_tf, params, 1)
    node.make_reproducible(fake_tf, dataclasses.replace(params, deterministic="off"), 0)
    assert calls == [("seed", 6), "determinism", ("seed", 5)]
