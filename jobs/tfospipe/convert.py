"""convert: a dataset version's CSV files -> TFRecord shards of tf.train.Example (train / eval / score).

Input, under ``{root}/raw/{version}/``: ``*.csv`` and ``*.csv.gz`` with a label column then H*W
pixel columns, with or without a header; optional unlabeled ``score/*.csv[.gz]`` (pixels only).
Output: ``{root}/tfrecords/{version}/`` (see paths.py), committed atomically with a manifest;
bad rows go to ``{root}/quarantine/{version}/`` with file, line, reason and the raw line.
"""

import gzip
import hashlib
import json
import math
import time

from . import csvparse, fs, paths, schema
from .runner import JobError, library_versions, git_revision

SAMPLE_LINES = 200


def _inputs(raw_dir):
    labeled = [p for ext in ("*.csv", "*.csv.gz") for p in fs.glob(paths.join(raw_dir, ext))]
    score_dir = paths.join(raw_dir, "score")
    unlabeled = [p for ext in ("*.csv", "*.csv.gz") for p in fs.glob(paths.join(score_dir, ext))]
    return sorted(labeled), sorted(unlabeled)


def _head_lines(path, n=SAMPLE_LINES):
    with fs.gfile.GFile(path, "rb") as f:
        stream = gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f
        data = stream.read(1 << 20)
    return [raw for _, raw in csvparse.lines(data)][:n]


def infer_spec(labeled_files, args):
    """Columns from the data (most common field count), image shape from args or the square root."""
    sample = []
    for path in labeled_files[:4]:
        try:
            sample += _head_lines(path)
        except (OSError, EOFError) as e:
            raise JobError(f"cannot read {path}: {e}") from None
    cols = csvparse.infer_num_columns(sample)
    if cols is None:
        raise JobError(f"no data rows found in the first lines of {labeled_files[:4]}: expected CSV lines "
                       "'label,pixel,pixel,...'")
    num_pixels = cols - 1
    shape = args.image_shape
    if shape is None:
        side = math.isqrt(num_pixels)
        if side * side != num_pixels:
            raise JobError(f"{num_pixels} pixel columns (file {labeled_files[0]}) is not a square image; "
                           "pass --image-shape HxW")
        shape = (side, side)
    elif shape[0] * shape[1] != num_pixels:
        raise JobError(f"--image-shape {shape[0]}x{shape[1]} needs {shape[0] * shape[1]} pixel columns, "
                       f"the data has {num_pixels} (file {labeled_files[0]})")
    return shape, num_pixels


def parse_partition(files, num_pixels, pixel_max, eval_fraction, num_shards):
    """Executor side: read whole files and classify their rows.

    Yields ``("file", name, size, sha256, rows)``, ``("ok", split, shard, row_id, label, pixels)`` and
    ``("bad", name, line, kind, reason, raw)``.
    """
    for name, path, labeled in files:
        data = fs.read_bytes(path)
        yield ("file", name, len(data), hashlib.sha256(data).hexdigest(), labeled)
        spec = csvparse.Spec(num_pixels, labeled=labeled, pixel_max=pixel_max)
        for rec in csvparse.parse_file(name, data, spec):
            if rec[0] == "ok":
                _, line_no, label, pixels = rec
                split = csvparse.split_of(label, pixels, eval_fraction) if labeled else "score"
                rid = csvparse.row_id(name, line_no)
                yield ("ok", split, rid % num_shards, rid, label, pixels)
            else:
                _, line_no, kind, reason, raw = rec
                yield ("bad", name, line_no, kind, reason, raw)


