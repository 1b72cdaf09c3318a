"""The raw side of a dataset version: which files of ``{root}/raw/{version}/`` are inputs, and
reading them as streams of whole lines.

What is read (:func:`list_inputs`): ``*.csv`` and ``*.tsv`` in any letter case, plain or compressed
(``.gz``, ``.bz2``, ``.xz``: Python's standard library streams), and directories of part files as
Spark and Hadoop write them, where names starting with ``_`` or ``.`` are skipped as Hadoop does.
Hive-style partition folders ``label=K`` (Spark's ``partitionBy("label")``) give their files' rows the
label K, as Spark's partition discovery does; folders of any other column are refused. Every read streams in :data:`READ_BYTES` pieces through the storage layer (fs), so memory does not
grow with a file's size. Used by the convert job (both passes) and by ``scripts/lineage.py``.
"""

import bz2
import contextlib
import gzip
import hashlib
import lzma
import time
import zlib
from typing import BinaryIO, Iterator

from . import csvparse, fs, paths, schema

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


#: A file of a version directory: ``(name relative to raw/{version}/, full path)``.
Input = tuple[str, str]


#: Name prefixes of the entries convert skips: Hadoop's hidden names (``_SUCCESS``, ``.crc``, a producer's
#: ``.part`` file before its rename).
HIDDEN_PREFIXES = ("_", ".")


def input_entries(raw_dir: str) -> list[str]:
    """The names in ``raw_dir`` (a version's input directory, on any store tfospipe.fs reaches) that convert
    would read or refuse: every entry whose name does not start with one of :data:`HIDDEN_PREFIXES`. ``[]``
    when the directory is missing or holds none. The DAG's sensor waits for them (plugins/tfos_spark.py)."""
    return [n for n in fs.listdir(raw_dir) if not n.startswith(HIDDEN_PREFIXES)]


def compression_of(name: str) -> str | None:
    """The compression suffix of an input name (``.gz``, ``.bz2``, ``.xz``, any letter case), or None."""
    lower = name.lower()
    return next((c for c in COMPRESSIONS if lower.endswith(c)), None)


def is_csv_name(name: str) -> bool:
    """Whether convert reads a file of this name: a CSV extension, optionally compressed."""
    lower = name.lower()
    comp = compression_of(lower)
    return (lower[:-len(comp)] if comp else lower).endswith(CSV_EXTENSIONS)


