"""CSV rows (label, then H*W pixels) to checked values; bad rows get a reason instead of an exception.

No Spark and no TensorFlow, so it is unit-testable and cheap in executors. Clean blocks of lines are
parsed in bulk with numpy (:func:`parse_clean`); a block with anything unusual in it is parsed line
by line (:func:`parse_row`), which names what is wrong with each bad line.
"""

import functools
import gzip
import hashlib
import math
from collections import Counter

import numpy as np

HASH_BUCKETS = 1_000_000
CHUNK_BYTES = 4 << 20


class RowError(ValueError):
    """A row that cannot be converted: ``kind`` counts it in the manifest, the message explains it."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Spec:
    """What a valid row looks like for one dataset version."""

    def __init__(self, num_pixels, labeled=True, pixel_max=255, num_classes=10, label_col=0):
        self.num_pixels = num_pixels
        self.labeled = labeled
        self.pixel_max = pixel_max
        self.num_classes = num_classes
        self.label_col = label_col

    @property
    def num_columns(self):
        return self.num_pixels + (1 if self.labeled else 0)


def decompress(name, data):
    """Bytes of a CSV file, gunzipped when the name ends in .gz."""
    if name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise RowError("bad_gzip", f"cannot decompress gzip file: {e}") from e
    return data


def lines(data):
    """(line number starting at 1, raw bytes) for each line; a final newline ends the last line."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for i, raw in enumerate(parts, start=1):
        yield i, raw[:-1] if raw.endswith(b"\r") else raw


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def looks_like_header(fields):
    """A header names its columns (label,pixel0,... or 1x1,1x2,...): no field is a number."""
    named = [f.strip() for f in fields if f.strip()]
    return bool(named) and not any(_is_number(f) for f in named)


