"""Training benchmark: the seed CNN on MNIST-size rows, one process vs TensorFlowOnSpark, side by side.

(a) single   one plain tf.keras process on one core (TF intra/inter-op threads = 1)
(b) tfos-tf  the train job, 2 workers x 1 core, InputMode.TENSORFLOW
(c) tfos-sp  the train job, 2 workers x 1 core, InputMode.SPARK

All three train the same model on the same data for the same number of examples at batch 64 per
worker, with the same Keras steps_per_execution and the same memory allocator (the executors' one,
launch.executor_malloc; --env LD_PRELOAD= compares glibc's). Steady-state examples/s exclude
start-up and the first steps (tracing); scaling efficiency = (b or c) / (2 x (a)).
Run:  .venv/bin/python bench/train_bench.py [--rows 12000]
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
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VERSION = "bench"


def single_process(root, steps, batch_size):
    """(a), run in a child process whose TensorFlow has one thread: prints steady examples/s as JSON."""
    import tensorflow as tf

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
            marks.append((batch + 1, time.time()))

    t0 = time.time()
    cnn.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    (first_steps, first), (last_steps, last) = marks[0], marks[-1]  # the first execution: tracing, warm-up
    steady = (last_steps - first_steps) * batch_size / (last - first)
    print(json.dumps({"examples_per_second": steady, "seconds": time.time() - t0}))


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
    p.add_argument("--single", nargs=2, metavar=("ROOT", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        return single_process(args.single[0], int(args.single[1]), args.batch_size)

    import common
    from tfospipe import launch, paths

    common.print_facts()

    root = tempfile.mkdtemp(prefix="tfos-train-bench-")
    layout = paths.Layout(root)
    try:
        print(f"preparing {args.rows} MNIST-size rows in {root} ...", flush=True)
        common.write_mnist_csv(os.path.join(layout.raw(VERSION), "rows.csv"), args.rows)
        common.run_job("convert", {"data_root": root, "version": VERSION, "eval_fraction": 0.1, "num_shards": 4},
                       args.master)
        train_rows = json.load(open(os.path.join(layout.tfrecords(VERSION), "_manifest.json")))["splits"]["train"]
        steps = train_rows // (args.batch_size * 2)  # per worker, as the train job computes it
        examples = steps * args.batch_size * 2

        overrides = dict(kv.split("=", 1) for kv in args.env)
        malloc = launch.executor_malloc()  # the executors' allocator, for (a) too
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               **({"LD_PRELOAD": malloc} if malloc else {}), **overrides}
        t = time.time()
        out = subprocess.run([sys.executable, __file__, "--single", root, str(steps * 2),
                              "--batch-size", str(args.batch_size)], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        single = json.loads(out.strip().splitlines()[-1])
        single["wall"] = time.time() - t

        results = {}
        for mode in args.modes.split(","):
            t = time.time()
            common.run_job("train", {"data_root": root, "version": VERSION, "run_id": mode, "input_mode": mode,
                                     "epochs": 1, "batch_size": args.batch_size,
                                     "gradient_compression": args.gradient_compression}, args.master, env=overrides)
            m = json.load(open(os.path.join(layout.model_run(VERSION, mode), "_manifest.json")))
            results[mode] = {"rate": m["steady_examples_per_second"], "train": m["train_seconds"],
                             "wall": time.time() - t, "steps": m["steps_run"], "malloc": m["workers"][0]["malloc"]}

        a = single["examples_per_second"]
        print()
        common.print_facts()
        print(f"{examples} examples each ({steps} steps x {args.batch_size} x 2 workers; (a) {steps * 2} steps x "
              f"{args.batch_size}), model: seed CNN 28x28, gradient compression {args.gradient_compression}, "
              f"allocator: {env.get('LD_PRELOAD') or 'glibc'}")
        print(f"(a) one tf.keras process, 1 core       {a:8.0f} examples/s   wall {single['wall']:6.1f} s")
        for label, mode, goal in (("(b) TFoS InputMode.TENSORFLOW, 2x1", "tensorflow", 0.85),
                                  ("(c) TFoS InputMode.SPARK,      2x1", "spark", 0.6)):
            if mode not in results:
                continue
            r = results[mode]
            steady_seconds = examples / r["rate"] if r["rate"] else float("nan")
            print(f"{label}  {r['rate']:8.0f} examples/s   efficiency {r['rate'] / (2 * a):4.2f} (goal >= {goal})   "
                  f"wall {r['wall']:6.1f} s = Spark/TF start-up {r['wall'] - r['train']:.1f} s + TFoS cluster "
                  f"{r['train']:.1f} s (steady training {steady_seconds:.1f} s), executors' allocator {r['malloc']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
