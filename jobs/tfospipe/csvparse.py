"""CSV rows (label, then H*W pixels) to checked values; bad rows get a reason instead of an exception.

No Spark and no TensorFlow, so it is unit-testable and cheap in executors. Clean blocks of lines are
parsed in bulk with numpy (:func:`parse_clean`); a block with anything unusual in it is parsed line
by line (:func:`parse_row`, with Python's ``csv`` module for RFC 4180 quoting), which names what is
wrong with each bad line.

The dialect of each file (encoding, byte-order mark, delimiter, quoting, line terminator, decimal
separator, lines above the table, header, row index, trailing delimiter) is read from its head by
:func:`sniff`: the delimiter is the one that splits the head's lines of numbers into one field count.
Lines that are not rows (blank lines, the header and lines above it) are counted apart from rows: rows
read = rows written + rows quarantined.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import hashlib
import math
import re
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

#: Buckets of the content hash that splits rows into train and eval (:func:`splits_of`).
HASH_BUCKETS = 1_000_000
#: Bytes per piece read from a file at once (inputs.READ_BYTES).
CHUNK_BYTES = 4 << 20
#: Bytes per block parsed and encoded at once (:func:`chunks`, :func:`iter_block`): small enough that
#: the temporary arrays (~2-8 bytes per field) stay in a core's cache, large enough that the per-block
#: calls do not count. convert_range on bench/convert_bench.py's rows, AMD EPYC (Zen 4), TCMalloc:
#: 19.4 us/row at 512 KiB, 17.8 at 1 MiB, 18.4 at 4 MiB (4 MiB before the uint16 paths: 2x slower).
PARSE_BYTES = 1 << 20


class RowError(ValueError):
    """A row that cannot be converted: ``kind`` counts it in the manifest, the message explains it."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class InputError(ValueError):
    """A whole input file that cannot be read as this project's CSV (encoding, dialect, corruption).

    The message names the file, what was seen and what to do; the convert job fails with it.
    """


