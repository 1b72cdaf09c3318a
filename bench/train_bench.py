"""Training benchmark: the seed CNN on MNIST-size rows, one process vs TensorFlowOnSpark, side by side.

(a) single   one plain tf.keras process on one core (TF intra/inter-op threads = 1)
(b) tfos-tf  the train job, 2 workers x 1 core, InputMode.TENSORFLOW
(c) tfos-sp  the train job, 2 workers x 1 core, InputMode.SPARK

All three train the same model on the same data for the same number of examples at batch 64 per
worker, with the same Keras steps_per_execution and the same memory allocator (the executors' one,
launch.executor_malloc; --env LD_PRELOAD= compares glibc's). Steady-state examples/s exclude
start-up and the first steps (tracing); scaling efficiency = (b or c) / (2 x (a)).

Then the figure explains itself, per step of one worker (all measured here, on this CPU):
  compute       one step on one core: batch / (a)'s examples/s
  all-reduce    the seed CNN's gradients (float32, or float16 with --gradient-compression fp16)
                all-reduced by MultiWorkerMirroredStrategy between 2 plain TensorFlow processes on
                loopback (no Spark), with the executors' threads and allocator: wall and CPU seconds
                per call (the process's CPU: the ring's copies and sums, gRPC)
  metrics       the rest of what the strategy adds to a Keras step apart from compute and the
                gradients' size: a model with no hidden layer (7,850 weights) trained by Keras under
                the strategy minus the same model trained without it, minus its own (small)
                gradient all-reduce: the loss and accuracy collectives and the step's coordination
  ceiling       compute alone / (compute side by side + all-reduce CPU + metrics), where "side by
                side" is (a) run twice at once (both cores computing, as the 2 workers do): with both
                cores computing, the all-reduce's CPU cannot hide behind the other worker's compute
  efficiency    (b) / (2 x (a)) as a fraction of that ceiling (goal >= 0.9 in tensorflow mode)

``--deterministic both`` runs (b) (and (c), per ``--modes``) with the train job's ``--deterministic off`` and
``on`` (op determinism and the forced ring all-reduce), alternating ``--repeat`` times, and prints each
run's steady examples/s, the medians and their ratio (the issue's rule: on by default when it costs at
most 10%); ``--job-only`` skips (a) and the per-step measurements.
Run:  .venv/bin/python bench/train_bench.py [--rows 12000] [--deterministic both [--repeat 2] [--job-only]]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from tfospipe import tfenv  # noqa: E402

tfenv.prepare_tensorflow(quiet=True)  # before anything imports TensorFlow

VERSION = "bench"


def single_process(root, steps, batch_size, deterministic="off"):
    """(a), run in a child process whose TensorFlow has one thread: prints steady examples/s and CPU
    seconds per steady step as JSON. ``deterministic`` "on": seeded and under op determinism, as the train
    job's nodes run with ``--deterministic on`` (node.make_reproducible)."""
    import tensorflow as tf

    if deterministic == "on":
        tf.keras.utils.set_random_seed(1)
        tf.config.experimental.enable_op_determinism()

    from tfospipe import dataset, model, node, paths, schema

    layout = paths.Layout(root)
    manifest = dataset.read_manifest(layout, VERSION)
    shape = dataset.image_shape(manifest)
    files = dataset.shard_files(layout, VERSION, "train")
    ds = (tf.data.TFRecordDataset(files).cache().shuffle(8192).repeat().batch(batch_size, drop_remainder=True)
          .map(lambda s: schema.parse_batch(s, shape)[:2]).prefetch(tf.data.AUTOTUNE))
    cnn = model.build_model(shape, manifest["pixel_max_observed"], steps_per_execution=node.PROGRESS_EVERY_STEPS)
    marks = []  # (steps run, time) after each execution of steps_per_execution steps

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append((batch + 1, time.time(), time.process_time()))

    t0 = time.time()
    cnn.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    (first_steps, first, first_cpu), (last_steps, last, last_cpu) = marks[0], marks[-1]  # first: tracing, warm-up
    steady = (last_steps - first_steps) * batch_size / (last - first)
    print(json.dumps({"examples_per_second": steady, "seconds": time.time() - t0,
                      "cpu_per_step": (last_cpu - first_cpu) / (last_steps - first_steps)}))


