"""Reproducible retraining: train a promoted model again from its training manifest and compare.

``scripts/reproduce.py <model_version>`` (``make reproduce MODEL=...``) is the command; this module holds
its parts, so that they are tested apart from it:

* :func:`find_run`: the promoted model's training run (its serving manifest names the dataset version
  and the run id) and that run's ``_manifest.json``;
* :func:`check_dataset`: the version's data is still what the run read: every input file's sha256 as
  the conversion manifest recorded it, the conversion manifest's own sha256 and every shard's size as
  the run's manifest recorded them (``rundir.dataset_identity``);
* :func:`retrain_args`: the train job's flags for the rerun: the run's params, its seed and input mode
  and cluster size, into a scratch run id, with the data checks off (they never change the model, and
  would rewrite the version's record of the checks);
* :func:`compare_models`: the digest (``serving.model_digest``) of both SavedModels and every variable
  of their checkpoints (``variables/``), compared bit for bit; :func:`describe` prints ``identical`` or
  the largest absolute difference per variable.

What is reproducible in which mode, and why: the README's "Reproducible retraining". No Spark here, and
TensorFlow only inside :func:`read_variables`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
from typing import Any

import numpy as np

from . import dataset, fs, paths, serving
from .jobargs import JOBS
from .runner import JobError

#: Bytes read per step while hashing an input file.
_CHUNK = 1 << 20
#: The checkpoint entry that holds the object graph (a serialized proto, not a variable).
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
#: The suffix of a variable's value in a TF2 checkpoint key, dropped from the names printed.
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class ReproduceError(Exception):
    """Why a model cannot be retrained from its manifest (one line)."""


@dataclasses.dataclass(frozen=True)
class Original:
    """A promoted model and the run that trained it."""

    model_version: str
    model_dir: str         # serving/models/<model_version>
    digest: str | None     # as its serving manifest recorded it
    run_dir: str           # models/<version>/<run>
    manifest: dict         # the run's _manifest.json


def find_run(layout: paths.Layout, model_version: str) -> Original:
    """The promoted ``model_version`` and its training run's manifest. Raises ReproduceError for a
    model version that was never promoted (naming the ones that were), a serving manifest without its
    run, or a run without a committed training manifest."""
    try:
        paths.check_segment(model_version, "model version")
    except paths.PathError as e:
        raise ReproduceError(str(e)) from None
    known = serving.versions(layout)
    if model_version not in known:
        raise ReproduceError(f"unknown model version {model_version!r}: not a promoted model in "
                             f"{layout.serving_models()} (promoted: {', '.join(known) or 'none'})")
    info = serving.model_info(layout, model_version)
    version, run = info.get("dataset_version"), info.get("run_id")
    if not version or not run:
        raise ReproduceError(f"the serving manifest of {model_version} names no dataset_version and run_id")
    run_dir = layout.model_run(version, run)
    manifest_path = paths.join(run_dir, fs.MANIFEST)
    if not fs.is_committed(run_dir) or not fs.exists(manifest_path):
        raise ReproduceError(f"no training manifest for {model_version}: {manifest_path} is missing (or the run "
                             "has no _SUCCESS); the run it was trained by is gone")
    return Original(model_version, layout.serving_model(model_version), info.get("digest"), run_dir,
                    fs.read_json(manifest_path))


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file's bytes as stored."""
    h = hashlib.sha256()
    with fs.open_read(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_dataset(layout: paths.Layout, manifest: dict) -> list[str]:
    """Check that the dataset version a run read is unchanged; returns what was checked (lines).

    Raises ReproduceError naming the first file that differs: an input file whose sha256 is not the one
    the conversion manifest recorded (or that is gone), a conversion manifest whose sha256 is not the one
    the run recorded (the version was converted again), a shard whose size changed or that is gone."""
    version = manifest["dataset_version"]
    try:
        converted = dataset.read_manifest(layout, version)
    except JobError as e:
        raise ReproduceError(str(e)) from None
    checked = []
    for entry in converted.get("inputs", []):
        path = paths.join(layout.raw(version), entry["file"])
        if not fs.exists(path):
            raise ReproduceError(f"dataset version {version} changed: input file {path} is gone (sha256 "
                                 f"{entry['sha256']} recorded by the conversion)")
        got = file_sha256(path)
        if got != entry["sha256"]:
            raise ReproduceError(f"dataset version {version} changed: input file {path} has sha256 {got}, "
                                 f"the conversion recorded {entry['sha256']}")
    checked.append(f"{len(converted.get('inputs', []))} input files of raw/{version}: sha256 as converted")
    recorded = manifest.get("dataset")
    if not recorded:
        checked.append("the run's manifest records no shard sizes (trained before they were recorded): "
                       "shards not checked")
        return checked
    converted_dir = fs.resolve(layout.tfrecords(version))
    conversion = paths.join(converted_dir, fs.MANIFEST)
    got = file_sha256(conversion)
    if got != recorded["manifest_sha256"]:
        raise ReproduceError(f"dataset version {version} changed: {conversion} has sha256 {got}, the run read "
                             f"{recorded['manifest_sha256']} (the version was converted again)")
    for rel, size in sorted(recorded["shard_bytes"].items()):
        path = paths.join(converted_dir, rel)
        if not fs.exists(path):
            raise ReproduceError(f"dataset version {version} changed: shard {path} is gone")
        if fs.size(path) != size:
            raise ReproduceError(f"dataset version {version} changed: shard {path} has {fs.size(path)} bytes, "
                                 f"the run read {size}")
    checked.append(f"conversion manifest sha256 and {len(recorded['shard_bytes'])} shard sizes as the run read them")
    return checked


def scratch_run_id(run: str, now: datetime.datetime | None = None) -> str:
    """The run id of a rerun of ``run`` (its folder name): ``reproduce-<UTC time>-<run>``, given to the
    train job as its run id; the job's folder is ``paths.run_slug`` of it."""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%S")
    return f"reproduce-{stamp}-{run}"


def retrain_args(manifest: dict, data_root: str, run_id: str) -> dict[str, Any]:
    """The train job's flag values for a rerun of the run of ``manifest``: every param it recorded that
    the train job still takes (unset optional ones left out), on ``data_root``, as ``run_id``, with
    ``data_checks`` off and ``mlflow_required`` false (a scratch rerun is never refused for its MLflow
    mirror). Raises ReproduceError when the manifest records no params."""
    recorded = manifest.get("params")
    if not recorded:
        raise ReproduceError("the training manifest records no params")
    known = {spec.name for spec in JOBS["train"]}
    args = {k: v for k, v in recorded.items() if k in known and v is not None}
    return dict(args, data_root=data_root, run_id=run_id, data_checks="off", mlflow_required="false")


def differences(manifest: dict, versions: dict[str, str], revision: str) -> list[str]:
    """What differs between the run's recorded circumstances and this rerun's, and why the models may
    differ (lines, empty when nothing): library versions, git revision, a run resumed from its backup, a
    mode that is not bit-for-bit reproducible (parameter servers, spark input mode), a seed the manifest
    lacks."""
    notes = []
    for name, recorded in sorted((manifest.get("versions") or {}).items()):
        if versions.get(name) != recorded:
            notes.append(f"{name} {versions.get(name)} here, the run had {recorded}")
    if manifest.get("git_revision") not in (None, revision):
        notes.append(f"git revision {revision} here, the run had {manifest['git_revision']}")
    params = manifest.get("params") or {}
    budget = (params.get("epochs") or 0) * (manifest.get("steps_per_epoch") or 0)
    if not params.get("num_ps") and manifest.get("steps_run") is not None and manifest["steps_run"] < budget:
        notes.append(f"the run resumed from its backup after a failure ({manifest['steps_run']} of {budget} steps in "
                     "its last attempt): the data order and dropout started again at the resumed epoch, so the "
                     "rerun, which is not interrupted, cannot give the same model")
    if params.get("num_ps"):
        notes.append(f"num_ps={params['num_ps']}: parameter-server training is asynchronous (the order of the "
                     "workers' updates depends on timing); the models will differ")
    elif params.get("input_mode") == "spark":
        notes.append("input_mode=spark: Spark decides which node is fed which partition (whichever executor is "
                     "free), so the nodes' batches, and the models, may differ")
    if "seed" not in params:
        notes.append("the manifest records no seed (trained before runs were seeded): the rerun uses the "
                     "default seed and cannot give the same model")
    return notes


# --- comparing two SavedModels ----------------------------------------------------------------------------

def read_variables(model_dir: str) -> dict[str, np.ndarray]:
    """Every entry of a SavedModel's checkpoint (``variables/variables``) by name (the checkpoint key
    less :data:`VALUE_SUFFIX`), the object graph left out."""
    from . import tfenv
    tfenv.prepare_tensorflow(quiet=True)
    import tensorflow as tf

    reader = tf.train.load_checkpoint(paths.join(model_dir, "variables", "variables"))
    out = {}
    for key in sorted(reader.get_variable_to_shape_map()):
        if key == OBJECT_GRAPH:
            continue
        name = key[:-len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
        out[name] = np.asarray(reader.get_tensor(key))
    return out


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two SavedModels compared: digests; per variable the largest absolute difference (None: not
    comparable, e.g. a variable only one has, another shape or dtype), and the variables whose bits are
    the same (``same_bits``: a difference of 0.0 may still be -0.0 against 0.0)."""

    digest_a: str
    digest_b: str
    diffs: dict[str, float | None]
    same_bits: frozenset[str]

    @property
    def same_digest(self) -> bool:
        return self.digest_a == self.digest_b

    @property
    def identical(self) -> bool:
        """Every variable of either model in the other with the same bits."""
        return set(self.diffs) == self.same_bits


def variable_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    """The largest absolute difference of ``a`` and ``b`` (as float64, NaNs ignored; NaN when a
    non-numeric entry differs), 0.0 when they are the same bits, None when their shapes or dtypes differ."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return None
    if a.tobytes() == b.tobytes():
        return 0.0
    if a.dtype.kind not in "fiub":
        return float("nan")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")


def natural(name: str) -> list:
    """Sort key that puts ``_variables/2`` before ``_variables/10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def compare_models(a: str, b: str) -> Comparison:
    """Compare the SavedModels at ``a`` and ``b``: their digests (``serving.model_digest``) and every
    variable of their checkpoints (:func:`read_variables`)."""
    va, vb = read_variables(a), read_variables(b)
    names = sorted(set(va) | set(vb), key=natural)
    diffs = {name: (variable_difference(va[name], vb[name]) if name in va and name in vb else None)
             for name in names}
    same = frozenset(name for name in names if name in va and name in vb and va[name].dtype == vb[name].dtype
                     and va[name].shape == vb[name].shape and va[name].tobytes() == vb[name].tobytes())
    return Comparison(serving.model_digest(a), serving.model_digest(b), diffs, same)


def describe(c: Comparison) -> list[str]:
    """The lines the command prints: the digests, then ``identical``, or the largest absolute
    difference of every variable (``identical`` for those that are the same bits)."""
    lines = [f"digest: original {c.digest_a}, retrained {c.digest_b}: "
             f"{'the same' if c.same_digest else 'different'}"]
    if c.identical:
        return lines + ["identical"]
    lines.append(f"{len(c.diffs) - len(c.same_bits)} of {len(c.diffs)} variables differ; largest absolute "
                 "difference per variable:")
    width = max(len(n) for n in c.diffs)
    for name, d in c.diffs.items():
        text = ("identical" if name in c.same_bits
                else "not comparable (only in one model, or another shape or dtype)" if d is None
                else f"{d:.6g}" + (" (equal values, other bits: signed zeros or NaNs)" if d == 0.0 else ""))
        lines.append(f"  {name:<{width}}  {text}")
    return lines
