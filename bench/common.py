"""Shared by the benchmarks: the machine facts each prints, MNIST-size sample rows and running a job
exactly as the DAG does."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np


#: CPU flags (``/proc/cpuinfo`` spelling) of the vector extensions TensorFlow's kernels use: the pip
#: wheel is compiled for AVX/AVX2/FMA and oneDNN picks AVX-512 (VNNI, BF16) or AMX at run time.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16")
#: Thread settings of TensorFlow, OpenMP and the BLAS libraries, printed when set.
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo``; ("unknown", []) where there is
    none (not Linux)."""
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    return model, flags


def machine_facts() -> dict[str, object]:
    """What the figures of a benchmark depend on, read here, on the machine that runs it.

    ``cpu``: model name (``/proc/cpuinfo``); ``cores``: logical CPUs this process may use
    (``os.sched_getaffinity``); ``vector``: the :data:`VECTOR_FLAGS` the CPU has (``/proc/cpuinfo``
    flags); ``malloc``: the allocator the executors get (launch.executor_malloc: a TCMalloc path, or
    None for glibc's); ``threads``: launch.TF_ENV's thread settings, then :data:`THREAD_VARS` set in
    this environment (the environment wins, as in the executors).
    """
    from tfospipe import launch

    model, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {**launch.TF_ENV, **os.environ}
    return {"cpu": model, "cores": cores, "vector": [f for f in VECTOR_FLAGS if f in flags],
            "malloc": launch.executor_malloc(),
            "threads": {k: env[k] for k in THREAD_VARS if k in env}}


def facts_line(facts: dict[str, object] | None = None) -> str:
    """:func:`machine_facts` as one line, e.g. ``CPU: AMD EPYC, 2 cores, vector avx2 fma avx512f ...
    (/proc/cpuinfo) | executors' malloc: /usr/lib/.../libtcmalloc_minimal.so.4 | threads: ...``."""
    f = facts or machine_facts()
    threads = " ".join(f"{k}={v}" for k, v in f["threads"].items()) or "defaults"
    return (f"CPU: {f['cpu']}, {f['cores']} cores, vector {' '.join(f['vector']) or 'none of avx2/avx512/amx'} "
            f"(/proc/cpuinfo flags) | executors' malloc: {f['malloc'] or 'glibc'} (launch.executor_malloc) | "
            f"threads: {threads} (launch.TF_ENV + environment)")


def print_facts() -> str:
    """Print :func:`facts_line` (flushed) and return it, for the top of a benchmark and beside its figures."""
    line = facts_line()
    print(line, flush=True)
    return line


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
    # the venv's bin first on PATH, as scripts/env.sh sets it: spark-submit finds SPARK_HOME through `python`
    path = os.pathsep.join([os.path.dirname(launch.PYTHON), os.environ.get("PATH", "")])
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PATH": path, **launch.TF_ENV, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{job} failed:\n{proc.stdout[-4000:]}")
    return proc.stdout