def collective_worker(index, ports, compression, batch_size, iterations=30):
    """One of the 2 processes of the all-reduce measurement (TF_CONFIG on loopback ``ports``): prints
    per-call seconds (wall, CPU) of the gradient all-reduce and per-step seconds of the small model
    with and without the strategy, as JSON."""
    import numpy as np
    import tensorflow as tf

    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": index}})
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from tfospipe import model, node, schema

    def timed(fn, n):
        fn()
        fn()  # traced and warm
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    def all_reduce_of(variables):
        dtype = tf.float16 if compression == "fp16" else tf.float32
        grads = [tf.ones(v.shape, dtype) for v in variables]

        @tf.function
        def reduce():
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, grads))
        return lambda: [t.numpy() for t in tf.nest.flatten(reduce())][:1]

    def small_model():
        small = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Flatten(),
                                     tf.keras.layers.Dense(schema.NUM_CLASSES, activation="softmax")])
        small.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"], steps_per_execution=node.PROGRESS_EVERY_STEPS)
        return small

    def step_seconds(keras_model, steps=200):
        rng = np.random.default_rng(index)
        ds = tf.data.Dataset.from_tensors((rng.random((batch_size, 28, 28, 1), np.float32),
                                           rng.integers(0, 10, batch_size))).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
        keras_model.fit(ds, steps_per_epoch=20, epochs=1, verbose=0)  # traced and warm
        t = time.perf_counter()
        keras_model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        return (time.perf_counter() - t) / steps

    with strategy.scope():
        cnn = model.build_model((28, 28), 255, steps_per_execution=node.PROGRESS_EVERY_STEPS,
                                gradient_compression=compression)
        small = small_model()
    small.distribute_reduction_method = "first"  # as the train job's nodes run (node._train)
    grads_wall, grads_cpu = timed(all_reduce_of(cnn.trainable_variables), iterations)
    small_grads_wall, _ = timed(all_reduce_of(small.trainable_variables), iterations * 5)
    small_step = step_seconds(small)
    local_step = step_seconds(small_model())
    print(json.dumps({"allreduce_wall": grads_wall, "allreduce_cpu": grads_cpu, "small_step": small_step,
                      "small_local_step": local_step, "small_allreduce": small_grads_wall,
                      "values": int(sum(np.prod(v.shape) for v in cnn.trainable_variables))}))


