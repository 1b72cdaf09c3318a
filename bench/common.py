"""Shared by the benchmarks: MNIST-size sample rows and running a job exactly as the DAG does."""

import os
import subprocess
import tempfile

import numpy as np


def mnist_like(n, seed=0):
    """(labels, pixels uint8 [n, 784]): scikit-learn's digits upscaled to 28x28 with noise, 0-255."""
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(d.target), n)
    images = np.pad(np.kron(d.images[pick], np.ones((3, 3))), ((0, 0), (2, 2), (2, 2))) * 16
    images = np.clip(images + rng.integers(0, 24, images.shape), 0, 255).astype(np.uint8)
    return d.target[pick], images.reshape(n, 784)


def write_mnist_csv(path, n, seed=0, labeled=True):
    """A CSV in the MNIST layout (header, label, 784 pixels; without the label when not ``labeled``,
    as the unlabeled ``score/`` inputs are); returns its path."""
    labels, pixels = mnist_like(n, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = np.column_stack([labels, pixels]) if labeled else pixels
    header = ("label," if labeled else "") + ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(path, table, fmt="%d", delimiter=",", header=header, comments="")
    return path


def run_job(job, job_args, master, cluster_size=2, env=None):
    """spark-submit a pipeline job with the DAG's conf; raise with the log tail on failure.

    ``env`` overrides entries of the driver's and executors' environment (launch.TF_ENV)."""
    from tfospipe import launch
    build = os.path.join(tempfile.gettempdir(), "tfos-bench-build")
    argv = launch.spark_submit_argv(job, job_args, master, cluster_size, build)
    app = next(i for i, a in enumerate(argv) if a.endswith(f"jobs/{job}.py"))
    for key, value in (env or {}).items():  # a later --conf of the same key wins
        argv[app:app] = ["--conf", f"spark.executorEnv.{key}={value}"]
        app += 2
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **launch.TF_ENV, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{job} failed:\n{proc.stdout[-4000:]}")
    return proc.stdout
