"""scripts/reproduce.py on the session's served model: retrained from its training manifest (same params,
seed, cluster size, input mode tensorflow), the new model is the same bit for bit and has the same digest."""
import json
import os
import subprocess
import sys

from conftest import PROJECT_DIR, SERVED_VERSION as VERSION, TEST_MASTER
from tfospipe import jobargs, paths, serving


def test_training_again_from_the_manifest_gives_the_same_model(served_version, tmp_path):
    root = served_version.copy(tmp_path / "root")  # the scratch run is written under models/
    layout = paths.Layout(str(root))
    mv = serving.current(layout)["model_version"]
    info = serving.model_info(layout, mv)
    with open(os.path.join(layout.model_run(VERSION, info["run_id"]), "_manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["params"]["seed"] == jobargs.DEFAULT_SEED and manifest["params"]["deterministic"] == "on"
    assert manifest["params"]["input_mode"] == "tensorflow" and set(manifest["dataset"]) == {"manifest_sha256",
                                                                                            "shard_bytes"}
    before = sorted(os.listdir(layout.model_runs(VERSION)))

    proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "reproduce.py"), mv,
                           "--root", str(root), "--master", TEST_MASTER],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-6000:]
    digest = next(line for line in lines if line.startswith("digest: "))
    assert digest == f"digest: original {info['digest']}, retrained {info['digest']}: the same", proc.stdout[-4000:]
    assert "identical" in lines and not any(line.startswith("ERROR") for line in lines)
    # digits.csv and score/old-mac.csv.bz2 against the conversion's sha256, the shards against the run's sizes
    assert any("checked: 2 input files" in line for line in lines), proc.stdout[-4000:]
    assert any("shard sizes as the run read them" in line for line in lines), proc.stdout[-4000:]
    assert sorted(os.listdir(layout.model_runs(VERSION))) == before  # the scratch run removed
    assert serving.current(layout)["model_version"] == mv  # serving untouched