def collectives(env, compression, batch_size):
    """Run :func:`collective_worker` in 2 processes on loopback; the per-worker figures, averaged."""
    import socket

    socks = [socket.socket() for _ in range(2)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [str(sock.getsockname()[1]) for sock in socks]
    for sock in socks:
        sock.close()
    procs = [subprocess.Popen([sys.executable, __file__, "--collective-worker", str(i), *ports,
                               "--gradient-compression", compression, "--batch-size", str(batch_size)],
                              env=env, stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("the all-reduce measurement failed")
    return {k: sum(o[k] for o in outs) / len(outs) for k in outs[0]}


def train_runs(root, layout, args, overrides, settings):
    """(b) and (c), per ``args.modes``, once per entry of ``settings`` (the train job's --deterministic),
    modes inner: each run's mode, setting, steady examples/s, seconds and allocator."""
    import common
    from tfospipe import fs

    runs = []
    for i, setting in enumerate(settings):
        for mode in args.modes.split(","):
            run_id = f"{mode}-{setting}-{i}"
            t = time.time()
            common.run_job("train", {"data_root": root, "version": VERSION, "run_id": run_id, "input_mode": mode,
                                     "epochs": 1, "batch_size": args.batch_size, "deterministic": setting,
                                     "gradient_compression": args.gradient_compression}, args.master, env=overrides)
            m = json.load(open(os.path.join(layout.model_run(VERSION, run_id), fs.MANIFEST)))
            runs.append({"mode": mode, "deterministic": setting, "rate": m["steady_examples_per_second"],
                         "train": m["train_seconds"], "wall": time.time() - t, "steps": m["steps_run"],
                         "malloc": m["workers"][0]["malloc"]})
            print(f"  train {mode} deterministic {setting}: {runs[-1]['rate']:.0f} examples/s steady, "
                  f"{m['train_seconds']:.1f} s in the TFoS cluster", flush=True)
    return runs


def print_single_cost(singles, batch_size, steps):
    """The side-by-side of ``--single-only``: (a)'s CPU ms per step and examples/s, off and on, medians, ratio."""
    import statistics as st

    cpu = {s: [x["cpu_per_step"] * 1000 for x in singles if x["deterministic"] == s] for s in ("off", "on")}
    rate = {s: [x["examples_per_second"] for x in singles if x["deterministic"] == s] for s in ("off", "on")}
    print(f"(a) one tf.keras process, 1 core, {steps} steps x {batch_size}")
    for s in ("off", "on"):
        print(f"  op determinism {s:3}: {st.median(cpu[s]):6.1f} ms CPU a step (median of "
              f"{', '.join(f'{x:.1f}' for x in cpu[s])}), {st.median(rate[s]):5.0f} examples/s wall (median of "
              f"{', '.join(f'{x:.0f}' for x in rate[s])})")
    ratio = st.median(cpu["off"]) / st.median(cpu["on"])
    print(f"  op determinism on / off: {ratio:.3f}x throughput per CPU second ({(1 - ratio) * 100:+.1f}% cost; "
          "on by default when <= 10%)")


def print_determinism_cost(runs):
    """The side-by-side of ``--deterministic both``: per input mode, each run's steady examples/s with the
    setting off and on, the medians and their ratio (the issue's rule: on by default at a cost <= 10%)."""
    import statistics as st

    for mode in dict.fromkeys(r["mode"] for r in runs):
        rates = {s: [r["rate"] for r in runs if r["mode"] == mode and r["deterministic"] == s] for s in ("off", "on")}
        for s in ("off", "on"):
            if rates[s]:
                print(f"  {mode} mode, deterministic {s:3}: {st.median(rates[s]):7.0f} examples/s steady (median of "
                      f"{', '.join(f'{x:.0f}' for x in rates[s])})")
        if rates["off"] and rates["on"]:
            ratio = st.median(rates["on"]) / st.median(rates["off"])
            print(f"  {mode} mode, deterministic on / off: {ratio:.3f}x steady throughput "
                  f"({(1 - ratio) * 100:+.1f}% cost; on by default when <= 10%)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=12_000, help="MNIST-size rows to generate (90%% train)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size per worker")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of (b) and (c)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of every TensorFlow process, (a) included, e.g. TF_NUM_INTEROP_THREADS=2")
    p.add_argument("--modes", default="tensorflow,spark", help="TFoS input modes to run")
    p.add_argument("--gradient-compression", default="none", choices=["none", "fp16"],
                   help="the train job's gradient_compression for (b) and (c); (a) all-reduces nothing")
    p.add_argument("--deterministic", choices=("on", "off", "both"), default="on",
                   help="the train job's --deterministic for (b) and (c): on (its default), off, or both side by side")
    p.add_argument("--repeat", type=int, default=1, help="with --deterministic both: runs of each, alternating")
    p.add_argument("--job-only", action="store_true", help="only the train job's runs: no (a), no per-step figures")
    p.add_argument("--single-only", action="store_true",
                   help="with --deterministic both: only (a), op determinism off and on alternating --repeat times: "
                        "CPU seconds per step, which other load on the machine does not change as it changes wall time")
    p.add_argument("--single", nargs=2, metavar=("ROOT", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--collective-worker", nargs=3, metavar=("INDEX", "PORT0", "PORT1"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        return single_process(args.single[0], int(args.single[1]), args.batch_size, args.deterministic)
    if args.collective_worker:
        index, *ports = args.collective_worker
        return collective_worker(int(index), ports, args.gradient_compression, args.batch_size)

    import common
    from tfospipe import fs, launch, paths

    common.print_facts()

    root = tempfile.mkdtemp(prefix="tfos-train-bench-")
    layout = paths.Layout(root)
    try:
        print(f"preparing {args.rows} MNIST-size rows in {root} ...", flush=True)
        common.write_mnist_csv(os.path.join(layout.raw(VERSION), "rows.csv"), args.rows)
        common.run_job("convert", {"data_root": root, "version": VERSION, "eval_fraction": 0.1, "num_shards": 4},
                       args.master)
        train_rows = json.load(open(os.path.join(layout.tfrecords(VERSION), fs.MANIFEST)))["splits"]["train"]
        steps = train_rows // (args.batch_size * 2)  # per worker, as the train job computes it
        examples = steps * args.batch_size * 2

        overrides = dict(kv.split("=", 1) for kv in args.env)
        malloc = launch.executor_malloc()  # the executors' allocator, for (a) too
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               **({"LD_PRELOAD": malloc} if malloc else {}), **overrides}
        settings = ["off", "on"] * args.repeat if args.deterministic == "both" else [args.deterministic]
        if args.single_only:
            singles = []
            for setting in settings:
                out = subprocess.run([sys.executable, __file__, "--single", root, str(steps * 2), "--batch-size",
                                      str(args.batch_size), "--deterministic", setting], env=env, check=True,
                                     stdout=subprocess.PIPE, text=True).stdout
                singles.append(dict(json.loads(out.strip().splitlines()[-1]), deterministic=setting))
                print(f"  (a) deterministic {setting}: {singles[-1]['examples_per_second']:.0f} examples/s steady, "
                      f"{singles[-1]['cpu_per_step'] * 1000:.1f} ms CPU a step", flush=True)
            print()
            common.print_facts()
            print_single_cost(singles, args.batch_size, steps * 2)
            return
        if args.job_only:
            runs = train_runs(root, layout, args, overrides, settings)
            print()
            common.print_facts()
            print(f"{examples} examples per run ({steps} steps x {args.batch_size} x 2 workers), model: seed CNN "
                  f"28x28, gradient compression {args.gradient_compression}")
            print_determinism_cost(runs)
            return
        t = time.time()
        out = subprocess.run([sys.executable, __file__, "--single", root, str(steps * 2),
                              "--batch-size", str(args.batch_size)], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        single = json.loads(out.strip().splitlines()[-1])
        single["wall"] = time.time() - t
        # the same, two processes side by side: the compute per step when both cores compute
        pair = [subprocess.Popen([sys.executable, __file__, "--single", root, str(steps * 2), "--batch-size",
                                  str(args.batch_size)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        side_by_side = [json.loads(p.communicate()[0].strip().splitlines()[-1])["examples_per_second"] for p in pair]

        coll = collectives(env, args.gradient_compression, args.batch_size)

        runs = train_runs(root, layout, args, overrides, settings)
        results = {mode: next(r for r in runs if r["mode"] == mode) for mode in args.modes.split(",")}

        a = single["examples_per_second"]
        print()
        common.print_facts()
        print(f"{examples} examples each ({steps} steps x {args.batch_size} x 2 workers; (a) {steps * 2} steps x "
              f"{args.batch_size}), model: seed CNN 28x28, gradient compression {args.gradient_compression}, "
              f"allocator: {env.get('LD_PRELOAD') or 'glibc'}")
        print(f"(a) one tf.keras process, 1 core       {a:8.0f} examples/s   wall {single['wall']:6.1f} s")
        for label, mode in (("(b) TFoS InputMode.TENSORFLOW, 2x1", "tensorflow"),
                            ("(c) TFoS InputMode.SPARK,      2x1", "spark")):
            if mode not in results:
                continue
            r = results[mode]
            steady_seconds = examples / r["rate"] if r["rate"] else float("nan")
            print(f"{label}  {r['rate']:8.0f} examples/s   efficiency {r['rate'] / (2 * a):4.2f}   "
                  f"wall {r['wall']:6.1f} s = Spark/TF start-up {r['wall'] - r['train']:.1f} s + TFoS cluster "
                  f"{r['train']:.1f} s (steady training {steady_seconds:.1f} s), executors' allocator {r['malloc']}")
        compute = args.batch_size / a * 1000
        both = args.batch_size / (sum(side_by_side) / 2) * 1000
        grads_wall, grads_cpu = coll["allreduce_wall"] * 1000, coll["allreduce_cpu"] * 1000
        metrics = max(0.0, (coll["small_step"] - coll["small_local_step"] - coll["small_allreduce"]) * 1000)
        ceiling = compute / (both + grads_cpu + metrics)
        print(f"per step of one worker at batch {args.batch_size} (ms): compute on one core {compute:.1f} alone, "
              f"{both:.1f} with (a) running twice side by side ({side_by_side[0]:.0f} and {side_by_side[1]:.0f} "
              f"examples/s); all-reduce of {coll['values']:,.0f} "
              f"{'float16' if args.gradient_compression == 'fp16' else 'float32'} gradients "
              f"{grads_wall:.1f} wall, {grads_cpu:.1f} CPU; metric collectives and coordination {metrics:.1f} (small "
              f"model {coll['small_step'] * 1000:.1f} under the strategy vs {coll['small_local_step'] * 1000:.1f} "
              f"without, its gradients {coll['small_allreduce'] * 1000:.1f})")
        print(f"ceiling = compute alone / (compute side by side + all-reduce CPU + metrics) = {ceiling:.2f} "
              f"(with the all-reduce's wall instead of its CPU: {compute / (both + grads_wall + metrics):.2f})")
        for label, mode in (("tensorflow mode", "tensorflow"), ("spark mode", "spark")):
            if mode in results:
                e = results[mode]["rate"] / (2 * a)
                print(f"  {label}: efficiency {e:.2f} = {e / ceiling:.2f} of the ceiling"
                      + ("   (goal >= 0.9 in tensorflow mode)" if mode == "tensorflow" else "")
                      + f"   (deterministic {results[mode]['deterministic']})")
        if args.deterministic == "both":
            print_determinism_cost(runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
