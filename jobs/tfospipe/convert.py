"""convert: a dataset version's CSV files -> TFRecord shards of tf.train.Example (train / eval / score).

Input, under ``{root}/raw/{version}/``: CSV files with a label column then H*W pixel columns, with or
without a header; optional unlabeled ``score/`` files (pixels only). What is read (inputs.list_inputs):
``*.csv`` and ``*.tsv`` in any letter case, plain or compressed (``.gz``, ``.bz2``, ``.xz``), and
directories of part files as Spark and Hadoop write them (``digits.csv/part-*.csv``), where names
starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are skipped as Hadoop does. Files under a Hive-style
folder ``label=K`` (Spark's ``partitionBy("label")``: ``digits.csv/label=3/part-*.csv``) hold the pixels
only and every row takes label K from the folder, as Spark's partition discovery reads it; a ``label=``
folder whose value is no label, and folders of other columns (``source=x/``), fail the run naming them
(inputs.list_inputs), as does a file under ``label=K`` that holds a label column too. Any other file fails
the run, naming it, and so does a file name that is not UTF-8 (it could not be stored as it is in the
manifest and the lineage index). Each file's dialect (UTF-8 byte-order mark, delimiter, quoting, line terminator,
header) is sniffed from its head (csvparse.sniff) and recorded in the manifest.
Output: ``{root}/tfrecords/{version}/`` (see paths.py), committed atomically with a manifest;
bad rows go to ``{root}/quarantine/{version}/`` with file, line, reason and the raw line. Beside the
shards, ``_lineage/`` indexes every written row: ``row_id`` -> source file (relative to
``raw/{version}/``), line and split (lineage.LineageWriter), committed in the same rename, and so is
``_stats.json``: each split's statistics (datastats: rows, labels, blank and duplicate rows, per-pixel
min, max, mean, std, zeros and histogram; train/eval image overlap), counted in the convert pass from
the rows as they are written, merged on the driver (``--statistics off``: not computed, not written).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from . import csvparse, datastats, fs, inputs, paths, runner, schema
from .inputs import Input, list_inputs, read_head
from .jobargs import ConvertParams
from .lineage import LineageWriter, lineage_name
from .runner import JobError, executor_python, executors, git_revision, library_versions, requested_executors

if TYPE_CHECKING:  # Spark is only needed at run time
    from pyspark.sql import SparkSession

#: What the sniffing read of each input, by path: ``(dialect, whether the head was the whole file)``.
Dialects = dict[str, tuple[csvparse.Dialect, bool]]
#: One byte range of one input, as planned: ``(shard, name, path, part, parts)``.
PlannedRange = tuple[int, str, str, int, int]


@dataclasses.dataclass(frozen=True)
class RangeTask:
    """One task of the convert pass: a line-aligned byte range of one input file and the shards it writes.

    ``shard``: index of the output shard, per group (``part-{shard:05d}`` of each split in ``splits``).
    ``name``: the input's name relative to ``raw/{version}/``; ``path``: where it lies. ``start``,
    ``end``: bytes ``[start, end)`` of a plain file (the whole stored file for a compressed one, which
    is never split). ``first_line``: 1-based line number of the line at ``start``. ``group``:
    ``labeled`` or ``score`` (unlabeled). ``splits``: ``("train", "eval")`` or ``("score",)``.
    ``dialect``: the file's dialect, as sniffed from its head.
    """

    shard: int
    name: str
    path: str
    start: int
    end: int
    first_line: int
    group: str
    splits: tuple[str, ...]
    dialect: csvparse.Dialect

    @property
    def labeled(self) -> bool:
        """Whether the range's rows carry a label (the ``labeled`` group)."""
        return self.group == "labeled"

    @property
    def folder_label(self) -> int | None:
        """The label of every row of a file under a ``label=K`` folder (inputs.partition_label), whose
        lines hold pixels only; None for the other files (the label, if any, is a column)."""
        return inputs.partition_label(self.name) if self.labeled else None


def sniff_inputs(files: list[Input]) -> Dialects:
    """``{path: (Dialect, complete)}`` of every ``(name, path)`` (see :func:`read_head`, csvparse.sniff).

    Raises JobError for a file that cannot be read (OSError) or is not this project's CSV (InputError).
    """
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


