"""Train and validate run again under the same run id (a cleared task, a backfill that reprocesses
completed runs): the model that served stays byte for byte, the retrained one is promoted under a new
model version, and a rollback, run as a user runs it, brings the first one back for inference."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import SERVED_RUN as RUN, SERVED_TRAIN, SERVED_VERSION as VERSION, run_job
from tfospipe import jobargs, launch, paths, serving

pytestmark = pytest.mark.spark
PROJECT_DIR = os.path.dirname(launch.JOBS_DIR)


def file_hashes(d):
    """sha256 of every file under d, by relative path."""
    out = {}
    for path in glob.glob(os.path.join(d, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, d)] = hashlib.sha256(f.read()).hexdigest()
    return out


def serving_cli(root, *argv):
    """scripts/serving.py as a user runs it."""
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root", str(root),
                           *argv], capture_output=True, text=True, timeout=120)


def test_a_rerun_under_the_same_run_id_never_overwrites_the_serving_model(served_version, tmp_path, build_dir):
    # the session's version, converted, trained under RUN, validated and promoted (nothing served before): m1
    root = served_version.copy(tmp_path / "root")
    layout = paths.Layout(str(root))
    train = dict(SERVED_TRAIN, data_root=str(root), version=VERSION, run_id=RUN)
    gate = {"data_root": str(root), "version": VERSION, "run_id": RUN, "min_accuracy": 0.0, "max_regression": 1.0}
    m1 = serving.current(layout)["model_version"]
    m1_dir = layout.serving_model(m1)
    m1_files = file_hashes(m1_dir)
    assert "saved_model.pb" in m1_files and any(p.startswith("variables/variables.data") for p in m1_files)
    assert m1.startswith(f"{VERSION}__{RUN}__") and serving.current(layout)["previous"] is None

    # the same run id: models/<version>/<run>/ is replaced; another seed, as the same one would give the same
    # model bit for bit (tests/spark/test_reproduce.py)
    run = run_job("train", dict(train, seed=jobargs.DEFAULT_SEED + 1), build_dir)
    assert run.returncode == 0, run.explain(6000)
    exported = layout.exported_model(VERSION, paths.run_slug(RUN))
    assert file_hashes(exported)["variables/variables.data-00000-of-00001"] != \
        m1_files["variables/variables.data-00000-of-00001"]
    run = run_job("validate", gate, build_dir)
    assert run.returncode == 0, run.explain(6000)
    m2 = run.result()["promoted"]

    assert m2 != m1 and m1.startswith(f"{VERSION}__{RUN}__") and m2.startswith(f"{VERSION}__{RUN}__")
    assert file_hashes(m1_dir) == m1_files                      # the model that served is untouched
    assert serving.model_digest(m1_dir) == serving.model_info(layout, m1)["digest"]
    with open(layout.serving_pointer()) as f:
        pointer = json.load(f)
    assert pointer["model_version"] == m2 and pointer["previous"] == m1 != pointer["model_version"]
    assert file_hashes(layout.serving_model(m2)) != m1_files

    listed = serving_cli(root, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert f"* {m2}" in [line.split("  ")[0] for line in lines]
    assert f"  {m1}" in [line[:len(m1) + 2] for line in lines]

    rolled = serving_cli(root, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert f"serving {m1} (was {m2}" in rolled.stdout
    with open(layout.serving_pointer()) as f:
        assert json.load(f)["model_version"] == m1
    assert file_hashes(m1_dir) == m1_files

    run = run_job("infer", {"data_root": str(root), "version": VERSION}, build_dir)  # scores with the pointer's model
    assert run.returncode == 0, run.explain(6000)
    table = pq.read_table(layout.predictions(VERSION)).to_pandas()
    assert set(table["model_version"]) == {m1} and run.result()["model_version"] == m1
