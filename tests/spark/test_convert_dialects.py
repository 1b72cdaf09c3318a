"""The convert job on CSV as real producers write it (real Spark, 2 executors).

The producer cases shipped in tests/data/csv-dialects (one folder = one raw/<version>/ directory, row
counts in its EXPECTED.md) and one more case of each kind built here all go into one dataset version:
every file must convert with its exact row count, and every TFRecord must hold the values of its
source line, found through its row id (file name, line number). Inputs that cannot be read fail the
run with one ERROR line naming the file, and write nothing.
"""
import bz2
import codecs
import csv
import glob
import gzip
import json
import os
import re
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from conftest import PROJECT_DIR, run_job
from tfospipe import csvparse, schema

pytestmark = pytest.mark.spark
CASES = os.path.join(PROJECT_DIR, "tests", "data", "csv-dialects")
HEADER = "label," + ",".join(f"pixel{i}" for i in range(64))


def expected_counts():
    """{folder: data rows} from EXPECTED.md's table."""
    text = open(os.path.join(CASES, "EXPECTED.md")).read()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (\w+) \|.*\| (\d+) \|$", text, re.M)}


def digits_rows(start, stop):
    d = load_digits()
    return [[int(t)] + [int(v) for v in row] for t, row in zip(d.target[start:stop], d.data[start:stop])]


#: How the independent reading below reads the shipped cases that are not plain comma-separated UTF-8:
#: delimiter, lines above the header (``sep=``, comments, titles, blank), a row index first, a delimiter at
#: the end of each line, the decimal separator, the encoding.
READ_AS = {
    "excel_de_semicolon": dict(delimiter=";", above=1, decimal=",", encoding="cp1252"),
    "pandas_index": dict(index=True),
    "r_write_csv": dict(index=True),
    "title_comments": dict(above=4),
    "trailing_delimiter": dict(trailing=True),
    "excel_unicode_text": dict(delimiter="\t", encoding="utf-16"),
}


def reference_rows(data, delimiter=",", above=0, index=False, trailing=False, decimal=".", encoding="utf-8-sig",
                   label=None):
    """{line number: row} of a CSV file by Python's csv module alone: the independent reading the job
    must agree with (BOM dropped, any line terminator, quoting; blank lines, the ``above`` lines and a
    header on the line after them are not rows). ``label``: the rows hold pixels only and take this label
    (a file under a label=K folder)."""
    text = data.decode(encoding)
    rows = {}
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        fields = next(csv.reader([line], delimiter=delimiter)) if line else []
        if number <= above or not any(f.strip() for f in fields):
            continue
        fields = fields[int(index):len(fields) - int(trailing)]
        if number == above + 1 and (not all(f.strip().isdigit() for f in fields)
                                    or [int(f) for f in fields] == list(range(len(fields)))):
            continue  # a header: names, or pandas' integer column names
        rows[number] = [int(float(f.replace(",", "."))) if decimal == "," else int(f) for f in fields]
        if label is not None:
            rows[number] = [label] + rows[number]
    return rows


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def lines_of(rows, delimiter=",", quote=False, eol="\n", header=None, blank_every=0, filler=""):
    out = [] if header is None else [header]
    for i, r in enumerate(rows):
        out.append(delimiter.join(f'"{v}"' if quote else str(v) for v in r))
        if blank_every and i % blank_every == 0:
            out.append(filler)
    return (eol.join(out) + eol).encode("utf-8")


