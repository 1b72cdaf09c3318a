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
from collections import Counter

import numpy as np

from . import csvparse, fs, paths, schema
from .runner import JobError, library_versions, git_revision

SAMPLE_LINES = 200


def _inputs(raw_dir):
    labeled = [p for ext in ("*.csv", "*.csv.gz") for p in fs.glob(paths.join(raw_dir, ext))]
    score_dir = paths.join(raw_dir, "score")
    unlabeled = [p for ext in ("*.csv", "*.csv.gz") for p in fs.glob(paths.join(score_dir, ext))]
    return sorted(labeled), sorted(unlabeled)


def _head_lines(path, n=SAMPLE_LINES):
    with fs.open_read(path) as f:  # only the head is read, gzip or not
        data = (gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f).read(1 << 20)
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
    if not -cols <= args.label_column < cols:
        raise JobError(f"--label-column {args.label_column} is outside the {cols} columns of {labeled_files[0]} "
                       f"(use 0..{cols - 1}, or -1 for the last column)")
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


def plan_ranges(files, sizes, num_shards):
    """Split the inputs of one group (labeled or score) into ``max(num_shards, files)`` byte ranges.

    Each range becomes one task and one output shard per split. Gzip files cannot be split (one range
    each); plain files get the other ranges in proportion to their size. Returns
    ``[(shard, name, path, part, parts)]``: range ``part`` of ``parts`` of the file.
    """
    parts = {path: 1 for _name, path in files}
    splittable = [path for _name, path in files if not path.endswith(".gz") and sizes[path] > 0]
    while sum(parts.values()) < num_shards and splittable:
        widest = max(splittable, key=lambda p: sizes[p] / parts[p])
        parts[widest] += 1
    ranges = []
    for name, path in files:
        for part in range(parts[path]):
            ranges.append((len(ranges), name, path, part, parts[path]))
    return ranges


def scan_file(name, path, parts):
    """Executor side, pass 1: size and checksum of a file, and the line-aligned byte span and first
    line number of each of its ``parts`` ranges (a range owns the lines that start inside it)."""
    started = time.time()
    data = fs.read_bytes(path)
    size = len(data)
    spans = []
    for part in range(parts):
        if path.endswith(".gz"):
            spans.append((0, size, 1))
            continue
        start, end = size * part // parts, size * (part + 1) // parts
        q = start if start == 0 or data[start - 1:start] == b"\n" else data.find(b"\n", start) + 1 or size
        r = end if end == size or data[end - 1:end] == b"\n" else data.find(b"\n", end) + 1 or size
        q = min(q, r)
        spans.append((q, r, data.count(b"\n", 0, q) + 1))
    return {"name": name, "path": path, "bytes": size, "sha256": hashlib.sha256(data).hexdigest(), "spans": spans,
            "span": (started, time.time())}


def convert_range(task, stage_dir, quarantine_dir, splits, num_pixels, args):
    """Executor side, pass 2: parse one range, write its shard of each split and its quarantine part."""
    shard, name, path, q, r, first_line, labeled = task
    started = time.time()
    if path.endswith(".gz"):
        try:
            data = csvparse.decompress(path, fs.read_bytes(path))
            error = None
        except csvparse.RowError as e:
            data, error = b"", e
    else:
        data, error = fs.read_range(path, q, r), None
    spec = csvparse.Spec(num_pixels, labeled=labeled, pixel_max=args["pixel_max"],
                         label_col=args["label_column"] if labeled else 0)
    bad = [] if error is None else [(0, error.kind, str(error), "")]
    counts = {split: 0 for split in splits}
    label_counts, pixel_max = Counter(), 0
    writers = {split: schema.shard_writer(fs.open_write(paths.join(stage_dir, split, schema.shard_name(
        shard, args["compression"]))), args["compression"]) for split in splits}
    try:  # streamed chunk by chunk: memory stays flat whatever the size of the range
        for labels, pixels, lines, chunk_bad in csvparse.iter_block(data, spec, first_line, header_allowed=(q == 0)):
            bad += chunk_bad
            if not len(labels):
                continue
            row_ids = csvparse.row_ids(name, lines)
            if labeled:
                row_splits = csvparse.splits_of(labels, pixels, args["eval_fraction"])
                label_counts.update(labels.tolist())
            else:
                row_splits = np.full(len(labels), "score")
            pixel_max = max(pixel_max, int(pixels.max()) if pixels.size else 0)
            for split in splits:
                pick = np.flatnonzero(row_splits == split)
                records = schema.encode_examples(pixels[pick], labels[pick] if labeled else None, row_ids[pick])
                writers[split].write(b"".join(schema.tfrecord_frame(record) for record in records))
                counts[split] += len(pick)
    finally:
        for writer in writers.values():
            writer.close()
    if bad:
        body = "".join(json.dumps({"file": name, "line": line, "kind": kind, "reason": reason, "raw": raw}) + "\n"
                       for line, kind, reason, raw in bad)
        group = "labeled" if labeled else "score"
        fs.write_bytes(paths.join(quarantine_dir, f"part-{group}-{shard:05d}.jsonl"), body.encode("utf-8"))
    return {
        "counts": counts,
        "bad_kinds": dict(Counter(kind for _l, kind, _r, _raw in bad)),
        "bad_samples": [f"{name}:{line}: {reason}" for line, _k, reason, _raw in bad[:5]],
        "label_counts": dict(label_counts),
        "pixel_max_observed": pixel_max,
        "span": (started, time.time()),
    }