def no_rows_note(dialect: csvparse.Dialect, complete: bool) -> str | None:
    """Why a file holds no rows ('empty', 'header only', 'blank lines only'), or None when it may.

    Only a file whose whole content was sniffed (``complete``) can be known to hold no rows."""
    if not complete or dialect.data_lines:
        return None
    if dialect.header is not None:
        return "header only"
    return "blank lines only" if dialect.blank_lines else "empty"


def _fields_per_row(name: str, dialect: csvparse.Dialect) -> int:
    """The fields a row of a file would have with its label as a column: the file's own (``dialect.columns``),
    one more under a ``label=K`` folder, whose lines hold the pixels only."""
    return dialect.columns + (inputs.partition_label(name) is not None)


def _partition_conflict(name: str, why: str) -> JobError:
    return JobError(f"{name} lies under a label=K folder, which gives every row of it its label, but {why}: its "
                    "lines seem to hold the label too. Files under label=K folders must hold the pixels only (Spark's "
                    "partitionBy('label') writes them so): write them again without the label column, or move the "
                    "file out of the label folder to read its label from its column; nothing was written")


def _check_partitioned(labeled: list[Input], dialects: Dialects, cols: int) -> None:
    """JobError naming a file under a ``label=K`` folder whose lines hold a label column as well: a header
    that names ``label``, or one field more than the pixels (``cols``: fields of a labeled row)."""
    for name, path in labeled:
        dialect = dialects[path][0]
        if inputs.partition_label(name) is None:
            continue
        names = [f.strip().strip('"').strip().lower() for f in (dialect.header or "").split(dialect.delimiter)]
        if inputs.PARTITION_KEY in names:
            raise _partition_conflict(name, f"its header names a column {inputs.PARTITION_KEY!r}")
        if dialect.columns == cols:
            raise _partition_conflict(name, f"its lines have {cols} fields, one more than the {cols - 1} pixels "
                                            "of the other files")


def _check_extra_column(first: str, num_pixels: int, shape: tuple[int, int] | None) -> None:
    """JobError when the most common field count comes from a file under a ``label=K`` folder and is one
    more than an image's pixels (a square one, or ``shape``): its lines hold the label as well."""
    if inputs.partition_label(first) is None:
        return
    pixels = num_pixels - 1
    if shape:
        fits = shape[0] * shape[1] == pixels
    else:
        fits = math.isqrt(pixels) ** 2 == pixels and math.isqrt(num_pixels) ** 2 != num_pixels
    if fits:
        raise _partition_conflict(first, f"its lines have {num_pixels} fields, the {pixels} pixels of "
                                         f"{'the image' if shape else 'a square image'} and one more")


def infer_spec(labeled: list[Input], dialects: Dialects, params: ConvertParams) -> tuple[tuple[int, int], int]:
    """``((H, W), pixel count)`` from the data: the most common field count over the files' heads (a file
    under a ``label=K`` folder counted with its label, :func:`_fields_per_row`), and the image shape from
    ``params.image_shape`` or the square root of the pixel count.

    ``params``: the parsed convert params (``label_column``, ``image_shape``). Raises JobError when no
    file holds a data row, the columns do not fit ``--label-column`` or the shape, or a file under a
    ``label=K`` folder holds a label column too."""
    counts = Counter()
    for name, path in labeled:
        dialect = dialects[path][0]
        if dialect.columns is not None:
            counts[_fields_per_row(name, dialect)] += dialect.data_lines
    if not counts:
        raise JobError(f"no data rows in any labeled input file ({[n for n, _p in labeled]}): expected CSV lines "
                       "'label,pixel,pixel,...'")
    cols = counts.most_common(1)[0][0]
    _check_partitioned(labeled, dialects, cols)
    first = next(name for name, path in labeled
                 if dialects[path][0].columns is not None and _fields_per_row(name, dialects[path][0]) == cols)
    seen = f"{cols} fields per line (file {first}, delimiter {dialects[dict(labeled)[first]][0].delimiter!r})"
    if inputs.partition_label(first) is not None:
        seen = f"{cols - 1} pixel fields per line and the label from the folder (file {first})"
    num_pixels = cols - 1
    _check_extra_column(first, num_pixels, params.image_shape)
    if not -cols <= params.label_column < cols:
        raise JobError(f"--label-column {params.label_column} is outside the {seen} "
                       f"(use 0..{cols - 1}, or -1 for the last column)")
    shape = params.image_shape
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