@pytest.fixture(scope="module")
def producer_version(tmp_path_factory, build_dir):
    """One dataset version holding every producer case: {name: (bytes, delimiter)} and the job's output."""
    root = tmp_path_factory.mktemp("dialects")
    raw = root / "raw" / "dialects"
    sources = {}  # file name in the version -> (bytes as decompressed, how reference_rows reads it)
    for case in sorted(os.listdir(CASES)):  # the shipped producer cases, prefixed by their folder
        folder = os.path.join(CASES, case)
        if not os.path.isdir(folder):
            continue
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), folder)
                target = f"{case}__{rel}"
                write(str(raw / target), open(os.path.join(dirpath, name), "rb").read())
                if not name.startswith(("_", ".")):
                    sources[target] = (open(os.path.join(dirpath, name), "rb").read(), READ_AS.get(case, {}))
    rows = digits_rows(0, 400)
    built = {  # one more case of each kind
        "semicolon.csv": (lines_of(rows[0:20], ";"), ";"),
        "tabs.TSV": (lines_of(rows[20:40], "\t", header="label\t" + "\t".join(map(str, range(64)))), "\t"),
        "crlf_bom_header.csv": (codecs.BOM_UTF8 + lines_of(rows[40:60], eol="\r\n", header=HEADER), ","),
        "mixed_header.csv": (lines_of(rows[60:80], header="label," + ",".join(map(str, range(64)))), ","),
        "pipes_quoted.csv": (lines_of(rows[80:100], "|", quote=True), "|"),
        "excel_blank_rows.csv": (lines_of(rows[100:130], blank_every=7, filler="," * 64), ","),
        "partly_quoted.csv": (lines_of(rows[130:135]) + lines_of(rows[135:141], quote=True), ","),
    }
    compressed = {
        "upper.CSV.GZ": (gzip.compress, lines_of(rows[141:171], header=HEADER)),
        "bzipped.csv.bz2": (bz2.compress, lines_of(rows[171:201])),
        "parts.csv/part-00000.csv.gz": (gzip.compress, lines_of(rows[201:231], header=HEADER)),
        "parts.csv/part-00001.csv.gz": (gzip.compress, lines_of(rows[231:261], header=HEADER)),
    }
    for name, (data, delimiter) in built.items():
        write(str(raw / name), data)
        sources[name] = (data, {"delimiter": delimiter})
    for name, (compress, data) in compressed.items():
        write(str(raw / name), compress(data))
        sources[name] = (data, {})
    write(str(raw / "parts.csv" / "_SUCCESS"), b"")
    write(str(raw / "parts.csv" / ".part-00000.csv.gz.crc"), b"crc")
    # df.write.partitionBy("label").csv(..., header=True): a label=K folder per label, pixels only in the rows
    for label, folder in ((0, "label=0"), (3, "label=3"), (7, "LABEL=7")):
        rows = [r[1:] for r in digits_rows(400, 700) if r[0] == label]
        name = f"partitioned.csv/{folder}/part-00000-5f1e.c000.csv"
        write(str(raw / name), lines_of(rows, header=",".join(f"pixel{i}" for i in range(64))))
        sources[name] = (open(raw / name, "rb").read(), {"label": label})
    write(str(raw / "partitioned.csv" / "_SUCCESS"), b"")
    run = run_job("convert", {"data_root": str(root), "version": "dialects", "pixel_max": 16}, build_dir)
    assert run.returncode == 0, run.explain(5000)
    out = root / "tfrecords" / "dialects"
    return root, sources, json.load(open(out / "_manifest.json")), out


def test_every_producer_case_converts_with_its_exact_row_count(producer_version):
    _root, sources, manifest, _out = producer_version
    by_file = {i["file"]: i for i in manifest["inputs"]}
    assert set(by_file) == set(sources)
    for case, count in expected_counts().items():
        files = [f for f in by_file if f.startswith(case + "__")]
        assert files and sum(by_file[f]["rows"] for f in files) == count, case
    for name, (data, how) in sources.items():
        assert by_file[name]["rows"] == len(reference_rows(data, **how)), name
    assert manifest["rows_quarantined"] == 0
    expected_rows = sum(len(reference_rows(d, **how)) for d, how in sources.values())
    assert manifest["rows_read"] == manifest["rows_written"] == expected_rows
    assert sorted(manifest["skipped_hidden"]) == sorted(
        ["parts.csv/.part-00000.csv.gz.crc", "parts.csv/_SUCCESS", "spark_dir__digits.csv/_SUCCESS",
         "spark_dir__digits.csv/.part-00000-1b2c.c000.csv.crc", "partitioned.csv/_SUCCESS"])


def test_label_partition_folders_give_their_rows_the_label(producer_version):
    """Spark's partitionBy("label") export: the label comes from each label=K folder (any letter case)."""
    _root, sources, manifest, out = producer_version
    by_file = {i["file"]: i for i in manifest["inputs"]}
    partitioned = {n: how["label"] for n, (_d, how) in sources.items() if n.startswith("partitioned.csv/")}
    assert len(partitioned) == 3
    for name, label in partitioned.items():
        assert by_file[name]["partition"] == {"label": label} and by_file[name]["rows"] > 10, name
    assert not any("partition" in i for n, i in by_file.items() if n not in partitioned)
    expected = Counter(str(row[0]) for data, how in sources.values() for row in reference_rows(data, **how).values())
    assert manifest["label_counts"] == dict(expected) and manifest["rows_quarantined"] == 0
    stats = json.load(open(out / "_stats.json"))
    assert {k: stats["splits"]["train"]["label_counts"][k] + stats["splits"]["eval"]["label_counts"][k]
            for k in expected} == dict(expected)