def write_shards(out_dir, splits, num_shards):
    """Executor side: partition ``i`` holds shard ``i % num_shards`` of split ``splits[i // num_shards]``."""
    def write(index, rows):
        import tensorflow as tf
        split, shard = splits[index // num_shards], index % num_shards
        name = schema.shard_name(shard)
        count = 0
        with tf.io.TFRecordWriter(paths.join(out_dir, split, name)) as writer:
            for _key, record in rows:
                writer.write(record)
                count += 1
        yield (split, name, count)
    return write


def write_quarantine(out_dir):
    def write(index, rows):
        rows = list(rows)
        if rows:
            body = "".join(json.dumps({"file": r[1], "line": r[2], "kind": r[3], "reason": r[4], "raw": r[5]})
                           + "\n" for r in rows)
            fs.write_bytes(paths.join(out_dir, f"part-{index:05d}.jsonl"), body.encode("utf-8"))
        yield len(rows)
    return write


def run(spark, args):
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    raw_dir = layout.raw(args.version)
    labeled, unlabeled = _inputs(raw_dir)
    if not labeled:
        raise JobError(f"no input for dataset version {args.version}: no *.csv or *.csv.gz files in {raw_dir}. "
                       "Put the version's CSV files there (scripts/make_sample_data.py writes sample versions).")
    image_shape, num_pixels = infer_spec(labeled, args)
    files = [(fs.basename(p), p, True) for p in labeled] + [("score/" + fs.basename(p), p, False) for p in unlabeled]
    splits = ["train", "eval"] + (["score"] if unlabeled else [])
    started = time.time()

    parsed = sc.parallelize(files, len(files)).mapPartitions(
        lambda it: parse_partition(it, num_pixels, args.pixel_max, args.eval_fraction, args.num_shards))
    parsed.persist()
    try:
        return _convert(sc, args, layout, parsed, files, splits, image_shape, started)
    finally:
        parsed.unpersist()


def _convert(sc, args, layout, parsed, files, splits, image_shape, started):
    file_info = parsed.filter(lambda r: r[0] == "file").collect()
    bad = parsed.filter(lambda r: r[0] == "bad")
    ok = parsed.filter(lambda r: r[0] == "ok")
    bad_kinds = dict(bad.map(lambda r: r[3]).countByValue())
    bad_count = sum(bad_kinds.values())

    # The quarantine of every run is kept, passed or failed, so bad rows are never lost.
    with fs.Staging(layout.quarantine(args.version)) as q:
        bad.mapPartitionsWithIndex(write_quarantine(q.path)).sum()
        samples = bad.map(lambda r: f"{r[1]}:{r[2]}: {r[4]}").take(5)
        q.commit({"dataset_version": args.version, "rows": bad_count, "by_kind": bad_kinds, "sample": samples})

    ok_count = ok.count()
    rows_read = ok_count + bad_count
    if rows_read == 0:
        raise JobError(f"the input files of dataset version {args.version} hold no rows: "
                       f"{[f[1] for f in files]}")
    bad_fraction = bad_count / rows_read
    if bad_fraction > args.max_bad_fraction:
        raise JobError(
            f"{bad_count} of {rows_read} rows ({bad_fraction:.1%}) are bad, more than --max-bad-fraction "
            f"{args.max_bad_fraction:.1%}; by kind: {bad_kinds}; first: {samples}. All bad rows are in "
            f"{layout.quarantine(args.version)}; fix the input or raise max_bad_fraction.")

    num_shards = args.num_shards
    split_index = {s: i for i, s in enumerate(splits)}
    stats = ok.map(lambda r: (r[1], r[4], max(r[5]) if r[5] else 0)).cache()
    label_counts = dict(stats.filter(lambda s: s[1] is not None).map(lambda s: s[1]).countByValue())
    pixel_max_observed = stats.map(lambda s: s[2]).max()
    stats.unpersist()

    def to_record(r):
        _, split, shard, rid, label, pixels = r
        return (split_index[split] * num_shards + shard, rid), schema.encode_example(pixels, label, rid)

    out = layout.tfrecords(args.version)
    with fs.Staging(out) as stage:
        for s in splits:
            fs.makedirs(stage.file(s))
        shards = (ok.map(to_record)
                  .repartitionAndSortWithinPartitions(len(splits) * num_shards, lambda k: k[0])
                  .mapPartitionsWithIndex(write_shards(stage.path, splits, num_shards))
                  .collect())
        per_split = {s: sum(c for sp, _, c in shards if sp == s) for s in splits}
        if sum(per_split.values()) != ok_count:
            raise JobError(f"wrote {sum(per_split.values())} records but parsed {ok_count} good rows")
        manifest = {
            "dataset_version": args.version,
            "image_shape": list(image_shape),
            "num_classes": schema.NUM_CLASSES,
            "pixel_max": args.pixel_max,
            "pixel_max_observed": pixel_max_observed,
            "label_counts": {str(k): v for k, v in sorted(label_counts.items())},
            "rows_read": rows_read,
            "rows_written": ok_count,
            "rows_quarantined": bad_count,
            "quarantined_by_kind": bad_kinds,
            "splits": per_split,
            "shards": {s: [{"file": n, "records": c} for sp, n, c in sorted(shards) if sp == s] for s in splits},
            "inputs": [{"file": f[1], "bytes": f[2], "sha256": f[3], "labeled": f[4]} for f in sorted(file_info)],
            "params": {"eval_fraction": args.eval_fraction, "num_shards": num_shards,
                       "max_bad_fraction": args.max_bad_fraction, "pixel_max": args.pixel_max},
            "versions": library_versions(),
            "git_revision": git_revision(),
            "seconds": round(time.time() - started, 1),
        }
        stage.commit(manifest)
    return {"output": out, "rows_read": rows_read, "splits": per_split, "quarantined": bad_count}


def read_manifest(layout, version):
    """The committed conversion manifest of a version, or a JobError saying to run convert first."""
    out = layout.tfrecords(version)
    if not fs.is_committed(out):
        raise JobError(f"no converted data for dataset version {version} at {out} (no _SUCCESS): "
                       "run the convert task for this version first")
    return fs.read_json(paths.join(out, fs.MANIFEST))


def shard_files(layout, version, split):
    return fs.glob(paths.join(layout.split(version, split), schema.SHARD_PATTERN))