def is_utf8_name(name: str) -> bool:
    """Whether a file name as the OS listing gives it (``os.listdir``: bytes that are not UTF-8 come back
    as lone surrogates, PEP 383) is UTF-8 on disk."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A file name as text that is always UTF-8: itself when it is UTF-8, else its bytes on disk with
    each byte that is not UTF-8 written ``\\xNN`` (``b"M\\xe4rz.csv"`` -> ``M\\xe4rz.csv``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _misnamed_error(raw_dir: str, names: list[str]) -> csvparse.InputError:
    """The InputError of files whose names are not UTF-8: each shown with escapes, and as cp1252 (what
    Windows tools write) when its bytes read as that, and what to do."""
    shown = []
    for name in names:
        guess = ""
        try:
            guess = name.encode("utf-8", "surrogateescape").decode("cp1252")
        except UnicodeDecodeError:
            pass
        shown.append(f"'{printable_name(name)}'" + (f" ('{guess}' if its bytes are cp1252, as Windows tools write)"
                                                      if guess else ""))
    many = len(names) > 1
    return csvparse.InputError(
        f"{raw_dir} holds {len(names)} {'files' if many else 'file'} whose name is not UTF-8: "
        f"{', '.join(shown[:10])}{' ...' if len(names) > 10 else ''}. Convert records every input's name in the "
        f"manifest and the lineage index, which hold UTF-8 text, so it refuses such a name rather than lose or "
        f"alter it: rename {'them' if many else 'it'} to UTF-8 (e.g. `convmv -f cp1252 -t utf-8 -r --notest "
        f"{raw_dir}`, or mv) and rerun; nothing was written")


#: What a file convert does not read is, and how to make CSV of it, by extension (lower case).
_SPREADSHEET = ("a spreadsheet workbook: save each sheet as 'CSV UTF-8 (Comma delimited)', or "
                "pandas.read_excel(path, sheet_name=None) and to_csv(index=False) each sheet")
NOT_CSV = {
    **dict.fromkeys((".xlsx", ".xlsm", ".xlsb", ".xls", ".ods", ".numbers"), _SPREADSHEET),
    **dict.fromkeys((".txt", ".dat", ".tab", ".prn"),
                    "text: if it is a table (Excel's 'Text (Tab delimited)' or 'Unicode Text', PostgreSQL COPY, "
                    "MySQL INTO OUTFILE), "
                    "rename it to .tsv or .csv"),
    **dict.fromkeys((".json", ".jsonl", ".ndjson"), "JSON: pandas.read_json(path, lines=...).to_csv(index=False)"),
    **dict.fromkeys((".parquet", ".orc", ".avro", ".feather", ".arrow"),
                    "a binary table: spark.read.format(...).load(path).write.csv(out, header=True)"),
    **dict.fromkeys((".zip", ".7z", ".rar", ".tar", ".tgz", ".zst", ".lz4", ".snappy", ".deflate", ".z"),
                    "an archive or compression convert does not read: unpack it, or compress each CSV file "
                    "with gzip, bzip2 or xz"),
}


def what_it_is(name: str) -> str:
    """``name``, and what it is and how to convert it when its extension says (:data:`NOT_CSV`):
    ``book.xlsx (a spreadsheet workbook: save each sheet as ...)``."""
    lower = name.lower()
    comp = compression_of(lower)
    stem = lower[:-len(comp)] if comp else lower
    ext = next((e for e in NOT_CSV if stem.endswith(e)), None)
    return f"{name} ({NOT_CSV[ext]})" if ext else name


#: The one partition column read from folder names (``label=K``, compared case-insensitively), as Spark's
#: ``df.write.partitionBy("label")`` and ``pyarrow.dataset`` (``partitioning="hive"``) write it.
PARTITION_KEY = "label"
#: The folder value Spark and Hive write for a null partition value (``label=__HIVE_DEFAULT_PARTITION__``).
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def partition_of(entry: str) -> tuple[str, str] | None:
    """``(key, value)`` of a Hive-style partition folder name (``label=3`` -> ``("label", "3")``), else None."""
    key, eq, value = entry.partition("=")
    return (key, value) if eq and key else None


def partition_label(name: str) -> int | None:
    """The label the ``label=K`` folder of an input gives its rows (``name`` relative to ``raw/{version}/``,
    e.g. ``digits.csv/label=3/part-00000.csv`` -> 3), or None when no folder of it is one. Expects a name
    :func:`list_inputs` accepted (K an integer)."""
    for folder in name.split("/")[:-1]:
        part = partition_of(folder)
        if part and part[0].lower() == PARTITION_KEY:
            return int(part[1])
    return None


def _label_value(value: str) -> int | None:
    """The class id a ``label=`` folder's value names: an integer 0..NUM_CLASSES-1 (``3``, ``03``), else None."""
    return int(value) if value.isascii() and value.isdigit() and int(value) < schema.NUM_CLASSES else None


def _partition_refusal(raw_dir: str, bad_labels: list[str], others: list[tuple[str, str]]) -> csvparse.InputError:
    """The InputError of partition folders convert cannot read: ``label=`` folders whose value is no label
    (Spark's null folder, another value) or nested in score/ or another label folder; folders of other columns."""
    def some(names):
        return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    if bad_labels:
        null = [n for n in bad_labels if n.rsplit("=", 1)[-1] == HIVE_NULL]
        what = ("rows whose label was null when Spark wrote them (partitionBy writes them to "
                f"label={HIVE_NULL})" if null else f"a value that is not a label 0..{schema.NUM_CLASSES - 1}")
        return csvparse.InputError(
            f"{raw_dir} holds label partition folders convert cannot read ({some(bad_labels)}): {what}, or a label "
            f"folder under score/ (unlabeled) or inside another label folder. Convert reads the label of the rows "
            f"under a folder label=K, K from 0 to {schema.NUM_CLASSES - 1}: label the rows of those folders or move "
            "them out of the version directory (rows without a label to score go under score/), and rerun; nothing "
            "was written")
    keys = sorted({key for _name, key in others})
    names = sorted(name for name, _key in others)
    drop = ", ".join(f"'{k}'" for k in keys)
    return csvparse.InputError(
        f"{raw_dir} holds partition folders of the column{'s' if len(keys) > 1 else ''} {drop} ({some(names)}), as "
        f"Spark's df.write.partitionBy(...).csv() writes them: convert reads only the label from folder names "
        f"(label=K). If {'one of those columns' if len(keys) > 1 else 'that column'} is the label, rename its folders "
        f"to label=K; otherwise write the data again without partitionBy and without that column "
        f"(spark.read.csv(dir, header=True).drop({drop}).write.csv(out, header=True)) and rerun; nothing was written")


