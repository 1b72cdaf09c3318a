"""convert: a dataset version's CSV files -> TFRecord shards of tf.train.Example (train / eval / score).

Input, under ``{root}/raw/{version}/``: CSV files with a label column then H*W pixel columns, with or
without a header; optional unlabeled ``score/`` files (pixels only). What is read (:func:`list_inputs`):
``*.csv`` and ``*.tsv`` in any letter case, plain or compressed (``.gz``, ``.bz2``, ``.xz``), and
directories of part files as Spark and Hadoop write them (``digits.csv/part-*.csv``), where names
starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are skipped as Hadoop does. Any other file fails
the run, naming it. Each file's dialect (UTF-8 byte-order mark, delimiter, quoting, line terminator,
header) is sniffed from its head (csvparse.sniff) and recorded in the manifest.
Output: ``{root}/tfrecords/{version}/`` (see paths.py), committed atomically with a manifest;
bad rows go to ``{root}/quarantine/{version}/`` with file, line, reason and the raw line. Beside the
shards, ``_lineage/`` indexes every written row: ``row_id`` -> source file (relative to
``raw/{version}/``), line and split (:class:`LineageWriter`), committed in the same rename.
"""

import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import json
import lzma
import math
import time
import zlib
from collections import Counter

import numpy as np

from . import csvparse, fs, paths, schema
from .runner import JobError, library_versions, git_revision

