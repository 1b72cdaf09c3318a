"""The read side of a dataset version: what the convert job committed, as its readers use it.

Train, validate, infer, the scripts and the benchmarks read a converted dataset version through
this module only; ``convert.py`` is the stage that writes it. Layout (paths.Layout)::

    {root}/tfrecords/{version}/_manifest.json, _SUCCESS   the conversion manifest, then its commit marker
    {root}/tfrecords/{version}/{train,eval,score}/part-NNNNN-of-MMMMM.tfrecord[.gz]   the shards

Shards hold ``tf.train.Example`` records under the feature spec of ``schema.feature_spec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import fs, paths, schema
from .runner import JobError

if TYPE_CHECKING:  # Spark is only needed by example_rdd, at run time
    from pyspark import RDD, SparkContext


def read_manifest(layout: paths.Layout, version: str) -> dict:
    """The committed conversion manifest (``_manifest.json``) of ``version``, as a dict.

    Keys the readers use: ``splits`` (rows per split), ``shards`` (per split: ``[{"file", "records"}]``),
    ``image_shape`` ([H, W]), ``pixel_max_observed``. Raises JobError when the version has no commit
    marker (``_SUCCESS``): it was never converted, or its conversion did not finish.
    """
    out = layout.tfrecords(version)
    if not fs.is_committed(out):
        raise JobError(f"no converted data for dataset version {version} at {out} (no _SUCCESS): "
                       "run the convert task for this version first")
    return fs.read_json(paths.join(out, fs.MANIFEST))


def shard_files(layout: paths.Layout, version: str, split: str) -> list[str]:
    """Paths of the TFRecord shards of one split (``train``, ``eval`` or ``score``) of ``version``,
    as the storage lists them (``schema.SHARD_PATTERN``); empty when the split has none."""
    return fs.glob(paths.join(layout.split(version, split), schema.SHARD_PATTERN))


def image_shape(manifest: dict) -> tuple[int, int]:
    """``(H, W)`` in pixels of the version's images, from its conversion manifest."""
    h, w = manifest["image_shape"]
    return int(h), int(w)


def example_rdd(sc: SparkContext, files: list[str]) -> RDD:
    """The serialized ``tf.train.Example`` records (bytes) of the TFRecord ``files`` as an RDD with one
    partition per shard, in file order (what the TFoS feeds of train and infer consume)."""
    return sc.parallelize(files, max(len(files), 1)).flatMap(lambda path: schema.shard_records(path, fs.open_read))