def plan_ranges(files: list[Input], sizes: dict[str, int], num_shards: int) -> list[PlannedRange]:
    """Split the inputs of one group (labeled or score) into ``max(num_shards, files)`` byte ranges.

    ``sizes``: bytes of each file as stored, by path. Each range becomes one task and one output
    shard per split. Compressed files cannot be split (one range each); plain files get the other
    ranges in proportion to their size. Returns ``[(shard, name, path, part, parts)]``: range
    ``part`` of ``parts`` of the file, shards numbered from 0 in file order.
    """
    parts = {path: 1 for _name, path in files}
    splittable = [path for _name, path in files if inputs.compression_of(path) is None and sizes[path] > 0]
    while sum(parts.values()) < num_shards and splittable:
        widest = max(splittable, key=lambda p: sizes[p] / parts[p])
        parts[widest] += 1
    ranges = []
    for name, path in files:
        for part in range(parts[path]):
            ranges.append((len(ranges), name, path, part, parts[path]))
    return ranges


class _RangeWriter:
    """Executor side: what one range writes (its shard of each split and its part of the lineage
    index) and what it counted: ``counts`` (rows per split), ``label_counts``, ``pixel_max`` (the
    largest pixel value written), ``stats`` (split -> datastats.SplitStats of its written rows; empty
    with ``--statistics off``)."""

    def __init__(self, task: RangeTask, stage_dir: str, num_pixels: int, params: ConvertParams):
        self.task, self.params = task, params
        self.counts = {split: 0 for split in task.splits}
        self.label_counts, self.pixel_max = Counter(), 0
        self.writers = {split: schema.shard_writer(fs.open_write(paths.join(stage_dir, split, schema.shard_name(
            task.shard, params.compression))), params.compression) for split in task.splits}
        self.lineage = LineageWriter(paths.join(stage_dir, paths.LINEAGE_DIR, lineage_name(task.group, task.shard)),
                                     task.name)
        self.stats = ({split: datastats.SplitStats(num_pixels, params.pixel_max, task.labeled) for split in task.splits}
                      if params.statistics == "on" else {})

    def write(self, labels: np.ndarray, pixels: np.ndarray, lines: np.ndarray) -> None:
        """Write the good rows of one parsed block: ``labels`` int64 [n] (-1 when unlabeled), ``pixels``
        uint16 or int64 [n, H*W], ``lines`` int64 [n] (1-based line numbers), n > 0. The rows' content keys
        (csvparse.content_keys) are computed once: they split the labeled rows (csvparse.splits_of_keys,
        the same split as csvparse.splits_of) and feed each split's statistics."""
        task = self.task
        row_ids = csvparse.row_ids(task.name, lines)
        keys = image_keys = None
        if task.labeled or self.stats:
            keys, image_keys = csvparse.content_keys(labels, pixels)
        if task.labeled:
            row_splits = csvparse.splits_of_keys(keys, self.params.eval_fraction)
            self.label_counts.update(labels.tolist())
        else:
            row_splits = np.full(len(labels), "score")
        self.lineage.add(row_ids, lines, row_splits)
        self.pixel_max = max(self.pixel_max, int(pixels.max()) if pixels.size else 0)
        for split in task.splits:
            pick = np.flatnonzero(row_splits == split)
            split_pixels, split_labels = pixels[pick], labels[pick] if task.labeled else None
            records = schema.encode_examples(split_pixels, split_labels, row_ids[pick])
            self.writers[split].write(schema.tfrecord_frames(records))
            self.counts[split] += len(pick)
            if self.stats:
                self.stats[split].add(split_labels, split_pixels, keys[pick], image_keys[pick])

    def close(self) -> None:
        """Close every shard and the lineage part (a lineage part flushes its buffered rows)."""
        for writer in self.writers.values():
            writer.close()
        self.lineage.close()


def _write_quarantine_part(quarantine_dir, task, bad):
    """``part-{group}-NNNNN.jsonl`` of a range: one JSON object per bad line (file, line, kind, reason, raw)."""
    body = "".join(json.dumps({"file": task.name, "line": line, "kind": kind, "reason": reason, "raw": raw}) + "\n"
                   for line, kind, reason, raw in bad)
    fs.write_bytes(paths.join(quarantine_dir, f"part-{task.group}-{task.shard:05d}.jsonl"), body.encode("utf-8"))