def list_inputs(raw_dir: str) -> tuple[list[Input], list[Input], list[str], list[str]]:
    """The input files of a version directory: ``(labeled, unlabeled, skipped, unreadable)``.

    ``labeled`` and ``unlabeled`` (under ``score/``) are sorted ``(name, path)`` pairs, ``name``
    relative to ``raw_dir`` (``a.csv``, ``digits.csv/part-00000.csv``, ``score/s.csv``): it keys row
    ids and the quarantine. Directories are read recursively (Spark output, partition folders).
    A file under a Hive-style folder ``label=K`` (``digits.csv/label=3/part-00000.csv``, K an integer
    0..NUM_CLASSES-1, the key in any letter case) is labeled: its rows hold pixels only and take label K
    (:func:`partition_label`). ``skipped``: names starting with ``_`` or ``.`` (Hadoop's hidden files),
    as :func:`printable_name` writes them. ``unreadable``: every other file, which the caller refuses.
    All four are sorted by name.

    Raises csvparse.InputError naming every file or directory (other than skipped ones) whose name is
    not UTF-8 (e.g. ``M\\xe4rz.csv``, cp1252 bytes from a Windows tool): such a name cannot be stored
    in the manifest or the lineage index (Parquet strings are UTF-8) as it is on disk; naming ``label=``
    folders whose value is no label (Spark's null ``__HIVE_DEFAULT_PARTITION__``, ``label=12``) or that lie
    under ``score/`` or another label folder; and naming partition folders of any other column
    (``source=x``: its value is not in the rows, and convert reads only the label from folders).
    """
    groups = {"labeled": [], "unlabeled": []}
    skipped, unreadable, misnamed, bad_labels, others = [], [], [], [], []

    def walk(directory, prefix, group, in_label):
        for entry in fs.listdir(directory):
            path, name = paths.join(directory, entry), prefix + entry
            if entry.startswith(HIDDEN_PREFIXES):
                skipped.append(printable_name(name))
            elif not is_utf8_name(entry):
                misnamed.append(name)
            elif fs.isdir(path):
                part = partition_of(entry)
                if part and part[0].lower() != PARTITION_KEY:
                    others.append((name, part[0]))
                elif part and (_label_value(part[1]) is None or in_label or group == "unlabeled"):
                    bad_labels.append(name)
                else:
                    walk(path, name + "/", "unlabeled" if (prefix, entry) == ("", "score") else group,
                         in_label or part is not None)
            elif is_csv_name(entry):
                groups[group].append((name, path))
            else:
                unreadable.append(name)

    walk(raw_dir, "", "labeled", False)
    if misnamed:
        raise _misnamed_error(raw_dir, sorted(misnamed))
    if bad_labels or others:
        raise _partition_refusal(raw_dir, sorted(bad_labels), others)
    return sorted(groups["labeled"]), sorted(groups["unlabeled"]), sorted(skipped), sorted(unreadable)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """A binary reader of an input file, decompressing it by its suffix: ``(reader, raw file)``.

    ``raw file`` is the stored (compressed) stream, whose ``tell()`` says how far the reader got;
    for a plain file both are the same object. Raises OSError when the file cannot be opened.
    """
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


