"""Train a promoted model again from its training manifest and compare the result with it.

    python scripts/reproduce.py MODEL_VERSION [--root ROOT] [--master URL] [--keep]
    make reproduce MODEL=MODEL_VERSION

1. reads the model's training manifest (``models/<version>/<run>/_manifest.json``, the run its serving
   manifest names);
2. checks that the dataset version is unchanged: every input file's sha256 as the conversion recorded
   it, the conversion manifest and the shards as the run read them;
3. retrains with the run's params (seed, input mode, cluster size, epochs...) by spark-submitting the
   train job as the DAG does, into a scratch run ``models/<version>/reproduce-<time>-<run>/`` (never
   serving; the data checks off, so the version's check record is left alone);
4. compares the new SavedModel with the promoted one: digests, and every variable bit for bit; prints
   ``identical``, or the largest absolute difference per variable.

The scratch run is removed when the models are identical (kept with ``--keep``), kept otherwise.
``--root`` defaults to $AIRFLOW_VAR_TFOS_DATA_ROOT, else ``data``; ``--master`` to the host of
$AIRFLOW_CONN_SPARK_DEFAULT, else ``local-cluster[<cluster_size>,1,2048]``. Exit status: 0 identical,
1 the retrained model differs, 2 with one ``ERROR [reproduce] ...`` line when it cannot be retrained (an
unknown model version, a missing manifest, a changed dataset, a failed training).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import fs, launch, paths, reproduce  # noqa: E402
from tfospipe.runner import git_revision, library_versions  # noqa: E402


def default_master(cluster_size: int) -> str:
    """The Spark master: the Airflow connection ``spark_default`` as scripts/env.sh exports it, else a
    local cluster of ``cluster_size`` one-core executors."""
    conn = os.environ.get("AIRFLOW_CONN_SPARK_DEFAULT")
    if conn:
        try:
            host = json.loads(conn).get("host")
        except ValueError:
            host = None
        if host:
            return host
    return f"local-cluster[{cluster_size},1,2048]"


def retrain(job_args: dict, master: str, cluster_size: int, build_dir: str) -> str:
    """spark-submit the train job with ``job_args``; returns its output. Raises ReproduceError with the
    job's ERROR line (or its output's tail) when it fails."""
    argv = launch.spark_submit_argv("train", job_args, master, cluster_size, build_dir)
    path = os.pathsep.join([os.path.dirname(launch.PYTHON), os.environ.get("PATH", "")])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PATH": path, **launch.TF_ENV})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(("[train progress]", "training in ", "RESULT [", "ERROR [")):
            print(f"  {line.rstrip()}", flush=True)
    if proc.wait() != 0:
        errors = [x.strip() for x in lines if x.startswith("ERROR [")]
        raise reproduce.ReproduceError(f"the retraining failed: {errors[-1] if errors else ''.join(lines[-20:])}")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_version", help="a promoted model version (scripts/serving.py list)")
    p.add_argument("--root", default=os.environ.get("AIRFLOW_VAR_TFOS_DATA_ROOT", "data"), help="data root")
    p.add_argument("--master", default=None, help="Spark master (default: see above)")
    p.add_argument("--keep", action="store_true", help="keep the scratch run even when the models are identical")
    args = p.parse_args(argv)
    try:
        return _reproduce(args)
    except (reproduce.ReproduceError, fs.StorageError, OSError, ValueError) as e:
        print(f"ERROR [reproduce] {' '.join(str(e).split())}", flush=True)
        return 2


def _reproduce(args: argparse.Namespace) -> int:
    root = paths.normalize_root(fs.check_root(args.root))
    fs.check_access(root, must_exist=True)
    layout = paths.Layout(root)
    original = reproduce.find_run(layout, args.model_version)
    manifest = original.manifest
    print(f"reproduce: {original.model_version}: dataset version {manifest['dataset_version']}, run "
          f"{manifest['run_id']} ({original.run_dir})", flush=True)
    for line in reproduce.check_dataset(layout, manifest):
        print(f"  checked: {line}", flush=True)
    for note in reproduce.differences(manifest, library_versions(), git_revision()):
        print(f"  WARNING: {note}", flush=True)
    run_id = reproduce.scratch_run_id(manifest["run_id"])
    job_args = reproduce.retrain_args(manifest, root, run_id)
    cluster_size = int(job_args.get("cluster_size", 2))
    master = args.master or default_master(cluster_size)
    print(f"retraining as run {run_id} on {master}: input_mode {job_args.get('input_mode')}, cluster_size "
          f"{cluster_size}, num_ps {job_args.get('num_ps', 0)}, seed {job_args.get('seed', 'unrecorded')}, "
          f"deterministic {job_args.get('deterministic', 'unrecorded')}, epochs {job_args.get('epochs')}", flush=True)
    build = os.path.join(tempfile.gettempdir(), "tfos-reproduce-build")
    retrain(job_args, master, cluster_size, build)
    scratch = layout.model_run(manifest["dataset_version"], paths.run_slug(run_id))
    comparison = reproduce.compare_models(original.model_dir, paths.join(scratch, paths.MODEL_DIR))
    if original.digest and original.digest != comparison.digest_a:
        print(f"  WARNING: the promoted model's files have digest {comparison.digest_a}, its serving manifest "
              f"recorded {original.digest}", flush=True)
    for line in reproduce.describe(comparison):
        print(line, flush=True)
    if comparison.identical and not args.keep:
        fs.rmtree(scratch)
        print(f"(scratch run {scratch} removed)", flush=True)
    else:
        print(f"(scratch run kept: {scratch})", flush=True)
    return 0 if comparison.identical else 1


if __name__ == "__main__":
    sys.exit(main())