def test_lines_that_are_not_rows_are_counted_apart(producer_version):
    _root, _sources, manifest, _out = producer_version
    by_file = {i["file"]: i for i in manifest["inputs"]}
    assert by_file["blank_lines__a.csv"]["blank_lines"] == 3
    assert by_file["excel_blank_rows.csv"]["blank_lines"] == 5
    for name in ["numeric_header__a.csv", "quoted_all__a.csv", "cr_only__a.csv", "tabs.TSV", "mixed_header.csv",
                 "crlf_bom_header.csv", "upper.CSV.GZ", "parts.csv/part-00001.csv.gz", "pandas_index__a.csv",
                 "r_write_csv__a.csv", "trailing_delimiter__a.csv", "excel_unicode_text__a.tsv"]:
        assert by_file[name]["header_lines"] == 1 and by_file[name]["dialect"]["header"], name
    # lines above the header: Excel's sep= line; two comments, a title and a blank line
    assert by_file["excel_de_semicolon__a.csv"]["header_lines"] == 2
    assert (by_file["title_comments__a.csv"]["header_lines"], by_file["title_comments__a.csv"]["blank_lines"]) == (4, 1)
    assert manifest["blank_lines"] == sum(i["blank_lines"] for i in manifest["inputs"]) == 9
    assert manifest["header_lines"] == sum(i["header_lines"] for i in manifest["inputs"])


def test_manifest_states_the_dialect_of_each_file(producer_version):
    _root, _sources, manifest, _out = producer_version
    d = {i["file"]: i["dialect"] for i in manifest["inputs"]}
    assert d["bom_noheader__a.csv"]["encoding"] == "UTF-8 with BOM" and d["bom_noheader__a.csv"]["header"] is None
    assert d["cr_only__a.csv"]["line_terminator"] == "CR"
    assert d["crlf_bom_header.csv"]["line_terminator"] == "CRLF" and d["crlf_bom_header.csv"]["encoding"] == \
        "UTF-8 with BOM"
    assert d["quoted_all__a.csv"]["quoted"] and d["pipes_quoted.csv"]["delimiter"] == "|"
    assert d["semicolon.csv"]["delimiter"] == ";" and d["tabs.TSV"]["delimiter"] == "\t"
    assert d["numeric_header__a.csv"]["header"].startswith("0,1,2,")
    de = d["excel_de_semicolon__a.csv"]
    assert (de["delimiter"], de["decimal"], de["encoding"], de["preamble_lines"]) == (";", ",", "Windows-1252", 1)
    assert de["header"].startswith("Ziffer;Größe0;")
    assert d["pandas_index__a.csv"]["index_column"] and d["r_write_csv__a.csv"]["index_column"]
    assert d["trailing_delimiter__a.csv"]["trailing_delimiter"] and d["title_comments__a.csv"]["preamble_lines"] == 4
    assert d["excel_unicode_text__a.tsv"]["encoding"] == "UTF-16LE with BOM" and d["excel_unicode_text__a.tsv"][
        "delimiter"] == "\t"


def test_every_record_holds_the_values_of_its_source_line(producer_version):
    _root, sources, manifest, out = producer_version
    expected = {}
    for name, (data, how) in sources.items():
        for line, row in reference_rows(data, **how).items():
            expected[csvparse.row_id(name, line)] = row
    records = [bytes(r.numpy()) for split in ("train", "eval")
               for p in sorted(glob.glob(str(out / split / "*.tfrecord"))) for r in tf.data.TFRecordDataset(p)]
    image, label, row_id = schema.parse_batch(tf.constant(records), (8, 8))
    got = {int(r): [int(lab)] + img.reshape(-1).astype(int).tolist()
           for img, lab, r in zip(image.numpy(), label.numpy(), row_id.numpy())}
    assert len(records) == len(got) == len(expected) == manifest["rows_written"]
    assert got == expected


def _version(root, name, files):
    for rel, data in files.items():
        write(str(root / "raw" / name / rel), data)
    return name


def test_empty_and_header_only_files_beside_good_ones_are_counted_and_skipped(tmp_path, build_dir):
    rows = digits_rows(0, 60)
    version = _version(tmp_path, "empties", {
        "a_empty.csv": b"", "b_header_only.csv": (HEADER + "\n").encode(), "c_blank.csv": b"\n\n\n",
        "d_empty.csv.gz": gzip.compress(b""), "e_good.csv": lines_of(rows)})
    run = run_job("convert", {"data_root": str(tmp_path), "version": version, "pixel_max": 16}, build_dir)
    assert run.returncode == 0, run.explain(4000)
    manifest = json.load(open(tmp_path / "tfrecords" / version / "_manifest.json"))
    assert manifest["rows_read"] == manifest["rows_written"] == 60 and manifest["rows_quarantined"] == 0
    notes = {i["file"]: i.get("no_rows") for i in manifest["inputs"]}
    assert notes == {"a_empty.csv": "empty", "b_header_only.csv": "header only", "c_blank.csv": "blank lines only",
                     "d_empty.csv.gz": "empty", "e_good.csv": None}
    assert manifest["blank_lines"] == 3 and manifest["header_lines"] == 1