def convert_range(task: RangeTask, stage_dir: str, quarantine_dir: str, num_pixels: int,
                  params: ConvertParams) -> dict:
    """Executor side, pass 2: parse one range, write its shard of each split and its quarantine part.

    ``stage_dir``, ``quarantine_dir``: the staging directories of the version's TFRecords and
    quarantine; ``num_pixels``: H*W. Streams the range (memory stays flat whatever its size). Every
    written row is indexed in the range's part of the lineage index (``_lineage/``, see
    :class:`LineageWriter`). A corrupt input is not a bad row and raises nothing here: the range
    returns ``fatal`` (the file, where, and the rows read before it) and the driver fails the run.

    Returns ``{"name", "fatal" (None or the message), "counts" (rows per split), "rows" (rows read:
    written + bad), "lineage_rows", "not_rows" (blank and header lines), "bad_kinds", "bad_samples"
    (first 5), "label_counts", "pixel_max_observed", "stats" (split -> datastats.SplitStats.partial of the
    rows written to it; ``{}`` with ``--statistics off``), "span" (task start, end: epoch seconds),
    "cpu_seconds" (the Python worker's CPU time in the task, user + system), "python" (the executor's
    interpreter)}``.
    """
    started, cpu_started = time.time(), time.process_time()
    folder_label = task.folder_label  # a label=K folder: pixels only in the lines, label K for every row
    spec = csvparse.Spec(num_pixels, labeled=task.labeled and folder_label is None, pixel_max=params.pixel_max,
                         label_col=params.label_column if task.labeled and folder_label is None else 0)
    bad, fatal, not_rows = [], None, Counter()
    out = _RangeWriter(task, stage_dir, num_pixels, params)
    eol = task.dialect.eol
    line_no, at_start = task.first_line, task.start == 0
    try:
        for chunk in inputs.range_chunks(task.name, task.path, task.start, task.end, eol):
            for labels, pixels, lines, chunk_bad in csvparse.iter_block(chunk, spec, line_no, at_start, task.dialect,
                                                                        not_rows):
                bad += chunk_bad
                if len(labels):
                    out.write(labels if folder_label is None else np.full(len(labels), folder_label, np.int64),
                              pixels, lines)
            line_no += chunk.count(eol)
            at_start = False
    except csvparse.InputError as e:
        fatal = (f"{e}. Replace it with a complete copy (gzip -t, bzip2 -t or xz -t checks one), or move it out "
                 "of the version directory")
    finally:
        out.close()
    if bad and fatal is None:
        _write_quarantine_part(quarantine_dir, task, bad)
    return {
        "name": task.name,
        "fatal": fatal,
        "counts": out.counts,
        "rows": sum(out.counts.values()) + len(bad),
        "lineage_rows": out.lineage.rows,
        "not_rows": dict(not_rows),
        "bad_kinds": dict(Counter(kind for _l, kind, _r, _raw in bad)),
        "bad_samples": [f"{task.name}:{line}: {reason}" for line, _k, reason, _raw in bad[:5]],
        "label_counts": dict(out.label_counts),
        "pixel_max_observed": out.pixel_max,
        "stats": {split: acc.partial() for split, acc in out.stats.items()},
        "span": (started, time.time()),
        "cpu_seconds": time.process_time() - cpu_started,
        "python": sys.executable,
    }


def _refuse_unreadable(raw_dir, unreadable):
    if unreadable:
        raise runner.UserError(
            f"{raw_dir} holds files convert does not read: {[inputs.what_it_is(n) for n in unreadable[:10]]}"
            f"{' ...' if len(unreadable) > 10 else ''}. "
            f"It reads {', '.join('*' + e for e in inputs.CSV_EXTENSIONS)} in any letter case, optionally compressed "
            f"({', '.join(inputs.COMPRESSIONS)}), and directories of part files (names starting with '_' or '.' are "
            "skipped). Convert those files to CSV, or move them out of the version directory.")


