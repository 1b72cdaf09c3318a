"""The training plan: what the driver decides before Spark starts TensorFlow.

From the train params (``jobargs.TrainParams``) and the conversion manifest's per-shard record counts
the driver plans each node's share of the train and eval splits and the step budgets every node runs
(:func:`plan_run` -> :class:`Plan`); it also refuses, with what to change, a topology or a data root
the cluster cannot run (:func:`check_topology`, :func:`check_root`). Pure Python (no Spark, no
TensorFlow): the plan is pickled to the nodes with their params (``node.NodeSetup``).

Shares: every node that reads shards gets a non-empty share of each split, whole non-empty shards
balanced by records (:func:`assign_shards`) or, with fewer non-empty shards than nodes, every n-th
record of all of them (:func:`plan_shares`); a split with fewer records than reading nodes is
refused. Every node repeats its share, so every node runs the same number of train steps per epoch
and evaluation steps (:func:`plan_steps`) however uneven the shards are; an uneven share never
leaves one node waiting in a collective for a node that ran out of data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from . import dataset, fs, paths
from .jobargs import TrainParams
from .runner import JobError, UserError

#: A node's share of a split: ``{"files": [paths], "offset": int, "every": int, "records": int}``.
Share = dict[str, Any]


def check_topology(cluster_size: int, num_ps: int, input_mode: str, gradient_compression: str = "none") -> None:
    """Refuse a cluster ParameterServerStrategy cannot run, with what to change (raises UserError: a retry cannot mend it)."""
    if num_ps and gradient_compression != "none":
        raise UserError(f"gradient_compression={gradient_compression} applies to all-reduce training (num_ps=0); "
                       f"with num_ps={num_ps} the workers send gradients to the parameter servers as they are. "
                       "Use gradient_compression=none, or num_ps=0")
    if num_ps and cluster_size < num_ps + 2:
        raise UserError(f"cluster_size={cluster_size} with num_ps={num_ps} leaves no worker: parameter-server "
                       f"training needs the parameter servers, a chief (the coordinator) and at least one worker, "
                       f"so cluster_size >= num_ps + 2 = {num_ps + 2}; or use num_ps=0 (all-reduce)")
    if num_ps and input_mode != "tensorflow":
        raise UserError(f"num_ps={num_ps} needs input_mode=tensorflow: under ParameterServerStrategy the workers "
                       "are TensorFlow servers that read the TFRecords themselves; Spark cannot feed them rows. "
                       "Use input_mode=tensorflow, or num_ps=0 to feed rows from Spark")


def check_root(layout: paths.Layout, num_ps: int) -> None:
    """Refuse parameter servers on a data root (``layout.root``) ``tf.io.gfile`` cannot reach (``s3://``,
    ``hdfs://``, ``abfs://``): there the nodes read local copies of their shares (scratch.py), but under
    ParameterServerStrategy the chief's coordinator builds the workers' input pipelines, whose file
    paths would name the chief's copies, absent on other hosts. Raises UserError."""
    if num_ps and not fs.scheme_of(layout.root).tf_gfile:
        raise UserError(f"num_ps={num_ps} needs a data root TensorFlow reaches itself (a local or shared path, "
                       f"gs://); {layout.root} is reached through local copies, which parameter-server workers "
                       "cannot share: use num_ps=0 (all-reduce) on this root")


def assign_shards(records: list[int], nodes: int) -> list[list[int]] | None:
    """Which shards each node reads: the non-empty shards spread so that the nodes' record counts are as
    even as whole shards allow (largest shard first, to the node with the fewest records so far).

    ``records``: records per shard (a split's manifest entries, in shard order); ``nodes`` >= 1.
    Returns ``nodes`` lists of shard indexes (ascending), or None when there are fewer non-empty shards
    than nodes, so that some node would get no records. Empty shards go to no node.
    """
    nonempty = [i for i, n in enumerate(records) if n > 0]
    if len(nonempty) < nodes:
        return None
    shares, loads = [[] for _ in range(nodes)], [0] * nodes
    for i in sorted(nonempty, key=lambda i: (-records[i], i)):
        node = min(range(nodes), key=lambda k: (loads[k], k))
        shares[node].append(i)
        loads[node] += records[i]
    return [sorted(share) for share in shares]


def plan_shares(split: str, shards: list[dict[str, Any]], split_dir: str, nodes: int) -> list[Share]:
    """Each reading node's share of one split, such that no node's share is empty.

    ``shards``: the conversion manifest's entries of the split (``{"file", "records"}``), ``split_dir``
    the directory holding them, ``nodes`` the nodes reading the split. With at least ``nodes`` non-empty
    shards every node reads whole shards of its own (:func:`assign_shards`); with fewer, every node reads
    all non-empty shards and keeps every ``nodes``-th record from its offset (``tf.data``'s ``shard``).

    Returns ``nodes`` dicts ``{"files": [paths], "offset": int, "every": int, "records": int}`` (records:
    how many this node gets). Raises UserError when the split holds fewer records than nodes.
    """
    counts = [int(s["records"]) for s in shards]
    total = sum(counts)
    if total < nodes:
        raise UserError(f"the {split} shards hold {counts} records ({total} in all) for {nodes} reading nodes: "
                       f"every node needs at least one {split} record. Add data, or use fewer nodes "
                       "(cluster_size)")
    files = [paths.join(split_dir, s["file"]) for s in shards]
    assigned = assign_shards(counts, nodes)
    if assigned is not None:
        return [{"files": [files[i] for i in share], "offset": 0, "every": 1,
                 "records": sum(counts[i] for i in share)} for share in assigned]
    nonempty = [f for f, n in zip(files, counts) if n > 0]
    return [{"files": nonempty, "offset": k, "every": nodes, "records": len(range(k, total, nodes))}
            for k in range(nodes)]


def describe_shares(split: str, shards: list[dict[str, Any]], shares: list[Share]) -> str:
    """One log line: a split's shard record counts and what each reading node gets."""
    counts = [int(s["records"]) for s in shards]
    got = [s["records"] for s in shares]
    if shares and shares[0]["every"] > 1:
        n = len(shares)
        return (f"{split} shards hold {counts} records: fewer non-empty shards than the {n} nodes reading them, so "
                f"every node reads all of them and keeps one record in {n} ({got} records per node). To give each "
                f"node shards of its own, convert with num_shards >= {n} (a .csv.gz input is one shard: split it "
                "into several files, or use plain CSV)")
    return f"{split} shards hold {counts} records; nodes read {got} records each"


def plan_steps(train_rows: int, eval_shares: list[Share], batch_size: int, step_batches: int) -> tuple[int, int]:
    """The step budgets every node runs: ``(steps_per_epoch, eval_steps)``.

    ``steps_per_epoch``: the train split once per epoch, ``step_batches`` batches of ``batch_size`` per
    step (the number of all-reduce workers; 1 under ParameterServerStrategy), at least 1. ``eval_steps``:
    all-reduce: enough batches for the largest eval share (``eval_shares``, from :func:`plan_shares`), so
    every eval record is evaluated once and smaller shares repeat records; parameter servers: the eval
    split once, one batch per step. Each node repeats its (non-empty) share, so every node meets both.
    """
    steps_per_epoch = max(train_rows // (batch_size * step_batches), 1)
    if step_batches == 1:
        eval_steps = math.ceil(sum(s["records"] for s in eval_shares) / batch_size)
    else:
        eval_steps = math.ceil(max(s["records"] for s in eval_shares) / batch_size)
    return steps_per_epoch, max(eval_steps, 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The cluster, shares and step budgets of a run, from its params and the conversion manifest
    (plain values: pickled to the nodes with the params, ``node.NodeSetup``)."""

    nodes: int            # Spark executors = TensorFlow nodes (cluster_size)
    workers: int          # nodes that train (all-reduce) or the chief + workers (parameter servers)
    readers: int          # nodes reading shards; parameter servers: not the coordinator
    step_batches: int     # batches per step: all-reduce workers; 1 under ParameterServerStrategy
    train_rows: int
    shares: dict[str, list[Share]]  # per split ("train", "eval"): one share per reading node
    steps_per_epoch: int  # train steps every node runs per epoch
    eval_steps: int       # evaluation steps every node runs per evaluation
    image_shape: tuple[int, int]  # (H, W) pixels of the dataset version
    pixel_max: int        # the pixel scale (inputs are divided by it): the largest pixel value converted, >= 1


def plan_run(params: TrainParams, layout: paths.Layout) -> Plan:
    """The :class:`Plan` of a train run with ``params`` on the data under ``layout``; logs each split's
    shares (:func:`describe_shares`).

    Raises UserError (not retried by Airflow: the same run fails the same way) for a topology or data root the
    cluster cannot run (:func:`check_topology`,
    :func:`check_root`), a version that was not converted (``dataset.read_manifest``), a manifest that
    lists no per-shard record counts (an older conversion), a listed shard that is missing, a split
    that cannot fill one step, or a split that holds fewer records than reading nodes.
    """
    check_topology(params.cluster_size, params.num_ps, params.input_mode, params.gradient_compression)
    check_root(layout, params.num_ps)
    manifest = dataset.read_manifest(layout, params.version)
    workers = params.cluster_size - params.num_ps
    readers = workers - 1 if params.num_ps else workers
    step_batches = 1 if params.num_ps else workers
    shares = {split: _split_shares(params, layout, manifest, split, readers, step_batches)
              for split in ("train", "eval")}
    # The same step budgets on every node; each node repeats its share to meet them.
    train_rows = manifest["splits"]["train"]
    steps_per_epoch, eval_steps = plan_steps(train_rows, shares["eval"], params.batch_size, step_batches)
    return Plan(nodes=params.cluster_size, workers=workers, readers=readers, step_batches=step_batches,
                train_rows=train_rows, shares=shares, steps_per_epoch=steps_per_epoch, eval_steps=eval_steps,
                image_shape=dataset.image_shape(manifest), pixel_max=max(int(manifest["pixel_max_observed"]), 1))


def _split_shares(params: TrainParams, layout: paths.Layout, manifest: dict[str, Any], split: str,
                  readers: int, step_batches: int) -> list[Share]:
    """One split's shares (:func:`plan_shares`), after checking its shards are there and fill a step."""
    on_disk = set(dataset.shard_files(layout, params.version, split))
    split_dir = dataset.split_dir(layout, params.version, split)
    rows = manifest["splits"][split]
    shards = manifest.get("shards", {}).get(split)
    if shards is None:
        raise UserError(f"the conversion manifest of dataset version {params.version} lists no per-shard record "
                       f"counts for the {split} split ({paths.join(layout.tfrecords(params.version), fs.MANIFEST)}): "
                       "it was converted by an older version of the pipeline; rerun the convert task")
    missing = [s["file"] for s in shards if paths.join(split_dir, s["file"]) not in on_disk]
    if missing:
        raise UserError(f"{split} shards {missing} listed in the conversion manifest are missing from {split_dir}; "
                       "rerun the convert task for this version")
    if rows < params.batch_size * step_batches:
        raise UserError(f"{rows} {split} rows cannot fill one step of batch_size {params.batch_size} on "
                       f"{step_batches} workers; lower batch_size")
    shares = plan_shares(split, shards, split_dir, readers)
    print(describe_shares(split, shards, shares), flush=True)
    return shares