def test_lines_longer_than_a_mebibyte_give_the_shape_from_whole_lines(tmp_path, build_dir):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 600 * 600))
    body = b"".join(b"%d," % (i % 10) + ",".join(map(str, img)).encode() + b"\n" for i, img in enumerate(images))
    assert len(body) // 4 > 1 << 20
    version = _version(tmp_path, "wide", {"big.csv": body})
    run = run_job("convert", {"data_root": str(tmp_path), "version": version, "num_shards": 2}, build_dir)
    assert run.returncode == 0, run.explain(4000)
    out = tmp_path / "tfrecords" / version
    manifest = json.load(open(out / "_manifest.json"))
    assert manifest["image_shape"] == [600, 600] and manifest["rows_written"] == 4
    records = [bytes(r.numpy()) for p in sorted(glob.glob(str(out / "*" / "*.tfrecord")))
               for r in tf.data.TFRecordDataset(p)]
    image, _label, _ids = schema.parse_batch(tf.constant(records), (600, 600))
    assert sorted(tuple(i.reshape(-1)[:50]) for i in image.numpy().astype(int)) == \
        sorted(tuple(i[:50]) for i in images)


def _nothing_written(root, version):
    return not os.path.exists(root / "tfrecords" / version) and not glob.glob(str(root / "quarantine" / version / "*"))


@pytest.mark.parametrize("case, files, words", [
    ("truncated_gzip", None, ["b.csv.gz is corrupt", "at compressed byte", "lines", "can be read",
                              "complete copy", "nothing was written"]),
    ("utf32", {"a.csv": codecs.BOM_UTF32_LE + "5,0,0\n1,2,3\n".encode("utf-32-le")},
     ["a.csv is encoded as UTF-32LE", "re-encode it as UTF-8", "iconv -f UTF-32LE -t UTF-8"]),
    ("named_empty_column", {"a.csv": b"label,a,b,c,d\n5,0,0,1,\n1,2,3,4,\n"},
     ["a.csv: column 5 ('d') is empty in every row", "line 2", "delete the column"]),
    ("spreadsheet", {"a.csv": b"5,0,0,1,2\n", "digits.xlsx": b"PK\x03\x04"},
     ["digits.xlsx (a spreadsheet workbook: save each sheet as 'CSV UTF-8", "does not read", "move them out"]),
    # a cp1252 name from a Windows tool: bytes b"M\xe4rz.csv" on disk (os.fsdecode: the str open() writes them from)
    ("non_utf8_name", {"a.csv": b"5,0,0,1,2\n", os.fsdecode(b"M\xe4rz.csv"): b"5,0,0,1,2\n"},
     ["whose name is not UTF-8: 'M\\xe4rz.csv' ('M\u00e4rz.csv' if its bytes are cp1252", "rename it to UTF-8"]),
])
def test_unreadable_inputs_fail_with_one_clear_line_and_write_nothing(tmp_path, build_dir, case, files, words):
    if case == "truncated_gzip":  # a good file, and a gzip cut at 70% (thousands of rows still decompress)
        rows = digits_rows(0, 1797) * 7
        whole = gzip.compress(lines_of(rows))
        files = {"a.csv": lines_of(digits_rows(0, 100)), "b.csv.gz": whole[:len(whole) * 7 // 10]}
    version = _version(tmp_path, case, files)
    run = run_job("convert", {"data_root": str(tmp_path), "version": version, "pixel_max": 16}, build_dir)
    assert run.returncode == 2, run.explain(4000)
    err = run.error()
    for word in words:
        assert word in err, err
    assert "Traceback" not in err and "not a square image" not in err
    if case == "truncated_gzip":
        recovered = int(re.search(r"only its first ([\d,]+) lines", err).group(1).replace(",", ""))
        assert 1000 < recovered < len(rows)
    if case == "non_utf8_name":  # refused on the driver before any Spark job: no task ran, nothing retried
        assert "Traceback" not in run.output and "UnicodeEncodeError" not in run.output and "Lost task" not in run.output
    if case in ("utf32", "spreadsheet", "non_utf8_name"):  # found by listing and sniffing: refused by
        assert "Running Spark version" not in run.output     # convert.prepare, before any SparkSession
    assert _nothing_written(tmp_path, version)