def run(spark, args):
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    raw_dir = layout.raw(args.version)
    labeled, unlabeled = _inputs(raw_dir)
    if not labeled:
        raise JobError(f"no input for dataset version {args.version}: no *.csv or *.csv.gz files in {raw_dir}. "
                       "Put the version's CSV files there (scripts/make_sample_data.py writes sample versions).")
    image_shape, num_pixels = infer_spec(labeled, args)
    started = time.time()
    groups = [("labeled", [(fs.basename(p), p) for p in labeled], ["train", "eval"])]
    if unlabeled:
        groups.append(("score", [("score/" + fs.basename(p), p) for p in unlabeled], ["score"]))
    sizes = {p: fs.size(p) for p in labeled + unlabeled}
    plans = {g: plan_ranges(files, sizes, args.num_shards) for g, files, _splits in groups}

    # pass 1: checksums and line-aligned spans of every range, one task per file
    per_file = {}
    for g, files, _splits in groups:
        for _shard, name, path, _part, parts in plans[g]:
            per_file[path] = (name, path, parts)
    t = time.time()
    scans = sc.parallelize(list(per_file.values()), len(per_file)).map(lambda f: scan_file(*f)).collect()
    pass_seconds = {"scan": round(time.time() - t, 2)}
    spans = {s["path"]: s["spans"] for s in scans}

    out = layout.tfrecords(args.version)
    all_splits = [s for _g, _f, splits in groups for s in splits]
    params = {"pixel_max": args.pixel_max, "eval_fraction": args.eval_fraction, "compression": args.compression,
              "label_column": args.label_column}
    with fs.Staging(out) as stage, fs.Staging(layout.quarantine(args.version)) as quarantine:
        for split in all_splits:
            fs.makedirs(stage.file(split))
        tasks = []
        for g, _files, splits in groups:
            for shard, name, path, part, _parts in plans[g]:
                q, r, first_line = spans[path][part]
                tasks.append(((shard, name, path, q, r, first_line, g == "labeled"), splits))
        stage_dir, quarantine_dir = stage.path, quarantine.path
        t = time.time()
        stats = sc.parallelize(tasks, len(tasks)).map(
            lambda task: convert_range(task[0], stage_dir, quarantine_dir, task[1], num_pixels, params)).collect()
        pass_seconds["convert"] = round(time.time() - t, 2)

        per_split = {s: sum(st["counts"].get(s, 0) for st in stats) for s in all_splits}
        bad_kinds = Counter()
        label_counts = Counter()
        for st in stats:
            bad_kinds.update(st["bad_kinds"])
            label_counts.update({int(k): v for k, v in st["label_counts"].items()})
        bad_count = sum(bad_kinds.values())
        samples = [x for st in stats for x in st["bad_samples"]][:5]
        ok_count = sum(per_split.values())
        rows_read = ok_count + bad_count
        # The quarantine of every run is kept, passed or failed, so bad rows are never lost.
        quarantine.commit({"dataset_version": args.version, "rows": bad_count, "by_kind": dict(bad_kinds),
                           "sample": samples})
        if rows_read == 0:
            raise JobError(f"the input files of dataset version {args.version} hold no rows: {labeled + unlabeled}")
        bad_fraction = bad_count / rows_read
        if bad_fraction > args.max_bad_fraction:
            raise JobError(
                f"{bad_count} of {rows_read} rows ({bad_fraction:.1%}) are bad, more than --max-bad-fraction "
                f"{args.max_bad_fraction:.1%}; by kind: {dict(bad_kinds)}; first: {samples}. All bad rows are in "
                f"{layout.quarantine(args.version)}; fix the input or raise max_bad_fraction.")
        shards = {}
        for (task, splits), st in zip(tasks, stats):
            for split in splits:
                shards.setdefault(split, []).append({"file": schema.shard_name(task[0], args.compression),
                                                     "records": st["counts"][split],
                                                     "source": f"{task[1]}:{task[3]}-{task[4]}"})
        manifest = {
            "dataset_version": args.version,
            "image_shape": list(image_shape),
            "num_classes": schema.NUM_CLASSES,
            "pixel_max": args.pixel_max,
            "pixel_max_observed": max(st["pixel_max_observed"] for st in stats),
            "label_counts": {str(k): v for k, v in sorted(label_counts.items())},
            "rows_read": rows_read,
            "rows_written": ok_count,
            "rows_quarantined": bad_count,
            "quarantined_by_kind": dict(bad_kinds),
            "splits": per_split,
            "shards": shards,
            "inputs": [{"file": s["name"], "bytes": s["bytes"], "sha256": s["sha256"],
                        "labeled": not s["name"].startswith("score/")} for s in sorted(scans, key=lambda s: s["name"])],
            "compression": args.compression,
            "params": {"eval_fraction": args.eval_fraction, "num_shards": args.num_shards,
                       "max_bad_fraction": args.max_bad_fraction, "pixel_max": args.pixel_max,
                       "compression": args.compression, "label_column": args.label_column},
            "versions": library_versions(),
            "git_revision": git_revision(),
            "seconds": round(time.time() - started, 1),
            "pass_seconds": pass_seconds,
            # time the executors spent on the data (first task start to last task end, per pass),
            # without Spark and Python worker start-up
            "data_seconds": {name: round(max(x["span"][1] for x in xs) - min(x["span"][0] for x in xs), 2)
                             for name, xs in (("scan", scans), ("convert", stats))},
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


def example_rdd(sc, files):
    """The serialized Examples of ``files`` as an RDD with one partition per shard (the TFoS feeds)."""
    return sc.parallelize(files, max(len(files), 1)).flatMap(
        lambda path: schema.tfrecord_payloads(fs.read_bytes(path), compressed=schema.is_compressed(path)))