def _sniffed_inputs(layout, version):
    """``(labeled, unlabeled, skipped, dialects)`` of ``raw/{version}/``; JobError when it holds no
    labeled input, a file whose name is not UTF-8, a file convert does not read, or a file that cannot be
    sniffed."""
    raw_dir = layout.raw(version)
    try:
        labeled, unlabeled, skipped, unreadable = list_inputs(raw_dir)
    except csvparse.InputError as e:  # a file name that is not UTF-8
        raise JobError(str(e)) from None
    if not labeled:
        raise runner.UserError(f"no input for dataset version {version}: no *.csv or *.csv.gz files in {raw_dir} "
                       "(nor .tsv, .bz2, .xz, or directories of part files). Put the version's CSV files there "
                       "(scripts/make_sample_data.py writes sample versions).")
    _refuse_unreadable(raw_dir, unreadable)
    return labeled, unlabeled, skipped, sniff_inputs(labeled + unlabeled)


def _groups(labeled, unlabeled, empty):
    """``[(group, files, splits)]``: the labeled files (train, eval), and the unlabeled ones (score) when
    any may hold rows; files known to hold none (``empty``: path -> note) are left out."""
    groups = [("labeled", [(n, p) for n, p in labeled if not empty[p]], ("train", "eval"))]
    if any(not empty[p] for _n, p in unlabeled):
        groups.append(("score", [(n, p) for n, p in unlabeled if not empty[p]], ("score",)))
    return groups


def _scan_task(job):
    """Executor side of one pass-1 task: ``("digest", name, path)`` or ``("lines", path, part, parts, eol)``."""
    kind, *task_args = job
    return (inputs.file_digest if kind == "digest" else inputs.range_lines)(*task_args)


def _scan_pass(sc, files, groups, plans, dialects):
    """Pass 1: the SHA-256 of every file (files without rows too) and the line count of every range of
    a split file, each a task, so the pass runs on every executor (it also starts their Python
    workers before pass 2). Returns ``(digests, spans by path, task spans)``."""
    parts = {path: 1 for _name, path in files}
    for g, _files, _splits in groups:
        for _shard, _name, path, _part, n in plans[g]:
            parts[path] = n
    jobs = [("digest", name, path) for name, path in files]
    jobs += [("lines", path, part, parts[path], dialects[path][0].eol)
             for _name, path in files if parts[path] > 1 for part in range(parts[path])]
    results = sc.parallelize(jobs, len(jobs)).map(_scan_task).collect()
    digests = [r for r in results if "sha256" in r]
    counted = {}
    for r in results:
        if "lines" in r:
            counted.setdefault(r["path"], []).append(r)
    spans = {}
    for d in digests:
        path = d["path"]
        if parts[path] > 1:
            spans[path] = inputs.range_spans(counted[path], d["bytes"])
        else:
            spans[path] = [(0, d["bytes"], 1)]
    return digests, spans, [r["span"] for r in results]


def _range_tasks(groups, plans, spans, dialects):
    """The tasks of pass 2, in shard order per group; ``spans``: path -> the spans pass 1 found."""
    tasks = []
    for g, _files, splits in groups:
        for shard, name, path, part, _parts in plans[g]:
            start, end, first_line = spans[path][part]
            tasks.append(RangeTask(shard, name, path, start, end, first_line, g, splits, dialects[path][0]))
    return tasks


def _convert_pass(sc, tasks, stage_dir, quarantine_dir, num_pixels, params):
    """Pass 2: one Spark task per range (:func:`convert_range`); their results in task order."""
    return sc.parallelize(tasks, len(tasks)).map(
        lambda task: convert_range(task, stage_dir, quarantine_dir, num_pixels, params)).collect()


def _refuse_fatal(version, stats):
    fatal = [st["fatal"] for st in stats if st["fatal"]]
    if fatal:
        raise JobError(f"dataset version {version}: {fatal[0]}" + (
            f" (and {len(fatal) - 1} more corrupt inputs)" if len(fatal) > 1 else "") + "; nothing was written")


@dataclasses.dataclass
class _Totals:
    """What the ranges of one conversion counted, summed: rows per split, bad rows by kind, rows per
    label, lines that are not rows (``blank_lines``, ``header_lines``), per input file, lineage rows."""

    per_split: dict[str, int]
    bad_kinds: Counter
    label_counts: Counter
    not_rows: Counter
    per_input: dict[str, Counter]
    samples: list[str]
    lineage_rows: int

    @classmethod
    def of(cls, stats: list[dict], splits: list[str]) -> _Totals:
        totals = cls({s: sum(st["counts"].get(s, 0) for st in stats) for s in splits}, Counter(), Counter(),
                     Counter(), {}, [x for st in stats for x in st["bad_samples"]][:5],
                     sum(st["lineage_rows"] for st in stats))
        for st in stats:
            totals.bad_kinds.update(st["bad_kinds"])
            totals.label_counts.update({int(k): v for k, v in st["label_counts"].items()})
            totals.not_rows.update(st["not_rows"])
            file_counts = totals.per_input.setdefault(st["name"], Counter())
            file_counts.update(dict(st["not_rows"], rows=st["rows"]))
        return totals

    @property
    def bad(self) -> int:
        return sum(self.bad_kinds.values())

    @property
    def written(self) -> int:
        return sum(self.per_split.values())

    @property
    def read(self) -> int:
        return self.written + self.bad