#: Delimiters the sniffer chooses from (csv.Sniffer's candidates): comma, semicolon, tab, pipe.
DELIMITERS = ",;\t|"
#: Byte-order marks of encodings other than UTF-8 (UTF-32 first: its LE mark starts with UTF-16's).
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
                (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE"))
LINE_TERMINATORS = {"\n": "LF", "\r\n": "CRLF", "\r": "CR"}
#: UTF-16 with a byte-order mark (Excel's "Unicode Text"): read, transcoded to UTF-8 block by block.
UTF16 = {"UTF-16LE": (codecs.BOM_UTF16_LE, "utf-16-le"), "UTF-16BE": (codecs.BOM_UTF16_BE, "utf-16-be")}


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How one CSV file is written, as :func:`sniff` read it from the file's head.

    ``delimiter``: one of :data:`DELIMITERS`. ``quoted``: fields may be wrapped in double quotes
    (RFC 4180). ``line_terminator``: ``"\\n"``, ``"\\r\\n"`` or ``"\\r"`` (CR-only, old Mac files).
    ``bom``: the file starts with a byte-order mark (stripped). ``encoding``: ``"UTF-8"``;
    ``"Windows-1252"`` when the head is not UTF-8 (only names can differ: values are ASCII digits);
    ``"UTF-16LE"`` or ``"UTF-16BE"`` after that byte-order mark (read through :meth:`to_utf8`).
    ``decimal``: the decimal separator, ``","`` in semicolon files (the locales whose Excel writes
    ``;``) and where the head shows ``16,0``. ``preamble``: lines above the header or first row that
    are no rows (Excel's ``sep=;``, a title, ``#`` comments; blank lines between them included).
    ``header``: text of the header line when there is one, else None. ``index_column``: the first
    column is a row index without a name (pandas ``to_csv`` with its index, R ``write.csv`` row
    names), not a value. ``trailing_delimiter``: every line ends with a delimiter. ``columns``: the
    most common count of value fields of the head's data lines, without an index or trailing field
    (None when the head holds none). ``data_lines``, ``blank_lines``: lines of each kind in the head.
    """

    delimiter: str = ","
    quoted: bool = False
    line_terminator: str = "\n"
    bom: bool = False
    header: str | None = None
    columns: int | None = None
    data_lines: int = 0
    blank_lines: int = 0
    encoding: str = "UTF-8"
    decimal: str = "."
    preamble: int = 0
    index_column: bool = False
    trailing_delimiter: bool = False

    @property
    def eol(self) -> bytes:
        """The bytes that end a line: CR for CR-only files, else LF (a CR before it is dropped); two bytes
        in a UTF-16 file (``b"\\n\\x00"`` in UTF-16LE), always at an even offset."""
        char = "\r" if self.line_terminator == "\r" else "\n"
        return char.encode(UTF16[self.encoding][1]) if self.encoding in UTF16 else char.encode()

    def to_utf8(self, data: bytes) -> bytes:
        """Whole lines of the file as UTF-8: themselves, or transcoded from UTF-16 (a BOM kept as UTF-8's)."""
        if self.encoding not in UTF16:
            return data
        return data.decode(UTF16[self.encoding][1], "replace").encode("utf-8")

    def describe(self) -> dict:
        """What the manifest records of the dialect of a file (a header's text cut at 300 characters)."""
        return {"encoding": self.encoding + (" with BOM" if self.bom else ""), "delimiter": self.delimiter,
                "quoted": self.quoted, "line_terminator": LINE_TERMINATORS[self.line_terminator],
                "header": self.header if self.header is None or len(self.header) <= 300 else self.header[:300] + "...",
                "decimal": self.decimal, "preamble_lines": self.preamble, "index_column": self.index_column,
                "trailing_delimiter": self.trailing_delimiter}


class Spec:
    """What a valid row looks like for one dataset version.

    ``num_pixels``: H*W pixel fields; ``labeled``: a label field comes too, at index ``label_col``
    among the row's fields (negative: from the end), a class id in 0..``num_classes``-1; every pixel
    value is an integer in 0..``pixel_max``.
    """

    def __init__(self, num_pixels: int, labeled: bool = True, pixel_max: int = 255, num_classes: int = 10,
                 label_col: int = 0):
        self.num_pixels = num_pixels
        self.labeled = labeled
        self.pixel_max = pixel_max
        self.num_classes = num_classes
        self.label_col = label_col

    @property
    def num_columns(self) -> int:
        """Fields per row: the pixels, plus the label when labeled."""
        return self.num_pixels + (1 if self.labeled else 0)


def lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number starting at 1, raw bytes) for each line; a final newline ends the last line."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for i, raw in enumerate(parts, start=1):
        yield i, raw[:-1] if raw.endswith(b"\r") else raw


#: Characters that group digits by thousands (besides the one of ``.`` and ``,`` that is not the decimal
#: separator): space, no-break spaces (fr-FR Excel), apostrophe (de-CH).
GROUPING = " \u00a0\u202f'"
_GROUPED = {".": re.compile(r"[+-]?\d{1,3}([,\s\u00a0\u202f']\d{3})+(\.\d*)?"),
            ",": re.compile(r"[+-]?\d{1,3}([.\s\u00a0\u202f']\d{3})+(,\d*)?")}
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


def _is_number(text, decimal="."):
    """Whether a field holds a number: what float() reads, with ``decimal`` as the decimal separator, or
    digits grouped by thousands (``1,000``, ``1.000``, ``1 000``: numbers, though refused as values)."""
    if decimal == "," and _DECIMAL_COMMA.fullmatch(text):
        return True
    try:
        float(text)
        return True
    except ValueError:
        return bool(_GROUPED[decimal].fullmatch(text))


def looks_like_header(fields: list[str], first_line: bool = False, decimal: str = ".") -> bool:
    """Whether a line's fields name columns rather than hold a row.

    Three conventions: names only (``label,pixel0,...``, ``1x1,1x2,...``); names mixed with indices
    (``label,0,1,...,63``): some field is not a number and the numbers present count up by one; and,
    on a file's ``first_line`` only, integer column indices (``0,1,2,...,64``, a pandas DataFrame
    saved with its default column names): every field a number, counting 0..n-1 or 1..n. A data row
    would have to hold exactly those consecutive values; the header taken is recorded in the manifest.
    ``decimal``: the file's decimal separator (``16,0`` is a number where it is ``,``).
    """
    named = [f.strip().strip('"').strip() for f in fields]
    named = [f for f in named if f]
    if len(fields) < 2 or not named:  # one field: no delimiter, so nothing tells a header from a row
        return False
    numbers = [f for f in named if _is_number(f, decimal)]
    try:
        ints = [int(f) for f in numbers]
    except ValueError:  # 1.5, 1e3, nan, 1,000: not column indices
        return not numbers
    counts_up = all(b - a == 1 for a, b in zip(ints, ints[1:]))
    if len(numbers) < len(named):
        return counts_up
    return first_line and len(ints) == len(fields) >= 2 and counts_up and ints[0] in (0, 1)


def is_blank(raw: bytes, delimiter: bytes = b",") -> bool:
    """A line with no value in it: empty, whitespace, or only delimiters and empty quotes (``,,,``)."""
    return not raw.translate(None, b' \t\r"' + delimiter)


def split_fields(text: str, delimiter: str = ",") -> list[str]:
    """The fields of one decoded line: RFC 4180 quoting when a quote is present (csv module).

    Raises RowError (kind ``quote``) for malformed quoting."""
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as e:
        raise RowError("quote", f"malformed quoting ({e})") from None


def _number_format_error(t, col, decimal):
    """The RowError of a value written with a locale's number format the file does not use, or None."""
    if _GROUPED[decimal].fullmatch(t) and not (decimal == "," and _DECIMAL_COMMA.fullmatch(t)):
        return RowError("number_format", f"digits grouped by thousands in column {col}: {t[:20]!r}; export the "
                                         "numbers without a thousands separator (Excel: Format Cells > Number, "
                                         "untick 'Use 1000 Separator')")
    if decimal == "," and "." in t:
        return RowError("number_format", f"'.' in column {col} ({t[:20]!r}) of a file whose decimal separator is "
                                         "',': write every number the same way")
    return None


def _to_int(text, col, decimal="."):
    t = text.strip()
    if t == "":
        raise RowError("empty_field", f"empty field in column {col}")
    if '"' in t or "'" in t and not _GROUPED[decimal].fullmatch(t):
        raise RowError("quote", f"quote character in column {col}: {t[:20]!r}")
    try:
        return int(t)
    except ValueError:
        pass
    error = _number_format_error(t, col, decimal)
    if error:
        raise error
    try:
        value = float(t.replace(",", ".") if decimal == "," else t)
    except ValueError:
        raise RowError("non_numeric", f"non-numeric field in column {col}: {t[:20]!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise RowError("nan_inf", f"NaN or infinite value in column {col}: {t[:20]!r}")
    if value != int(value):
        raise RowError("non_integer", f"non-integer value in column {col}: {t[:20]!r}")
    return int(value)


def parse_row(raw: bytes, spec: Spec, delimiter: str = ",", decimal: str = ".",
              index_column: bool = False) -> tuple[int | None, list[int]]:
    """(label or None, pixel list) of one raw line, or RowError naming what is wrong.

    Fields are split on ``delimiter``; a quoted field (``"5"``) is unquoted as RFC 4180 says; numbers
    use ``decimal`` as decimal separator (``16,0``: 16). ``index_column``: the first field is a row
    index (pandas, R), not a value: it is dropped and the columns are counted without it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("invalid_utf8", f"invalid UTF-8 at byte {e.start}") from None
    if not text.strip():
        raise RowError("empty_line", "empty line")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise RowError("garbage_bytes", "control characters (garbage bytes) in line")
    if text.lstrip().startswith("#"):
        raise RowError("comment", "a '#' comment line among the rows: delete it, or move it above the header "
                                  "(comment lines there are skipped)")
    fields = split_fields(text, delimiter)
    if index_column:
        fields = fields[1:]
    if len(fields) == spec.num_columns and looks_like_header(fields, decimal=decimal):
        raise RowError("header", "header row in the middle of the file")
    if len(fields) != spec.num_columns:
        raise RowError("column_count", f"wrong column count: expected {spec.num_columns}, got {len(fields)}"
                                       + (" after the row index" if index_column else ""))
    label = None
    if spec.labeled:
        label_text = fields.pop(spec.label_col)
        if not label_text.strip():
            raise RowError("label_missing", "label missing")
        label = _to_int(label_text, spec.label_col, decimal)
        if not 0 <= label < spec.num_classes:
            raise RowError("label_range", f"label {label} outside 0..{spec.num_classes - 1}")
    pixels = []
    offset = 1 if spec.labeled else 0
    for i, f in enumerate(fields):
        v = _to_int(f, i + offset, decimal)
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


def row_ids(file_name: str, line_numbers: Iterable[int] | np.ndarray) -> np.ndarray:
    """Stable 63-bit ids of source rows: the same file name and line give the same id on every run.

    ``file_name``: relative to ``raw/{version}/``; ``line_numbers``: 1-based. Returns int64 [n], all
    >= 0: splitmix64 of the line number added to a blake2b key of the name, mixed again."""
    lines = np.asarray(line_numbers, np.uint64)
    with np.errstate(over="ignore"):
        return (_mix(_name_key(file_name) + _mix(lines)) & _MASK63).astype(np.int64)


def row_id(file_name: str, line_no: int) -> int:
    """:func:`row_ids` of one line."""
    return int(row_ids(file_name, [line_no])[0])


@functools.lru_cache(maxsize=8)
def _weights(n):
    """Fixed odd 64-bit weights, one per pixel column (the same on every machine and run)."""
    return np.random.default_rng(20261128).integers(0, 2 ** 63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def content_keys(labels: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of each row: ``(keys, image_keys)``, uint64 [n] each. ``keys`` covers the label and
    the pixel values (what :func:`splits_of` splits by, and what makes two rows duplicates);
    ``image_keys`` the pixels alone (the same image under another label). ``labels`` int [n] (-1 when
    unlabeled), ``pixels`` non-negative int [n, P]: a weighted sum mod 2^64, then mixed (splitmix64)."""
    px = np.asarray(pixels, np.uint64)
    with np.errstate(over="ignore"):
        h = (px * _weights(px.shape[1])).sum(axis=1, dtype=np.uint64)
        return _mix(h ^ _mix(np.asarray(labels, np.uint64))), _mix(h)


def splits_of_keys(keys: np.ndarray, eval_fraction: float) -> np.ndarray:
    """'eval' or 'train' per row from its content key (:func:`content_keys`): a row is ``eval`` when its
    key falls into the first ``eval_fraction`` of :data:`HASH_BUCKETS` buckets. Returns str [n]."""
    bucket = np.asarray(keys, np.uint64) % np.uint64(HASH_BUCKETS)
    return np.where(bucket < np.uint64(int(eval_fraction * HASH_BUCKETS)), "eval", "train")


def splits_of(labels: np.ndarray, pixels: np.ndarray, eval_fraction: float) -> np.ndarray:
    """'eval' or 'train' per row from its content alone, so reruns and backfills split identically.

    ``labels`` int [n], ``pixels`` int [n, P] (non-negative); ``eval_fraction`` 0..1. Returns str [n]
    (:func:`splits_of_keys` of the rows' :func:`content_keys`). Identical rows always land in the same
    split, so duplicates cannot leak from train into eval.
    """
    return splits_of_keys(content_keys(labels, pixels)[0], eval_fraction)


def _unquote(buf, delimiter):
    """``buf`` without the quotes of fields that are wholly quoted (``"5","0"`` -> ``5,0``), or None.

    None when any quote is not one of a pair that wraps a whole non-empty field holding no delimiter
    (an escaped quote, an empty ``""`` field, a quote inside a value): the line-by-line parser decides.
    """
    q = np.flatnonzero(buf == 34)
    if len(q) % 2:
        return None
    opens, closes = q[0::2], q[1::2]
    if (closes - opens < 2).any() or (closes + 1 >= len(buf)).any():
        return None
    before = buf[np.maximum(opens - 1, 0)]
    after = buf[closes + 1]
    if not (((opens == 0) | (before == delimiter) | (before == 10)).all()
            and ((after == delimiter) | (after == 10)).all()):
        return None
    seps = np.cumsum((buf == delimiter) | (buf == 10))
    if (seps[closes] != seps[opens]).any():  # a delimiter or newline inside the quotes
        return None
    return buf[buf != 34]


def _small_fields(padded, sep_pos, lengths):
    """uint16 values of fields of 1..3 digits: the digits before each separator, weighted 1, 10, 100.

    ``padded``: the block's bytes after three ``0`` bytes; ``sep_pos``: positions of the separators
    in the block (not in ``padded``). Fields holding fewer digits use fewer of the 3 bytes before
    their separator (the others belong to the previous field, or are the padding)."""
    zero = np.uint8(48)
    value = (padded[2:][sep_pos] - zero).astype(np.uint16)
    tens = (padded[1:][sep_pos] - zero).astype(np.uint16)
    tens *= (lengths >= 2).view(np.uint8)
    value += tens * np.uint16(10)
    hundreds = (padded[sep_pos] - zero).astype(np.uint16)
    hundreds *= (lengths >= 3).view(np.uint8)
    value += hundreds * np.uint16(100)
    return value


def parse_clean(data: bytes, num_columns: int, delimiter: bytes = b",", quoted: bool = False) -> np.ndarray | None:
    """Values [rows, num_columns] of a block of clean CSV lines, or None when the block is not clean.

    Clean: only digits, ``delimiter`` and newlines, every line with ``num_columns`` non-empty fields
    of at most 15 digits, ending with a newline; with ``quoted``, fields may also be wholly quoted
    (``"5"``). Anything else (signs, decimals, spaces, other quoting, empty lines or fields, other
    bytes) returns None, and the caller parses the block line by line. The dtype is uint16 when
    every field has at most 3 digits (pixels and labels: the common case, parsed with three gathers
    per field), else int64.
    """
    if not data:
        return np.empty((0, num_columns), np.int64)
    d = ord(delimiter)
    buf = np.frombuffer(data, np.uint8)
    if buf[-1] != 10:
        return None
    if quoted and b'"' in data:
        buf = _unquote(buf, d)
        if buf is None:
            return None
    if (buf > 57).any():  # above '9': letters, other bytes
        return None
    sep_pos = np.flatnonzero(buf < 48)  # delimiters and newlines; other bytes below '0' are refused next
    sep_bytes = buf[sep_pos]
    newline = sep_bytes == 10
    if not ((sep_bytes == d) | newline).all():
        return None
    fields = len(sep_pos)
    if fields % num_columns:
        return None
    line_ends = sep_pos[num_columns - 1::num_columns]
    if not (buf[line_ends] == 10).all() or np.count_nonzero(newline) != len(line_ends):
        return None
    lengths = np.empty(fields, np.int64)
    lengths[0] = sep_pos[0]
    np.subtract(sep_pos[1:], sep_pos[:-1], out=lengths[1:])
    lengths[1:] -= 1
    longest = int(lengths.max())
    if lengths.min() == 0 or longest > 15:
        return None
    if longest <= 3:
        padded = np.concatenate([np.full(3, 48, np.uint8), buf])  # '000' before the first field
        return _small_fields(padded, sep_pos, lengths).reshape(-1, num_columns)
    starts = sep_pos - lengths
    values = buf[starts].astype(np.int64) - 48
    for k in range(1, longest):
        more = np.flatnonzero(lengths > k)
        values[more] = values[more] * 10 + (buf[starts[more] + k].astype(np.int64) - 48)
    return values.reshape(-1, num_columns)


def chunks(data: bytes, size: int = PARSE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of ``data`` that end at a newline, about ``size`` bytes each."""
    start, end = 0, len(data)
    while start < end:
        stop = data.find(b"\n", min(start + size, end) - 1)
        stop = end if stop < 0 else stop + 1
        yield start, data[start:stop]
        start = stop


def _foreign_encoding(head):
    for bom, name in FOREIGN_BOMS:
        if head.startswith(bom):
            return None if name in UTF16 else f"{name} (byte-order mark {bom.hex(' ').upper()})"
    if b"\x00" in head[:4096]:
        return "UTF-16 or UTF-32 without a byte-order mark, or a binary file such as .xlsx (NUL bytes)"
    return None


def _foreign_encoding_error(name, foreign):
    """The InputError of a UTF-32 file, or of UTF-16 without a byte-order mark (NUL bytes): what it is
    and how to convert it."""
    return InputError(f"{name} is encoded as {foreign}, not UTF-8: re-encode it as UTF-8 (e.g. iconv -f "
                      f"{foreign.split(' ')[0] if foreign.startswith('UTF-32') else 'UTF-16LE'} -t UTF-8 FILE > "
                      "FILE.csv, or in Excel save as 'CSV UTF-8 (Comma delimited)'); convert reads UTF-8, "
                      "Windows-1252, and UTF-16 with a byte-order mark")


def _utf16_of(head):
    """'UTF-16LE' or 'UTF-16BE' when the head starts with that byte-order mark (not UTF-32's), else None."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return None
    return next((name for name, (bom, _codec) in UTF16.items() if head.startswith(bom)), None)


def _decoded_lines(head, complete):
    """``(line terminator, encoding, [(line number, text)])`` of a head without its BOM."""
    if b"\n" in head:
        terminator = "\r\n" if head.count(b"\r\n") * 2 >= head.count(b"\n") else "\n"
    else:
        terminator = "\r" if b"\r" in head else "\n"
    raw_lines = head.split(b"\r" if terminator == "\r" else b"\n")
    if raw_lines and (raw_lines[-1] == b"" or not complete):
        raw_lines.pop()  # after the last terminator: nothing, or a line cut by the head's end
    try:
        for raw in raw_lines:
            raw.decode("utf-8")
        encoding, codec = "UTF-8", "utf-8"
    except UnicodeDecodeError:  # Excel's 'CSV (Comma delimited)' in a Western locale: names in cp1252
        encoding, codec = "Windows-1252", "cp1252"
    return terminator, encoding, [(i, raw.rstrip(b"\r").decode(codec, "replace"))
                                  for i, raw in enumerate(raw_lines, start=1)]


_SEP_LINE = re.compile(r'"?sep=(.)"?\s*')
#: Characters of a line of numbers, whatever the delimiter (decimal points and commas, signs, quotes,
#: exponents, digit grouping).
_NUMERIC_CHARS = frozenset("0123456789 \"+-.,'eE" + GROUPING)


def _choose_delimiter(name, text):
    """``(delimiter, whether line 1 is Excel's sep= line)``: the candidate that splits most of the head's
    lines of numbers into one field count of at least 2 (a pattern-and-type score as CleverCSV's, for
    tables of numbers); csv.Sniffer when no line is all numbers."""
    sep = _SEP_LINE.fullmatch(text[0][1]) if text[0][0] == 1 else None
    if sep:
        if sep.group(1) not in DELIMITERS:
            raise InputError(f"{name}: line 1 ({text[0][1][:20]!r}) sets the delimiter {sep.group(1)!r}; convert "
                             "reads ',', ';', tab or '|': save the file as comma-separated CSV")
        return sep.group(1), True
    best, best_score = None, (0, 0)
    for d in DELIMITERS:
        counts = Counter(len(_fields_or_raw(t, d)) for _i, t in text[:100] if set(t) <= _NUMERIC_CHARS | {d})
        counts.pop(1, None)
        score = max(((n, c) for c, n in counts.items()), default=(0, 0))
        if score > best_score:
            best, best_score = d, score
    if best is not None:
        return best, False
    try:
        return csv.Sniffer().sniff("\n".join(t for _i, t in text[:50]), delimiters=DELIMITERS).delimiter, False
    except csv.Error:
        return max(DELIMITERS, key=lambda d: sum(t.count(d) for _i, t in text)), False


_DOT_DECIMAL = re.compile(r"[+-]?\d*\.\d+")
_DOT_GROUPED = re.compile(r"[+-]?\d{1,3}(\.\d{3})+")


def _choose_decimal(text, delimiter):
    """The decimal separator of a file: ``.`` in comma-separated files; elsewhere ``,`` when a field of
    the head is written so (``16,0``), ``.`` when one is written ``16.5`` (not ``1.000``, digits grouped
    as de-DE does), else ``,`` for semicolons (the locales whose Excel writes ``;``) and ``.`` otherwise."""
    if delimiter == ",":
        return "."
    fields = [f.strip().strip('"') for _i, t in text[:100] for f in _fields_or_raw(t, delimiter)]
    if any(_DECIMAL_COMMA.fullmatch(f) for f in fields):
        return ","
    if any(_DOT_DECIMAL.fullmatch(f) and not _DOT_GROUPED.fullmatch(f) for f in fields):
        return "."
    return "," if delimiter == ";" or any(_DOT_GROUPED.fullmatch(f) for f in fields) else "."


def _is_title(text, delimiter, decimal):
    """A line above the table that is no row: a ``#`` comment, or a single name (a title, ``Digits,,,``)."""
    if text.lstrip().startswith("#"):
        return True
    values = [f.strip().strip('"').strip() for f in _fields_or_raw(text, delimiter)]
    values = [f for f in values if f]
    return len(values) == 1 and not _is_number(values[0], decimal)


def _preamble(text, delimiter, decimal, sep_line):
    """``(lines above the header or first row, of which not blank)``: Excel's ``sep=`` line, titles and
    comments (:func:`_is_title`) and blank lines between them. 0 when no such line comes before a line
    of the table (a file of title-like lines only is no table: it is refused, not skipped)."""
    titles = 0
    for _i, t in text[:20]:
        if not ((titles == 0 and sep_line) or _is_title(t, delimiter, decimal)):
            break
        titles += 1
    else:  # no table line: only Excel's sep= line is known to be no row
        return (text[0][0], 1) if sep_line and len(text) == 1 else (0, 0)
    first_table_line = text[titles][0]
    return (first_table_line - 1, titles) if titles or first_table_line > 1 else (0, 0)


def _is_index_name(field):
    """An unnamed first header field: a row index (pandas writes ``""``, ``Unnamed: 0`` when read back and
    saved again; R ``write.csv`` ``""``)."""
    name = field.strip().strip('"').strip()
    return name == "" or re.fullmatch(r"Unnamed: 0", name) is not None


def sniff(head: bytes, name: str, complete: bool = True) -> Dialect:
    """The :class:`Dialect` of a CSV file from its first lines.

    ``head``: the file's first bytes, whole lines (``complete``: the whole file). The delimiter is
    the one of :data:`DELIMITERS` that splits the head's lines of numbers into one field count
    (:func:`_choose_delimiter`), or Excel's ``sep=`` line. Raises :class:`InputError` naming ``name``,
    what the file is and how to convert it, when the file is UTF-32 or UTF-16 without a byte-order mark,
    when its lines split into no fields on any of :data:`DELIMITERS`, or when a column is empty in
    every row although the header names it.
    """
    foreign = _foreign_encoding(head)
    if foreign:
        raise _foreign_encoding_error(name, foreign)
    utf16 = _utf16_of(head)
    if utf16:  # an odd last byte of a cut head is a replacement character on a line the cut drops
        head = head.decode(UTF16[utf16][1], "replace").encode("utf-8")
    bom = head.startswith(codecs.BOM_UTF8)
    if bom:
        head = head[len(codecs.BOM_UTF8):]
    terminator, encoding, text = _decoded_lines(head, complete)
    encoding = utf16 or encoding
    blank = sum(not t.strip() for _i, t in text)
    text = [(i, t) for i, t in text if t.strip()]
    base = dict(line_terminator=terminator, bom=bom, encoding=encoding)
    if not text:
        return Dialect(blank_lines=blank, **base)
    delimiter, sep_line = _choose_delimiter(name, text)
    decimal = _choose_decimal(text, delimiter)
    preamble, titles = _preamble(text, delimiter, decimal, sep_line)
    text = text[titles:]
    header = None
    if text and looks_like_header(_fields_or_raw(text[0][1], delimiter), True, decimal):
        header = text[0][1]
    data = [(i, t) for i, t in text[header is not None:] if not is_blank(t.encode("utf-8"), delimiter.encode())]
    blank += len(text) - len(data) - (header is not None)
    fields = [_fields_or_raw(t, delimiter) for _i, t in data]
    counts = Counter(len(f) for f in fields)
    columns = counts.most_common(1)[0][0] if counts else None
    if columns is not None and columns < 2:
        raise InputError(f"{name}: line {data[0][0]} does not split into fields on ',', ';', tab or '|' "
                         f"({data[0][1][:80]!r}): if it is space-separated or fixed-width text, save the file as "
                         "comma-separated CSV")
    head_fields = _fields_or_raw(header, delimiter) if header is not None else None
    index = head_fields is not None and len(head_fields) > 2 and _is_index_name(head_fields[0])
    trailing = bool(data) and all(f[-1].strip() == "" for f in fields)
    named = head_fields[columns - 1].strip().strip('"') if trailing and len(head_fields or ()) >= columns else ""
    if named:  # the header names the column the rows leave empty: no trailing delimiter, a column of nothing
        raise InputError(f"{name}: column {columns} ({named[:40]!r}) is empty in every row (line {data[0][0]}: "
                         f"{data[0][1][-40:]!r}); delete the column and export again")
    if columns is not None:
        columns -= index + trailing
    return Dialect(delimiter=delimiter, quoted=any('"' in t for _i, t in text), header=header, columns=columns,
                   data_lines=len(data), blank_lines=blank, decimal=decimal, preamble=preamble,
                   index_column=index, trailing_delimiter=trailing, **base)


def _fields_or_raw(text, delimiter):
    try:
        return split_fields(text, delimiter)
    except RowError:
        return text.split(delimiter)


def _parse_lines(data, spec, first_line_no, dialect):
    """Line-by-line parse of a block: (labels, pixel rows, line numbers) of good lines, bad lines, and
    the number of blank lines (not rows)."""
    labels, pixels, numbers, bad, blank = [], [], [], [], 0
    delim = dialect.delimiter.encode()
    for offset, raw in lines(data):
        line_no = first_line_no + offset - 1
        if is_blank(raw, delim):
            blank += 1
            continue
        try:
            label, px = parse_row(raw, spec, dialect.delimiter, dialect.decimal, dialect.index_column)
        except RowError as e:
            bad.append((line_no, e.kind, str(e), raw.decode("utf-8", "replace")[:2000]))
            continue
        labels.append(label if label is not None else -1)
        pixels.append(px)
        numbers.append(line_no)
    return labels, pixels, numbers, bad, blank


def _skip_head(data, dialect, counts):
    """``(data, lines skipped)``: the start of a file without its BOM, preamble (counted as blank or
    header lines) and header line."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    eol, skipped = dialect.eol, 0
    while skipped < dialect.preamble and data:
        end = data.find(eol)
        line, data = (data, b"") if end < 0 else (data[:end], data[end + 1:])
        counts["blank_lines" if is_blank(line, dialect.delimiter.encode()) else "header_lines"] += 1
        skipped += 1
    first_end = data.find(eol)
    first = data if first_end < 0 else data[:first_end]
    fields = _fields_or_raw(first.decode("utf-8", "replace").rstrip("\r"), dialect.delimiter)
    if first.strip() and looks_like_header(fields, first_line=True, decimal=dialect.decimal):
        data, skipped = data[first_end + 1:] if first_end >= 0 else b"", skipped + 1
        counts["header_lines"] += 1
    return data, skipped


def _clean_table(block, spec, dialect):
    """:func:`parse_clean` of a block, its row index column dropped; None when not clean."""
    table = parse_clean(block, spec.num_columns + dialect.index_column, dialect.delimiter.encode(), dialect.quoted)
    return table[:, 1:] if table is not None and dialect.index_column else table


def iter_block(data: bytes, spec: Spec, first_line_no: int = 1, header_allowed: bool = True,
               dialect: Dialect | None = None, counts: Counter | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str, str, str]]]]:
    """Classify the lines of a block of a CSV file (whole lines, line numbers from ``first_line_no``).

    Yields, per block of about PARSE_BYTES, ``(labels int64 [n] (-1 when unlabeled), pixels uint16 or int64
    [n, P], line numbers int64 [n], bad)`` where ``bad`` lists ``(line, kind, reason, raw)``. When
    ``header_allowed`` (the start of a file) a UTF-8 byte-order mark is dropped, the dialect's preamble
    lines (``sep=``, titles, comments) are skipped and a header on the next line is skipped; anywhere
    else a header is a bad line. ``dialect`` (default: comma, LF, unquoted) says how lines end, fields
    split and numbers are written, and whether a row index or a trailing delimiter is to be dropped.
    Lines that are not rows are added to ``counts`` (a Counter, when given): ``blank_lines`` (empty,
    whitespace or delimiters only), ``header_lines`` (header, and preamble lines that are not blank).
    """
    dialect = dialect or Dialect()
    counts = Counter() if counts is None else counts
    if dialect.encoding in UTF16:
        data, dialect = dialect.to_utf8(data), dataclasses.replace(dialect, encoding="UTF-8")
    if header_allowed:
        data, skipped = _skip_head(data, dialect, counts)
        first_line_no += skipped
    if dialect.eol == b"\r":
        data = data.replace(b"\r", b"\n")
    elif b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if dialect.trailing_delimiter:  # the delimiter ending each line, and spaces after it
        data = re.sub(re.escape(dialect.delimiter.encode()) + rb" *\n", b"\n", data)
    line_no = first_line_no
    for _offset, block in chunks(data):
        rows = block.count(b"\n")
        table = _clean_table(block, spec, dialect)
        if table is not None:
            if spec.labeled:
                lab, px = table[:, spec.label_col].astype(np.int64), np.delete(table, spec.label_col, axis=1)
            else:
                lab, px = np.full(len(table), -1, np.int64), table
            ok = (px <= spec.pixel_max).all(axis=1)
            if spec.labeled:
                ok &= (lab >= 0) & (lab < spec.num_classes)
            if ok.all():
                yield lab, px, np.arange(line_no, line_no + rows, dtype=np.int64), []
                line_no += rows
                continue
        labels, pixels, numbers, bad, blank = _parse_lines(block, spec, line_no, dialect)
        counts["blank_lines"] += blank
        yield (np.asarray(labels, np.int64), np.asarray(pixels, np.int64).reshape(len(labels), spec.num_pixels),
               np.asarray(numbers, np.int64), bad)
        line_no += rows
