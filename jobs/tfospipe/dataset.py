"""The read side of a dataset version: what the convert job committed, as its readers use it.

Train, validate and infer (and ``scripts/lineage.py`` and the benchmarks) read a converted dataset
version through this module; ``convert.py`` writes it. Layout (``paths.Layout.tfrecords``)::

    {root}/tfrecords/{version}/{train,eval,score}/part-NNNNN.tfrecord[.gz]   the shards (schema.shard_name;
                                                                            score only for unlabeled input)
    {root}/tfrecords/{version}/_lineage/                                    the lineage index (lineage.py)
    {root}/tfrecords/{version}/_manifest.json, _SUCCESS                     the manifest, then the commit marker

(``{root}/tfrecords/{version}`` as its commit pointer resolves it: ``fs.resolve``, :func:`version_dir`.)

A shard is a TFRecord file (GZIP when its name ends in ``.gz``) of serialized ``tf.train.Example``
records under ``schema.feature_spec``: ``image`` int64 [H*W], ``label`` and ``row_id`` int64 [1]
(``label`` -1 for unlabeled rows). Records are read in Python (``schema.shard_records``), with their
CRC32C checksums checked, on any root ``fs`` reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import fs, paths, schema
from .runner import UserError

if TYPE_CHECKING:  # Spark is only needed by example_rdd, at run time
    from pyspark import RDD, SparkContext


def read_manifest(layout: paths.Layout, version: str) -> dict:
    """The committed conversion manifest (``_manifest.json``) of ``version``, as a dict.

    Keys the readers use: ``splits`` (rows per split name), ``shards`` (per split, in shard order:
    ``[{"file": shard file name, "records": int, "source": "input name:start-end" byte range}]``),
    ``image_shape`` ([H, W] pixels), ``pixel_max_observed`` (largest pixel value written), ``lineage``.
    Raises UserError (not retried: convert must run first) when the version has no commit marker
    (``_SUCCESS``): it was never converted, or its conversion did not finish; OSError or fs.StorageError when the manifest cannot be read.
    """
    out = version_dir(layout, version)
    if not fs.exists(paths.join(out, fs.SUCCESS)):
        raise UserError(f"no converted data for dataset version {version} at {layout.tfrecords(version)} (no "
                       "_SUCCESS): run the convert task for this version first")
    return fs.read_json(paths.join(out, fs.MANIFEST))


def version_dir(layout: paths.Layout, version: str) -> str:
    """The directory the committed conversion of ``version`` is read from: the attempt its commit pointer
    names (``fs.resolve``). Resolve it once and read every file of the version under it."""
    return fs.resolve(layout.tfrecords(version))


def split_dir(layout: paths.Layout, version: str, split: str) -> str:
    """The directory of one split's shards in the committed conversion (:func:`version_dir`)."""
    return paths.join(version_dir(layout, version), split)


def shard_files(layout: paths.Layout, version: str, split: str) -> list[str]:
    """Paths (sorted, in the root's form: local or URI) of the TFRecord shards of one split (``train``,
    ``eval`` or ``score``) of ``version``, as the storage lists them (``schema.SHARD_PATTERN``); empty
    when the split has none or was never written. The commit marker is not checked here
    (:func:`read_manifest` does)."""
    return fs.glob(paths.join(split_dir(layout, version, split), schema.SHARD_PATTERN))


def image_shape(manifest: dict) -> tuple[int, int]:
    """``(H, W)`` in pixels of the version's images, from its conversion manifest."""
    h, w = manifest["image_shape"]
    return int(h), int(w)


def example_rdd(sc: SparkContext, files: list[str]) -> RDD:
    """The serialized ``tf.train.Example`` records (bytes) of the TFRecord ``files`` as an RDD with one
    partition per shard (one partition when ``files`` is empty), in file order (what the TFoS feeds of
    train and infer consume). Lazy: a corrupt or truncated shard raises ValueError in the task that
    reads it (``schema.tfrecords_in``)."""
    return sc.parallelize(files, max(len(files), 1)).flatMap(lambda path: schema.shard_records(path, fs.open_read))