def _check_lineage(totals):
    if totals.lineage_rows != totals.written:
        raise JobError(f"the lineage index holds {totals.lineage_rows} rows for {totals.written} rows written: the "
                       "conversion is inconsistent, nothing was published; rerun the task and report this if it "
                       "repeats")


def _check_bad_rows(params, layout, totals, files):
    """JobError when no row was read, or more than ``--max-bad-fraction`` of the rows are bad."""
    if totals.read == 0:
        raise runner.UserError(f"the input files of dataset version {params.version} hold no rows: {[n for n, _p in files]}")
    bad_fraction = totals.bad / totals.read
    if bad_fraction > params.max_bad_fraction:
        raise runner.UserError(
            f"{totals.bad} of {totals.read} rows ({bad_fraction:.1%}) are bad, more than --max-bad-fraction "
            f"{params.max_bad_fraction:.1%}; by kind: {dict(totals.bad_kinds)}; first: {totals.samples}. All bad rows "
            f"are in {layout.quarantine(params.version)}; fix the input or raise max_bad_fraction.")


def _shards(tasks, stats, compression):
    """The manifest's ``shards``: per split, ``[{"file", "records", "source": "name:start-end"}]`` in shard order."""
    shards = {}
    for task, st in zip(tasks, stats):
        for split in task.splits:
            shards.setdefault(split, []).append({"file": schema.shard_name(task.shard, compression),
                                                 "records": st["counts"][split],
                                                 "source": f"{task.name}:{task.start}-{task.end}"})
    return shards


def _inputs(scans, dialects, unlabeled, empty, totals):
    """The manifest's ``inputs``: one entry per file, by name (bytes, sha256, dialect, rows, lines that are
    not rows; ``partition``: ``{"label": K}`` for a file under a ``label=K`` folder). A file known to hold
    no rows was not converted: its sniffed blank and header lines are counted here, into ``totals.not_rows``
    too."""
    unlabeled_names = {n for n, _p in unlabeled}
    entries = []
    for s in sorted(scans, key=lambda s: s["name"]):
        dialect, _complete = dialects[s["path"]]
        entry = {"file": s["name"], "bytes": s["bytes"], "sha256": s["sha256"],
                 "labeled": s["name"] not in unlabeled_names, "dialect": dialect.describe(),
                 "rows": 0, "blank_lines": 0, "header_lines": 0}
        if inputs.partition_label(s["name"]) is not None and s["name"] not in unlabeled_names:
            entry["partition"] = {inputs.PARTITION_KEY: inputs.partition_label(s["name"])}  # the rows' label
        entry.update(totals.per_input.get(s["name"], {}))
        if empty[s["path"]]:  # not converted: its whole content was sniffed
            entry.update(no_rows=empty[s["path"]], blank_lines=dialect.blank_lines,
                         header_lines=int(dialect.header is not None))
            totals.not_rows.update({"blank_lines": dialect.blank_lines,
                                    "header_lines": int(dialect.header is not None)})
        entries.append(entry)
    return entries


def _write_statistics(stage, params, image_shape, num_pixels, splits, stats):
    """With ``--statistics on``: merge the tasks' partial statistics per split (datastats.merge), write
    ``_stats.json`` (paths.STATS_FILE, datastats.version_stats) into the staging directory ``stage``, so
    the commit publishes it with the shards, and return the manifest's short ``statistics`` entry
    (file, per split rows, blank_rows, duplicate_rows; train_eval_overlap). ``{"state": "off"}`` when off."""
    if params.statistics != "on":
        return {"state": "off"}
    merged = {}
    for split in splits:
        partials = [st["stats"][split] for st in stats if split in st["stats"]]
        merged[split] = datastats.merge(partials or [
            datastats.SplitStats(num_pixels, params.pixel_max, split != "score").partial()])
    version_stats = datastats.version_stats(image_shape, params.pixel_max, merged)
    fs.write_bytes(stage.file(paths.STATS_FILE), datastats.dumps(version_stats))
    return {"state": "on", "file": paths.STATS_FILE, "format": version_stats["format"],
            "splits": {split: {k: s[k] for k in ("rows", "blank_rows", "duplicate_rows")}
                       for split, s in version_stats["splits"].items()},
            "train_eval_overlap": version_stats["train_eval_overlap"]}