def _to_int(text, col):
    t = text.strip()
    if t == "":
        raise RowError("empty_field", f"empty field in column {col}")
    if '"' in t or "'" in t:
        raise RowError("quote", f"quote character in column {col}: {t[:20]!r}")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        value = float(t)
    except ValueError:
        raise RowError("non_numeric", f"non-numeric field in column {col}: {t[:20]!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise RowError("nan_inf", f"NaN or infinite value in column {col}: {t[:20]!r}")
    if value != int(value):
        raise RowError("non_integer", f"non-integer value in column {col}: {t[:20]!r}")
    return int(value)


def parse_row(raw, spec):
    """(label or None, pixel list) of one raw line, or RowError naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("invalid_utf8", f"invalid UTF-8 at byte {e.start}") from None
    if not text.strip():
        raise RowError("empty_line", "empty line")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise RowError("garbage_bytes", "control characters (garbage bytes) in line")
    fields = text.split(",")
    if len(fields) == spec.num_columns and looks_like_header(fields):
        raise RowError("header", "header row in the middle of the file")
    if len(fields) != spec.num_columns:
        raise RowError("column_count", f"wrong column count: expected {spec.num_columns}, got {len(fields)}")
    label = None
    if spec.labeled:
        label_text = fields.pop(spec.label_col)
        if not label_text.strip():
            raise RowError("label_missing", "label missing")
        label = _to_int(label_text, spec.label_col)
        if not 0 <= label < spec.num_classes:
            raise RowError("label_range", f"label {label} outside 0..{spec.num_classes - 1}")
    pixels = []
    offset = 1 if spec.labeled else 0
    for i, f in enumerate(fields):
        v = _to_int(f, i + offset)
        if not 0 <= v <= spec.pixel_max:
            raise RowError("pixel_range", f"pixel value {v} in column {i + offset} outside 0..{spec.pixel_max}")
        pixels.append(v)
    return label, pixels


_MASK63 = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


def _mix(x):
    """splitmix64 finalizer over a uint64 array: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _name_key(file_name):
    return np.uint64(int.from_bytes(hashlib.blake2b(file_name.encode("utf-8"), digest_size=8).digest(), "big"))


def row_ids(file_name, line_numbers):
    """Stable 63-bit ids of source rows: the same file name and line give the same id on every run."""
    lines = np.asarray(line_numbers, np.uint64)
    with np.errstate(over="ignore"):
        return (_mix(_name_key(file_name) + _mix(lines)) & _MASK63).astype(np.int64)


def row_id(file_name, line_no):
    return int(row_ids(file_name, [line_no])[0])


@functools.lru_cache(maxsize=8)
def _weights(n):
    """Fixed odd 64-bit weights, one per pixel column (the same on every machine and run)."""
    return np.random.default_rng(20261128).integers(0, 2 ** 63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _content_hash(labels, pixels):
    """A 64-bit hash of each row's label and pixel values: a weighted sum mod 2^64, then mixed."""
    px = np.asarray(pixels, np.uint64)
    with np.errstate(over="ignore"):
        h = (px * _weights(px.shape[1])).sum(axis=1, dtype=np.uint64)
        return _mix(h ^ _mix(np.asarray(labels, np.uint64)))


def splits_of(labels, pixels, eval_fraction):
    """'eval' or 'train' per row from its content alone, so reruns and backfills split identically.

    Identical rows always land in the same split, so duplicates cannot leak from train into eval.
    """
    bucket = _content_hash(labels, pixels) % np.uint64(HASH_BUCKETS)
    return np.where(bucket < np.uint64(int(eval_fraction * HASH_BUCKETS)), "eval", "train")


def split_of(label, pixels, eval_fraction):
    return str(splits_of([label], [pixels], eval_fraction)[0])


def parse_clean(data, num_columns):
    """int64 [rows, num_columns] of a block of clean CSV lines, or None when the block is not clean.

    Clean: only digits, commas and newlines, every line with ``num_columns`` non-empty fields of at
    most 15 digits, ending with a newline. Anything else (signs, decimals, spaces, quotes, empty
    lines or fields, other bytes) returns None, and the caller parses the block line by line.
    """
    if not data:
        return np.empty((0, num_columns), np.int64)
    buf = np.frombuffer(data, np.uint8)
    if buf[-1] != 10 or ((buf > 57) | ((buf < 48) & (buf != 44) & (buf != 10))).any():
        return None
    sep_pos = np.flatnonzero(buf < 48)  # only ',' and '\n' are left below '0'
    fields = len(sep_pos)
    if fields % num_columns:
        return None
    line_ends = sep_pos[num_columns - 1::num_columns]
    if not (buf[line_ends] == 10).all() or (buf[sep_pos] == 10).sum() != len(line_ends):
        return None
    starts = np.empty(fields, np.int64)
    starts[0] = 0
    starts[1:] = sep_pos[:-1] + 1
    lengths = sep_pos - starts
    longest = int(lengths.max())
    if lengths.min() == 0 or longest > 15:
        return None
    values = buf[starts].astype(np.int64) - 48
    for k in range(1, longest):
        more = np.flatnonzero(lengths > k)
        values[more] = values[more] * 10 + (buf[starts[more] + k].astype(np.int64) - 48)
    return values.reshape(-1, num_columns)


def chunks(data, size=CHUNK_BYTES):
    """(offset, bytes) pieces of ``data`` that end at a newline, about ``size`` bytes each."""
    start, end = 0, len(data)
    while start < end:
        stop = data.find(b"\n", min(start + size, end) - 1)
        stop = end if stop < 0 else stop + 1
        yield start, data[start:stop]
        start = stop


def infer_num_columns(sample_lines):
    """Most common field count among the sample's non-header data lines (None when there are none)."""
    counts = Counter()
    for raw in sample_lines:
        try:
            fields = raw.decode("utf-8").split(",")
        except UnicodeDecodeError:
            continue
        if len(fields) > 1 and not looks_like_header(fields):
            counts[len(fields)] += 1
    return counts.most_common(1)[0][0] if counts else None


def _parse_lines(data, spec, first_line_no):
    """Line-by-line parse of a block: (labels, pixel rows, line numbers) of good lines, and bad lines."""
    labels, pixels, numbers, bad = [], [], [], []
    for offset, raw in lines(data):
        line_no = first_line_no + offset - 1
        try:
            label, px = parse_row(raw, spec)
        except RowError as e:
            bad.append((line_no, e.kind, str(e), raw.decode("utf-8", "replace")[:2000]))
            continue
        labels.append(label if label is not None else -1)
        pixels.append(px)
        numbers.append(line_no)
    return labels, pixels, numbers, bad


def iter_block(data, spec, first_line_no=1, header_allowed=True):
    """Classify the lines of a block of a CSV file (whole lines, line numbers from ``first_line_no``).

    Yields, per chunk of about CHUNK_BYTES, ``(labels int64 [n] (-1 when unlabeled), pixels int64
    [n, P], line numbers int64 [n], bad)`` where ``bad`` lists ``(line, kind, reason, raw)``. A header
    is skipped on the block's first line when ``header_allowed`` (the start of a file); anywhere else
    it is a bad line.
    """
    if header_allowed:
        first_end = data.find(b"\n")
        first = data if first_end < 0 else data[:first_end]
        if first.strip() and looks_like_header(first.decode("utf-8", "replace").rstrip("\r").split(",")):
            data, first_line_no = data[first_end + 1:] if first_end >= 0 else b"", first_line_no + 1
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    line_no = first_line_no
    for _offset, block in chunks(data):
        rows = block.count(b"\n")
        table = parse_clean(block, spec.num_columns)
        if table is not None:
            if spec.labeled:
                lab, px = table[:, spec.label_col], np.delete(table, spec.label_col, axis=1)
            else:
                lab, px = np.full(len(table), -1, np.int64), table
            ok = (px <= spec.pixel_max).all(axis=1)
            if spec.labeled:
                ok &= (lab >= 0) & (lab < spec.num_classes)
            if ok.all():
                yield lab, px, np.arange(line_no, line_no + rows, dtype=np.int64), []
                line_no += rows
                continue
        labels, pixels, numbers, bad = _parse_lines(block, spec, line_no)
        yield (np.asarray(labels, np.int64), np.asarray(pixels, np.int64).reshape(len(labels), spec.num_pixels),
               np.asarray(numbers, np.int64), bad)
        line_no += rows


def parse_block(data, spec, first_line_no=1, header_allowed=True):
    """All of :func:`iter_block` at once: (labels, pixels, line numbers, bad)."""
    parts = list(iter_block(data, spec, first_line_no, header_allowed))
    if not parts:
        return np.empty(0, np.int64), np.empty((0, spec.num_pixels), np.int64), np.empty(0, np.int64), []
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), [b for p in parts for b in p[3]])