#: Lines sniffed from the head of each file, and the head's usual size limit (bytes): it reads on
#: past it only to complete a few whole lines (an image of 600x600 pixels is a 1.4 MB line).
HEAD_LINES = 200
HEAD_BYTES = 1 << 20
#: The longest line convert accepts (bytes); a longer one is an error rather than unbounded memory.
MAX_LINE_BYTES = 256 << 20
#: Bytes read per step when streaming a file (scan and convert passes).
READ_BYTES = csvparse.CHUNK_BYTES
#: File extensions read as CSV (any letter case; ``.tsv`` is sniffed like the rest).
CSV_EXTENSIONS = (".csv", ".tsv")
#: Compressed inputs and their readers (Python's standard library streams; one Spark task each).
COMPRESSIONS = {".gz": lambda f: gzip.GzipFile(fileobj=f), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
#: What a truncated or damaged compressed stream raises while it is read.
_CORRUPT = (EOFError, OSError, lzma.LZMAError, zlib.error)
#: Rows of the lineage index buffered per Parquet row group (about 30 bytes a row in memory).
LINEAGE_ROWS_PER_GROUP = 1 << 20


def compression_of(name):
    """The compression suffix of an input name (``.gz``, ``.bz2``, ``.xz``), or None."""
    lower = name.lower()
    return next((c for c in COMPRESSIONS if lower.endswith(c)), None)


def is_csv_name(name):
    """Whether convert reads a file of this name: a CSV extension, optionally compressed."""
    lower = name.lower()
    comp = compression_of(lower)
    return (lower[:-len(comp)] if comp else lower).endswith(CSV_EXTENSIONS)


def list_inputs(raw_dir):
    """The input files of a version directory: ``(labeled, unlabeled, skipped, unreadable)``.

    ``labeled`` and ``unlabeled`` (under ``score/``) are sorted ``(name, path)`` pairs, ``name``
    relative to ``raw_dir`` (``a.csv``, ``digits.csv/part-00000.csv``, ``score/s.csv``): it keys row
    ids and the quarantine. Directories are read recursively (Spark output, partition directories).
    ``skipped``: names starting with ``_`` or ``.`` (Hadoop's hidden files). ``unreadable``: every
    other file, which the caller refuses.
    """
    groups = {"labeled": [], "unlabeled": []}
    skipped, unreadable = [], []

    def walk(directory, prefix, group):
        for entry in fs.listdir(directory):
            path, name = paths.join(directory, entry), prefix + entry
            if entry.startswith(("_", ".")):
                skipped.append(name)
            elif fs.isdir(path):
                walk(path, name + "/", "unlabeled" if (prefix, entry) == ("", "score") else group)
            elif is_csv_name(entry):
                groups[group].append((name, path))
            else:
                unreadable.append(name)

    walk(raw_dir, "", "labeled")
    return sorted(groups["labeled"]), sorted(groups["unlabeled"]), sorted(skipped), sorted(unreadable)


@contextlib.contextmanager
def open_input(path):
    """A binary reader of an input file, decompressing it by its suffix: ``(reader, raw file)``."""
    with fs.open_read(path) as raw:
        comp = compression_of(path)
        if comp is None:
            yield raw, raw
        else:
            with COMPRESSIONS[comp](raw) as reader:
                yield reader, raw


def _corrupt(name, path, error, eol=b"\n"):
    """The InputError of a corrupt compressed input: what the reader raised, the compressed byte
    where it gave up, and how much of the file still decompresses (re-read in small pieces)."""
    lines = good = 0
    with open_input(path) as (reader, raw):
        try:
            while piece := reader.read(1 << 16):
                lines, good = lines + piece.count(eol), good + len(piece)
        except _CORRUPT:
            pass
        try:
            where = f"at compressed byte {raw.tell():,} of {fs.size(path):,}"
        except (OSError, ValueError):
            where = "part-way"
    return csvparse.InputError(f"{name} is corrupt ({type(error).__name__}: {error}) {where}: only its first "
                               f"{lines:,} lines ({good:,} bytes decompressed) can be read")


def read_head(name, path):
    """``(bytes, complete)``: the first whole lines of an input file (decompressed), up to
    :data:`HEAD_LINES` lines or :data:`HEAD_BYTES` bytes, and whether that is the whole file.

    Raises csvparse.InputError when the file is corrupt or no line ends within MAX_LINE_BYTES.
    """
    data = b""
    with open_input(path) as (reader, raw):
        while True:
            try:
                piece = reader.read(HEAD_BYTES)
            except _CORRUPT as e:
                raise _corrupt(name, path, e) from None
            if not piece:
                return data, True
            data += piece
            ends = max(data.count(b"\n"), data.count(b"\r"))
            if ends >= HEAD_LINES or (len(data) >= HEAD_BYTES and ends >= 5):
                return data, False
            if len(data) >= MAX_LINE_BYTES:
                if not ends:
                    raise csvparse.InputError(f"{name}: no line ends within its first {MAX_LINE_BYTES:,} bytes; "
                                              "is it a CSV file with one row per line?")
                return data, False


def sniff_inputs(files):
    """``{path: (Dialect, complete)}`` of every ``(name, path)``; a JobError for a file that cannot be read."""
    out = {}
    for name, path in files:
        try:
            head, complete = read_head(name, path)
            out[path] = (csvparse.sniff(head, name, complete), complete)
        except csvparse.InputError as e:
            raise JobError(str(e)) from None
        except OSError as e:
            raise JobError(f"cannot read {path}: {e}") from None
    return out


def no_rows_note(dialect, complete):
    """Why a file holds no rows ('empty', 'header only', 'blank lines only'), or None when it may.

    Only a file whose whole content was sniffed (``complete``) can be known to hold no rows."""
    if not complete or dialect.data_lines:
        return None
    if dialect.header is not None:
        return "header only"
    return "blank lines only" if dialect.blank_lines else "empty"


def infer_spec(labeled, dialects, args):
    """(image shape, pixel count) from the data: the most common field count over the files' heads,
    and the image shape from args or the square root of the pixel count. JobError when no file holds
    a data row, or the columns do not fit the label column or the shape."""
    counts = Counter()
    for _name, path in labeled:
        dialect = dialects[path][0]
        if dialect.columns is not None:
            counts[dialect.columns] += dialect.data_lines
    if not counts:
        raise JobError(f"no data rows in any labeled input file ({[n for n, _p in labeled]}): expected CSV lines "
                       "'label,pixel,pixel,...'")
    cols = counts.most_common(1)[0][0]
    first = next(name for name, path in labeled if dialects[path][0].columns == cols)
    seen = f"{cols} fields per line (file {first}, delimiter {dialects[dict(labeled)[first]][0].delimiter!r})"
    num_pixels = cols - 1
    if not -cols <= args.label_column < cols:
        raise JobError(f"--label-column {args.label_column} is outside the {seen} "
                       f"(use 0..{cols - 1}, or -1 for the last column)")
    shape = args.image_shape
    if shape is None:
        side = math.isqrt(num_pixels)
        if side * side != num_pixels:
            raise JobError(f"{seen}: {num_pixels} pixel columns after the label is not a square image; "
                           "pass --image-shape HxW for a non-square image")
        shape = (side, side)
    elif shape[0] * shape[1] != num_pixels:
        raise JobError(f"--image-shape {shape[0]}x{shape[1]} needs {shape[0] * shape[1]} pixel columns, "
                       f"the data has {num_pixels}: {seen}")
    return shape, num_pixels


def plan_ranges(files, sizes, num_shards):
    """Split the inputs of one group (labeled or score) into ``max(num_shards, files)`` byte ranges.

    Each range becomes one task and one output shard per split. Compressed files cannot be split (one
    range each); plain files get the other ranges in proportion to their size. Returns
    ``[(shard, name, path, part, parts)]``: range ``part`` of ``parts`` of the file.
    """
    parts = {path: 1 for _name, path in files}
    splittable = [path for _name, path in files if compression_of(path) is None and sizes[path] > 0]
    while sum(parts.values()) < num_shards and splittable:
        widest = max(splittable, key=lambda p: sizes[p] / parts[p])
        parts[widest] += 1
    ranges = []
    for name, path in files:
        for part in range(parts[path]):
            ranges.append((len(ranges), name, path, part, parts[path]))
    return ranges


def _line_start(f, offset, eol, size):
    """The first line start at or after byte ``offset`` of an open plain file."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while pos < size:
        piece = f.read(1 << 16)
        if not piece:
            break
        i = piece.find(eol)
        if i >= 0:
            return pos + i + 1
        pos += len(piece)
    return size


def scan_file(name, path, parts, eol=b"\n"):
    """Executor side, pass 1: size and SHA-256 of a file (as stored), and the line-aligned byte span
    ``(start, end, first line number)`` of each of its ``parts`` ranges (a range owns the lines that
    start inside it). Streams the file in READ_BYTES pieces: memory does not grow with its size."""
    started = time.time()
    size = fs.size(path)
    compressed = compression_of(path) is not None
    digest = hashlib.sha256()
    with fs.open_read(path) as f:
        starts = [0] if compressed else [_line_start(f, size * part // parts, eol, size) for part in range(parts)]
        line_of = {0: 1}
        pending = sorted(set(starts) - {0})
        f.seek(0)
        pos, seen = 0, 0
        while True:
            piece = f.read(READ_BYTES)
            if not piece:
                break
            digest.update(piece)
            end = pos + len(piece)
            while pending and pending[0] <= end:
                offset = pending.pop(0)
                line_of[offset] = seen + piece.count(eol, 0, offset - pos) + 1
            seen += piece.count(eol)
            pos = end
        for t in pending:  # offsets at the very end of the file
            line_of[t] = seen + 1
    if compressed:
        spans = [(0, size, 1)] * parts
    else:
        bounds = starts + [size]
        spans = [(bounds[i], max(bounds[i], bounds[i + 1]), line_of[bounds[i]]) for i in range(parts)]
    return {"name": name, "path": path, "bytes": size, "sha256": digest.hexdigest(), "spans": spans,
            "span": (started, time.time())}


def range_chunks(name, path, start, end, eol):
    """Whole-line pieces (about READ_BYTES each) of bytes ``[start, end)`` of a plain file, or of the
    whole decompressed stream of a compressed one. Raises csvparse.InputError when the stream is
    corrupt or truncated, or a line is longer than MAX_LINE_BYTES."""
    compressed = compression_of(path) is not None
    with open_input(path) as (reader, raw):
        if not compressed:
            reader.seek(start)
        remaining = None if compressed else end - start
        carry = b""
        while remaining is None or remaining > 0:
            try:
                piece = reader.read(READ_BYTES if remaining is None else min(READ_BYTES, remaining))
            except _CORRUPT as e:
                raise _corrupt(name, path, e, eol) from None
            if not piece:
                break
            if remaining is not None:
                remaining -= len(piece)
            data = carry + piece
            cut = data.rfind(eol) + 1
            carry = data[cut:]
            if cut:
                yield data[:cut]
            elif len(carry) > MAX_LINE_BYTES:
                raise csvparse.InputError(f"{name}: a line longer than {MAX_LINE_BYTES:,} bytes")
        if carry:
            yield carry


def lineage_name(group, shard):
    """File name of one range's part of the lineage index: ``rows-{labeled,score}-NNNNN.parquet``
    (never ``part-*``, so no shard glob matches it, and it sits under ``_lineage/``)."""
    return f"rows-{group}-{shard:05d}.parquet"


class LineageWriter:
    """Executor side: one range's part of the lineage index, a Parquet file with columns
    ``row_id`` int64, ``file`` string (the input's name relative to ``raw/{version}/``), ``line`` int64
    (1-based line number in the decompressed file, as the quarantine counts them) and ``split`` string.

    Rows are buffered and written as row groups of up to LINEAGE_ROWS_PER_GROUP rows, so memory stays
    bounded whatever the range's size. ``rows``: rows written so far.
    """

    COLUMNS = ("row_id", "file", "line", "split")

    def __init__(self, path: str, name: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.name, self.rows, self._pending = pa, name, 0, []
        self.schema = pa.schema([("row_id", pa.int64()), ("file", pa.string()), ("line", pa.int64()),
                                 ("split", pa.string())])
        self._sink = fs.open_write(path)
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")

    def add(self, row_ids: np.ndarray, lines: np.ndarray, splits: np.ndarray) -> None:
        """Index rows: ``row_ids``, ``lines`` int64 [n] and ``splits`` str [n] of one parsed block."""
        self._pending.append((np.asarray(row_ids, np.int64), np.asarray(lines, np.int64), np.asarray(splits)))
        self.rows += len(row_ids)
        if sum(len(p[0]) for p in self._pending) >= LINEAGE_ROWS_PER_GROUP:
            self._flush()

    def _flush(self):
        if not self._pending:
            return
        pa = self._pa
        ids, lines, splits = (np.concatenate([p[i] for p in self._pending]) for i in range(3))
        self._pending = []
        self._writer.write_table(pa.table([pa.array(ids), pa.array([self.name] * len(ids), pa.string()),
                                           pa.array(lines), pa.array(splits.astype(str), pa.string())],
                                          schema=self.schema))

    def close(self) -> None:
        try:
            self._flush()
            self._writer.close()
        finally:
            self._sink.close()


def convert_range(task, stage_dir, quarantine_dir, splits, num_pixels, params):
    """Executor side, pass 2: parse one range, write its shard of each split and its quarantine part.

    Streams the range (memory stays flat whatever its size). Every written row is indexed in the range's
    part of the lineage index (``_lineage/``, see :class:`LineageWriter`). A corrupt input is not a bad
    row: the range returns ``fatal`` (the file, where, and the rows read before it) and the driver fails
    the run.
    """
    shard, name, path, q, r, first_line, labeled, dialect = task
    dialect = csvparse.Dialect(**dialect)
    started = time.time()
    spec = csvparse.Spec(num_pixels, labeled=labeled, pixel_max=params["pixel_max"],
                         label_col=params["label_column"] if labeled else 0)
    bad, fatal = [], None
    counts = {split: 0 for split in splits}
    label_counts, pixel_max, not_rows = Counter(), 0, Counter()
    writers = {split: schema.shard_writer(fs.open_write(paths.join(stage_dir, split, schema.shard_name(
        shard, params["compression"]))), params["compression"]) for split in splits}
    lineage = LineageWriter(paths.join(stage_dir, paths.LINEAGE_DIR, lineage_name("labeled" if labeled else "score",
                                                                                   shard)), name)
    line_no, at_start = first_line, q == 0
    try:
        for chunk in range_chunks(name, path, q, r, dialect.eol):
            for labels, pixels, lines, chunk_bad in csvparse.iter_block(chunk, spec, line_no, at_start, dialect,
                                                                        not_rows):
                bad += chunk_bad
                if not len(labels):
                    continue
                row_ids = csvparse.row_ids(name, lines)
                if labeled:
                    row_splits = csvparse.splits_of(labels, pixels, params["eval_fraction"])
                    label_counts.update(labels.tolist())
                else:
                    row_splits = np.full(len(labels), "score")
                lineage.add(row_ids, lines, row_splits)
                pixel_max = max(pixel_max, int(pixels.max()) if pixels.size else 0)
                for split in splits:
                    pick = np.flatnonzero(row_splits == split)
                    records = schema.encode_examples(pixels[pick], labels[pick] if labeled else None, row_ids[pick])
                    writers[split].write(b"".join(schema.tfrecord_frame(record) for record in records))
                    counts[split] += len(pick)
            line_no += chunk.count(dialect.eol)
            at_start = False
    except csvparse.InputError as e:
        fatal = (f"{e}. Replace it with a complete copy (gzip -t, bzip2 -t or xz -t checks one), or move it out "
                 "of the version directory")
    finally:
        for writer in writers.values():
            writer.close()
        lineage.close()
    if bad and fatal is None:
        body = "".join(json.dumps({"file": name, "line": line, "kind": kind, "reason": reason, "raw": raw}) + "\n"
                       for line, kind, reason, raw in bad)
        group = "labeled" if labeled else "score"
        fs.write_bytes(paths.join(quarantine_dir, f"part-{group}-{shard:05d}.jsonl"), body.encode("utf-8"))
    return {
        "name": name,
        "fatal": fatal,
        "counts": counts,
        "rows": sum(counts.values()) + len(bad),
        "lineage_rows": lineage.rows,
        "not_rows": dict(not_rows),
        "bad_kinds": dict(Counter(kind for _l, kind, _r, _raw in bad)),
        "bad_samples": [f"{name}:{line}: {reason}" for line, _k, reason, _raw in bad[:5]],
        "label_counts": dict(label_counts),
        "pixel_max_observed": pixel_max,
        "span": (started, time.time()),
    }


def _refuse_unreadable(raw_dir, unreadable):
    if unreadable:
        raise JobError(
            f"{raw_dir} holds files convert does not read: {unreadable[:10]}{' ...' if len(unreadable) > 10 else ''}. "
            f"It reads {', '.join('*' + e for e in CSV_EXTENSIONS)} in any letter case, optionally compressed "
            f"({', '.join(COMPRESSIONS)}), and directories of part files (names starting with '_' or '.' are "
            "skipped). Convert those files to CSV, or move them out of the version directory.")


def run(spark, args):
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    raw_dir = layout.raw(args.version)
    labeled, unlabeled, skipped, unreadable = list_inputs(raw_dir)
    if not labeled:
        raise JobError(f"no input for dataset version {args.version}: no *.csv or *.csv.gz files in {raw_dir} "
                       "(nor .tsv, .bz2, .xz, or directories of part files). Put the version's CSV files there "
                       "(scripts/make_sample_data.py writes sample versions).")
    _refuse_unreadable(raw_dir, unreadable)
    dialects = sniff_inputs(labeled + unlabeled)
    image_shape, num_pixels = infer_spec(labeled, dialects, args)
    started = time.time()
    empty = {path: no_rows_note(*dialects[path]) for _name, path in labeled + unlabeled}
    groups = [("labeled", [(n, p) for n, p in labeled if not empty[p]], ["train", "eval"])]
    if any(not empty[p] for _n, p in unlabeled):
        groups.append(("score", [(n, p) for n, p in unlabeled if not empty[p]], ["score"]))
    sizes = {p: fs.size(p) for p in dict(labeled + unlabeled).values()}
    plans = {g: plan_ranges(files, sizes, args.num_shards) for g, files, _splits in groups}

    # pass 1: checksums and line-aligned spans of every range, one task per file (files without rows too)
    per_file = {path: (name, path, 1, dialects[path][0].eol) for name, path in labeled + unlabeled}
    for g, files, _splits in groups:
        for _shard, name, path, _part, parts in plans[g]:
            per_file[path] = (name, path, parts, dialects[path][0].eol)
    t = time.time()
    scans = sc.parallelize(list(per_file.values()), len(per_file)).map(lambda f: scan_file(*f)).collect()
    pass_seconds = {"scan": round(time.time() - t, 2)}
    spans = {s["path"]: s["spans"] for s in scans}

    out = layout.tfrecords(args.version)
    all_splits = [s for _g, _f, splits in groups for s in splits]
    params = {"pixel_max": args.pixel_max, "eval_fraction": args.eval_fraction, "compression": args.compression,
              "label_column": args.label_column}
    with fs.Staging(out) as stage, fs.Staging(layout.quarantine(args.version)) as quarantine:
        for split in all_splits + [paths.LINEAGE_DIR]:
            fs.makedirs(stage.file(split))
        tasks = []
        for g, _files, splits in groups:
            for shard, name, path, part, _parts in plans[g]:
                q, r, first_line = spans[path][part]
                dialect = dialects[path][0]
                tasks.append(((shard, name, path, q, r, first_line, g == "labeled", dataclasses.asdict(dialect)),
                              splits))
        stage_dir, quarantine_dir = stage.path, quarantine.path
        t = time.time()
        stats = sc.parallelize(tasks, len(tasks)).map(
            lambda task: convert_range(task[0], stage_dir, quarantine_dir, task[1], num_pixels, params)).collect()
        pass_seconds["convert"] = round(time.time() - t, 2)
        fatal = [st["fatal"] for st in stats if st["fatal"]]
        if fatal:
            raise JobError(f"dataset version {args.version}: {fatal[0]}" + (
                f" (and {len(fatal) - 1} more corrupt inputs)" if len(fatal) > 1 else "") + "; nothing was written")

        per_split = {s: sum(st["counts"].get(s, 0) for st in stats) for s in all_splits}
        bad_kinds, label_counts, not_rows = Counter(), Counter(), Counter()
        per_input = {}
        for st in stats:
            bad_kinds.update(st["bad_kinds"])
            label_counts.update({int(k): v for k, v in st["label_counts"].items()})
            not_rows.update(st["not_rows"])
            file_counts = per_input.setdefault(st["name"], Counter())
            file_counts.update(dict(st["not_rows"], rows=st["rows"]))
        bad_count = sum(bad_kinds.values())
        samples = [x for st in stats for x in st["bad_samples"]][:5]
        ok_count = sum(per_split.values())
        lineage_rows = sum(st["lineage_rows"] for st in stats)
        if lineage_rows != ok_count:
            raise JobError(f"the lineage index holds {lineage_rows} rows for {ok_count} rows written: the conversion "
                           "is inconsistent, nothing was published; rerun the task and report this if it repeats")
        rows_read = ok_count + bad_count
        # The quarantine of every run is kept, passed or failed, so bad rows are never lost.
        quarantine.commit({"dataset_version": args.version, "rows": bad_count, "by_kind": dict(bad_kinds),
                           "sample": samples})
        if rows_read == 0:
            raise JobError(f"the input files of dataset version {args.version} hold no rows: "
                           f"{[n for n, _p in labeled + unlabeled]}")
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
        unlabeled_names = {n for n, _p in unlabeled}
        inputs = []
        for s in sorted(scans, key=lambda s: s["name"]):
            dialect, _complete = dialects[s["path"]]
            entry = {"file": s["name"], "bytes": s["bytes"], "sha256": s["sha256"],
                     "labeled": s["name"] not in unlabeled_names, "dialect": dialect.describe(),
                     "rows": 0, "blank_lines": 0, "header_lines": 0}
            entry.update(per_input.get(s["name"], {}))
            if empty[s["path"]]:  # not converted: its whole content was sniffed
                entry.update(no_rows=empty[s["path"]], blank_lines=dialect.blank_lines,
                             header_lines=int(dialect.header is not None))
                not_rows.update({"blank_lines": dialect.blank_lines, "header_lines": int(dialect.header is not None)})
            inputs.append(entry)
        manifest = {
            "dataset_version": args.version,
            "image_shape": list(image_shape),
            "num_classes": schema.NUM_CLASSES,
            "pixel_max": args.pixel_max,
            "pixel_max_observed": max([st["pixel_max_observed"] for st in stats] or [0]),
            "label_counts": {str(k): v for k, v in sorted(label_counts.items())},
            "rows_read": rows_read,
            "rows_written": ok_count,
            "rows_quarantined": bad_count,
            "quarantined_by_kind": dict(bad_kinds),
            # lines that are not rows, counted apart: rows_read = rows_written + rows_quarantined
            "blank_lines": not_rows["blank_lines"],
            "header_lines": not_rows["header_lines"],
            "splits": per_split,
            "shards": shards,
            # row_id -> source file (relative to raw/<version>/), line and split of every written row
            "lineage": {"dir": paths.LINEAGE_DIR, "rows": lineage_rows, "columns": list(LineageWriter.COLUMNS),
                        "files": sorted(lineage_name("labeled" if t[6] else "score", t[0]) for t, _s in tasks)},
            "inputs": inputs,
            "skipped_hidden": skipped,
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
    return {"output": out, "rows_read": rows_read, "splits": per_split, "quarantined": bad_count,
            "blank_lines": not_rows["blank_lines"], "header_lines": not_rows["header_lines"]}