def _manifest(params, image_shape, totals, tasks, stats, input_entries, skipped, started, pass_seconds, task_spans,
              statistics):
    """The conversion manifest (``_manifest.json`` of ``tfrecords/{version}/``); ``task_spans``: per pass,
    each task's ``(start, end)`` in epoch seconds; ``statistics``: :func:`_write_statistics`'s summary."""
    return {
        "dataset_version": params.version,
        "image_shape": list(image_shape),
        "num_classes": schema.NUM_CLASSES,
        "pixel_max": params.pixel_max,
        "pixel_max_observed": max([st["pixel_max_observed"] for st in stats] or [0]),
        "label_counts": {str(k): v for k, v in sorted(totals.label_counts.items())},
        "rows_read": totals.read,
        "rows_written": totals.written,
        "rows_quarantined": totals.bad,
        "quarantined_by_kind": dict(totals.bad_kinds),
        # lines that are not rows, counted apart: rows_read = rows_written + rows_quarantined
        "blank_lines": totals.not_rows["blank_lines"],
        "header_lines": totals.not_rows["header_lines"],
        "splits": totals.per_split,
        "shards": _shards(tasks, stats, params.compression),
        # row_id -> source file (relative to raw/<version>/), line and split of every written row
        "lineage": {"dir": paths.LINEAGE_DIR, "rows": totals.lineage_rows, "columns": list(LineageWriter.COLUMNS),
                    "files": sorted(lineage_name(t.group, t.shard) for t in tasks)},
        "inputs": input_entries,
        # the splits' statistics (datastats), committed with the shards; per-feature figures in the file
        "statistics": statistics,
        "skipped_hidden": skipped,
        "compression": params.compression,
        "params": dataclasses.asdict(params),
        "versions": library_versions(),
        "executor_python": executor_python(st["python"] for st in stats),
        "git_revision": git_revision(),
        "seconds": round(time.time() - started, 1),
        "pass_seconds": pass_seconds,
        # time the executors spent on the data (first task start to last task end, per pass),
        # without Spark and Python worker start-up
        "data_seconds": {name: round(max(e for _s, e in xs) - min(b for b, _e in xs), 2) for name, xs in task_spans.items()},
        # each task's own seconds, in task order: how evenly the executors were loaded
        "task_seconds": {name: [round(e - b, 2) for b, e in xs] for name, xs in task_spans.items()},
        # the convert tasks' Python CPU seconds (user + system), in task order: what the rows cost whatever
        # else ran on the machine
        "task_cpu_seconds": {"convert": [round(st["cpu_seconds"], 3) for st in stats]},
    }


@dataclasses.dataclass(frozen=True)
class Found:
    """What the driver found in ``raw/{version}/`` before any Spark job (:func:`prepare`): the labeled and
    unlabeled (``score/``) inputs as ``(name, path)`` lists (inputs.list_inputs), the skipped names, each
    input's sniffed dialect (:data:`Dialects`), the image shape ``(H, W)`` and pixels per row ``H * W``."""

    labeled: list[Input]
    unlabeled: list[Input]
    skipped: list[str]
    dialects: Dialects
    image_shape: tuple[int, int]
    num_pixels: int


def prepare(params: ConvertParams) -> Found:
    """List and sniff ``raw/{params.version}/`` and infer the image shape, on the driver alone: runner.main
    calls it before the SparkSession starts, so an input that cannot be converted is refused in seconds,
    without a Spark application (no executors requested, nothing to retry on the cluster).

    Raises JobError when the version has no labeled input, holds a file convert does not read or a file
    whose name is not UTF-8, a file cannot be sniffed, or no row fits the params' shape and label column
    (:func:`infer_spec`); StorageError when the root cannot be read."""
    labeled, unlabeled, skipped, dialects = _sniffed_inputs(paths.Layout(params.data_root), params.version)
    image_shape, num_pixels = infer_spec(labeled, dialects, params)
    return Found(labeled, unlabeled, skipped, dialects, image_shape, num_pixels)


