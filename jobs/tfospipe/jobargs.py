"""Command-line arguments of the four jobs, in one place.

The jobs parse their ``argv`` with :func:`parse`; the DAG builds each task's ``application_args``
with :func:`to_argv` and takes its params' defaults from :data:`JOBS`, so a flag, its type and its
default are written once. No Spark or TensorFlow import here: the DAG processor loads this module.
"""

import argparse

from . import paths, schema

#: How all-reduce training sends gradients: "none" (float32) or "fp16" (model.HalfPrecisionAllReduceAdam).
GRADIENT_COMPRESSIONS = ("none", "fp16")


def _number(cast, name, minimum=None, maximum=None, above=None):
    """argparse type: ``cast(text)`` within [minimum, maximum] (and > ``above``), else a clear error."""
    def check(text):
        value = cast(text)
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above)):
            raise argparse.ArgumentTypeError(f"{text} is not {name}")
        return value
    check.__name__ = name
    return check


_fraction = _number(float, "a fraction in [0, 1]", 0.0, 1.0)
_positive = _number(int, "a positive integer", 1)
_non_negative = _number(int, "a non-negative integer", 0)
_positive_float = _number(float, "a positive number", above=0.0)


def _segment(what):
    def check(text):
        try:
            return paths.check_segment(text, what)
        except paths.PathError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return check


def _run_id(text):
    try:
        return paths.run_slug(text)
    except paths.PathError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _one_of(*choices):
    def check(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return check


def _image_shape(text):
    if text in ("", "auto"):
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image shape {text!r} is not HxW, e.g. 28x28") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"image shape {text!r} must be positive")
    return h, w


class Arg:
    """A job flag. ``schema`` (JSON schema) makes it a DAG param too, named ``param`` (default: ``name``)."""

    def __init__(self, name, type, default, help, schema=None, param=None):
        self.name, self.type, self.default, self.help = name, type, default, help
        self.schema, self.param = schema, (param or name) if schema else None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


_COMMON = [
    Arg("data_root", str, None, "root of all data: a local directory or a tf.io.gfile URI every executor can reach"),
    Arg("version", _segment("dataset version"), None, "dataset version, e.g. the run's logical date 2026-11-28"),
]
_RUN = [Arg("run_id", _run_id, None, "Airflow run id; keys the model directory so a retry resumes it")]

JOBS = {
    "convert": _COMMON + [
        Arg("eval_fraction", _fraction, 0.2, "fraction of rows for the eval split (by a hash of the row's content)",
            {"type": "number", "minimum": 0.01, "maximum": 0.9}),
        Arg("num_shards", _positive, 4, "TFRecord shards per split (at least the training cluster size)",
            {"type": "integer", "minimum": 1, "maximum": 1024}),
        Arg("max_bad_fraction", _fraction, 0.05, "fail when more than this fraction of rows is quarantined",
            {"type": "number", "minimum": 0, "maximum": 1}),
        Arg("pixel_max", _positive, 255, "largest valid pixel value; larger values are quarantined",
            {"type": "integer", "minimum": 1, "maximum": 65535}),
        Arg("image_shape", _image_shape, "auto", "HxW, or auto: square root of the pixel column count",
            {"type": "string", "pattern": "^(auto|[0-9]{1,4}x[0-9]{1,4})$"}),
        Arg("label_column", _number(int, "a column index >= -1", -1), 0,
            "index of the label column in the labeled CSV (0 = first, -1 = last); the others are the pixels",
            {"type": "integer", "minimum": -1, "maximum": 1000000}),
        Arg("compression", _one_of(*schema.COMPRESSIONS), "none",
            "TFRecord shard compression: none, or gzip (*.tfrecord.gz; the readers follow the file names)",
            {"type": "string", "enum": list(schema.COMPRESSIONS)}),
    ],
    "train": _COMMON + _RUN + [
        Arg("input_mode", _one_of("tensorflow", "spark"), "tensorflow",
            "tensorflow: each node reads its TFRecord shards with tf.data; spark: Spark feeds the rows (TFNode.DataFeed)",
            {"type": "string", "enum": ["tensorflow", "spark"]}),
        Arg("cluster_size", _positive, 2, "TensorFlow nodes = Spark executors (chief + workers)",
            {"type": "integer", "minimum": 2, "maximum": 256}),
        Arg("num_ps", _non_negative, 0,
            "parameter servers among the cluster_size nodes: 0 = all-reduce (MultiWorkerMirroredStrategy); "
            "> 0 = ParameterServerStrategy (needs cluster_size >= num_ps + 2 and input_mode tensorflow)",
            {"type": "integer", "minimum": 0, "maximum": 16}),
        Arg("gradient_compression", _one_of(*GRADIENT_COMPRESSIONS), "none",
            "how all-reduce training sends gradients: none (float32) or fp16 (half the bytes and CPU of the "
            "all-reduce, gradients rounded to float16; num_ps=0 only)",
            {"type": "string", "enum": list(GRADIENT_COMPRESSIONS)}),
        Arg("epochs", _positive, 5, "passes over the train split", {"type": "integer", "minimum": 1, "maximum": 1000}),
        Arg("batch_size", _positive, 64, "batch size per worker", {"type": "integer", "minimum": 1, "maximum": 65536}),
        Arg("learning_rate", _positive_float, 0.001, "Adam learning rate",
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        Arg("executor_wait", _positive, 120, "seconds to wait for cluster_size executors before failing"),
    ],
    "validate": _COMMON + _RUN + [
        Arg("min_accuracy", _fraction, 0.8, "the candidate's eval accuracy must reach this",
            {"type": "number", "minimum": 0, "maximum": 1}),
        Arg("max_regression", _fraction, 0.02, "the candidate may trail the serving model's accuracy by at most this",
            {"type": "number", "minimum": 0, "maximum": 1}),
    ],
    "infer": _COMMON + [
        Arg("batch_size", _positive, 256, "rows per prediction batch in each executor",
            {"type": "integer", "minimum": 1, "maximum": 65536}, param="inference_batch_size"),
        Arg("model_version", str, "", "promoted model version to use; empty = the one serving now"),
        Arg("mode", _one_of("executors", "tfos"), "executors",
            "executors: each executor loads the model and scores its shards (mapInArrow); tfos: a TFoS cluster "
            "in InputMode.SPARK scores the rows Spark feeds it (TFCluster.inference)",
            {"type": "string", "enum": ["executors", "tfos"]}, param="inference_mode"),
    ],
}


def parser(job):
    p = argparse.ArgumentParser(prog=f"{job}.py", description=f"{job} job of the TFoS pipeline")
    for a in JOBS[job]:
        required = a.default is None
        p.add_argument(a.flag, dest=a.name, type=a.type, default=None if required else a.default,
                       required=required, help=a.help)
    return p


def parse(job, argv):
    args = parser(job).parse_args(argv)
    if args.data_root:
        args.data_root = paths.normalize_root(args.data_root)
    return args


def defaults(job):
    return {a.name: a.default for a in JOBS[job] if a.default is not None}


def dag_params(job):
    """(param name, default, help, JSON schema) of the flags a DAG run may set for ``job``."""
    return [(a.param, a.default, a.help, a.schema) for a in JOBS[job] if a.schema]


def to_argv(job, values):
    """``application_args`` for a job: every value given, as ``--flag value`` (values may be templates)."""
    known = {a.name: a for a in JOBS[job]}
    unknown = set(values) - set(known)
    if unknown:
        raise KeyError(f"unknown arguments for {job}: {sorted(unknown)}")
    argv = []
    for name, value in values.items():
        argv += [known[name].flag, str(value)]
    return argv