def read_head(name: str, path: str) -> tuple[bytes, bool]:
    """``(bytes, complete)``: the first whole lines of an input file (decompressed), up to
    :data:`HEAD_LINES` lines or :data:`HEAD_BYTES` bytes, and whether that is the whole file.

    Raises csvparse.InputError when the file is corrupt or no line ends within MAX_LINE_BYTES,
    OSError when it cannot be read.
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


def _line_start(f, offset, eol, size):
    """The first line start at or after byte ``offset`` of an open plain file: just after an ``eol``
    that starts at a multiple of its length (a UTF-16 file's characters start at even offsets)."""
    if offset <= 0:
        return 0
    step = len(eol)
    base = max(0, offset - step)  # an eol that ends at offset starts here
    f.seek(base)
    carry = b""
    while base < size:
        piece = f.read(1 << 16)
        if not piece:
            break
        buf = carry + piece
        i = buf.find(eol)
        while i >= 0:
            if (base + i) % step == 0 and base + i + step >= offset:
                return base + i + step
            i = buf.find(eol, i + 1)
        carry = buf[len(buf) - step + 1:] if step > 1 else b""
        base += len(buf) - len(carry)
    return size


def file_digest(name: str, path: str) -> dict:
    """Executor side, pass 1: size and SHA-256 of a file as stored (compressed files compressed).

    Returns ``{"name", "path", "bytes", "sha256" (64 hex digits), "span"}``; ``span`` is the task's
    ``(start, end)`` wall-clock time in epoch seconds. Streams the file in READ_BYTES pieces: memory
    does not grow with its size. Raises OSError when the file cannot be read.
    """
    started = time.time()
    digest = hashlib.sha256()
    with fs.open_read(path) as f:
        while piece := f.read(READ_BYTES):
            digest.update(piece)
    return {"name": name, "path": path, "bytes": fs.size(path), "sha256": digest.hexdigest(),
            "span": (started, time.time())}


def range_lines(path: str, part: int, parts: int, eol: bytes = b"\n") -> dict:
    """Executor side, pass 1: the line-aligned bytes of range ``part`` of ``parts`` of a plain file and
    how many lines end in them.

    A range owns the lines that start inside its share ``[size * part // parts, size * (part + 1) //
    parts)`` of the bytes, so consecutive ranges tile the file. Returns ``{"path", "part", "start",
    "end", "lines" (count of ``eol`` in [start, end)), "span"}``. Raises OSError when the file cannot
    be read.
    """
    started = time.time()
    size = fs.size(path)
    lines = 0
    with fs.open_read(path) as f:
        start = _line_start(f, size * part // parts, eol, size)
        end = max(start, _line_start(f, size * (part + 1) // parts, eol, size))
        f.seek(start)
        remaining, carry = end - start, b""
        while remaining > 0 and (piece := f.read(min(READ_BYTES, remaining))):
            remaining -= len(piece)
            buf = carry + piece  # whole characters: a two-byte eol (UTF-16) is never cut in two
            whole = len(buf) - len(buf) % len(eol)
            lines += buf.count(eol, 0, whole)
            carry = buf[whole:]
    return {"path": path, "part": part, "start": start, "end": end, "lines": lines, "span": (started, time.time())}


def range_spans(ranges: list[dict], size: int) -> list[tuple[int, int, int]]:
    """``(start, end, first line number)`` of each range of one file, from its :func:`range_lines`
    results (any order); a file read as one range (``ranges`` empty: compressed or unsplit) is
    ``[(0, size, 1)]``. The first line of a range is 1 + the lines of the ranges before it."""
    if not ranges:
        return [(0, size, 1)]
    spans, first_line = [], 1
    for r in sorted(ranges, key=lambda r: r["part"]):
        spans.append((r["start"], r["end"], first_line))
        first_line += r["lines"]
    return spans


def range_chunks(name: str, path: str, start: int, end: int, eol: bytes) -> Iterator[bytes]:
    """Whole-line pieces (about READ_BYTES each) of bytes ``[start, end)`` of a plain file, or of the
    whole decompressed stream of a compressed one (``start`` and ``end`` are then ignored).

    Lines end with ``eol`` (``b"\\n"``, ``b"\\r"`` for CR-only files, two bytes in UTF-16); the last piece
    may lack it.
    Raises csvparse.InputError when the stream is corrupt or truncated, or a line is longer than
    MAX_LINE_BYTES; OSError when the file cannot be read."""
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
            last = data.rfind(eol)
            cut = last + len(eol) if last >= 0 else 0
            carry = data[cut:]
            if cut:
                yield data[:cut]
            elif len(carry) > MAX_LINE_BYTES:
                raise csvparse.InputError(f"{name}: a line longer than {MAX_LINE_BYTES:,} bytes")
        if carry:
            yield carry