def run(spark: SparkSession, params: ConvertParams, found: Found | None = None) -> dict:
    """Convert dataset version ``params.version`` of ``params.data_root`` (``params``: the parsed convert
    params, ``jobargs.ConvertParams``; the executors receive them whole).

    ``found``: what :func:`prepare` found (runner.main calls it before the SparkSession starts); None:
    :func:`prepare` runs here.

    Steps: list and sniff the inputs, infer the image shape (:func:`prepare`), plan the byte ranges
    (:func:`plan_ranges`), pass 1 hashes every file and counts the lines of every range
    (inputs.file_digest, inputs.range_lines), pass 2 converts every range into
    a staging directory (:func:`convert_range`); then the totals are checked, the quarantine is
    committed (also when too many rows are bad), the splits' statistics are merged and written as
    ``_stats.json`` (unless ``--statistics off``) and the TFRecords are committed with them and their
    manifest, in one rename.

    Returns the RESULT summary: ``output`` (``tfrecords/{version}/``), ``rows_read``, ``splits`` (rows
    per split), ``quarantined``, ``blank_lines``, ``header_lines``. Raises JobError, with nothing
    published under ``tfrecords/``, when the version has no labeled input, holds a file convert does
    not read or a file whose name is not UTF-8, a file cannot be read or is corrupt, no row fits the flags' shape and label column, no
    row was read, or more than ``--max-bad-fraction`` of the rows are bad.
    """
    sc = spark.sparkContext
    layout = paths.Layout(params.data_root)
    found = found if found is not None else prepare(params)
    # Spark schedules on the first executor that registers: without this wait, an executor still unpacking the
    # shipped environment (spark.archives, ~2 GiB) got no range, and one executor did both passes
    executors(sc, requested_executors(sc), timeout=runner.SPREAD_WAIT_S)
    labeled, unlabeled, skipped, dialects = found.labeled, found.unlabeled, found.skipped, found.dialects
    image_shape, num_pixels = found.image_shape, found.num_pixels
    started = time.time()
    empty = {path: no_rows_note(*dialects[path]) for _name, path in labeled + unlabeled}
    groups = _groups(labeled, unlabeled, empty)
    sizes = {p: fs.size(p) for p in dict(labeled + unlabeled).values()}
    plans = {g: plan_ranges(files, sizes, params.num_shards) for g, files, _splits in groups}

    t = time.time()
    scans, spans, scan_spans = _scan_pass(sc, labeled + unlabeled, groups, plans, dialects)
    pass_seconds = {"scan": round(time.time() - t, 2)}
    tasks = _range_tasks(groups, plans, spans, dialects)

    out = layout.tfrecords(params.version)
    all_splits = [s for _g, _f, splits in groups for s in splits]
    with fs.Staging(out) as stage, fs.Staging(layout.quarantine(params.version)) as quarantine:
        for split in all_splits + [paths.LINEAGE_DIR]:
            fs.makedirs(stage.file(split))
        t = time.time()
        stats = _convert_pass(sc, tasks, stage.path, quarantine.path, num_pixels, params)
        pass_seconds["convert"] = round(time.time() - t, 2)
        _refuse_fatal(params.version, stats)
        totals = _Totals.of(stats, all_splits)
        _check_lineage(totals)
        # The quarantine of every run is kept, passed or failed, so bad rows are never lost.
        quarantine.commit({"dataset_version": params.version, "rows": totals.bad, "by_kind": dict(totals.bad_kinds),
                           "sample": totals.samples})
        _check_bad_rows(params, layout, totals, labeled + unlabeled)
        input_entries = _inputs(scans, dialects, unlabeled, empty, totals)
        statistics = _write_statistics(stage, params, image_shape, num_pixels, all_splits, stats)
        stage.commit(_manifest(params, image_shape, totals, tasks, stats, input_entries, skipped, started, pass_seconds,
                               {"scan": scan_spans, "convert": [st["span"] for st in stats]}, statistics))
    return {"output": out, "rows_read": totals.read, "splits": totals.per_split, "quarantined": totals.bad,
            "blank_lines": totals.not_rows["blank_lines"], "header_lines": totals.not_rows["header_lines"]}
