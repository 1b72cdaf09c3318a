"""CSV as producers write it, without Spark: dialect sniffing, lines that are not rows, input layout,
corrupt and unusual files. The same inputs run through the real convert job in tests/spark."""
import bz2
import codecs
import gzip
import os

import numpy as np
import pytest

from test_csvparse import parse_block
from tfospipe import convert, csvparse, inputs

SPEC = csvparse.Spec(num_pixels=4, pixel_max=16)
ROWS = [[7, 0, 16, 3, 4], [1, 2, 3, 4, 5], [9, 9, 9, 9, 9]]


def csv_bytes(rows, delimiter=",", quote=False, eol="\n", header=None, bom=False):
    def fmt(values):
        return delimiter.join(f'"{v}"' if quote else str(v) for v in values)
    lines = ([header] if header is not None else []) + [fmt(r) for r in rows]
    data = (eol.join(lines) + eol).encode("utf-8")
    return codecs.BOM_UTF8 + data if bom else data


def parse_all(data, dialect, first_line_no=1):
    counts = {}
    from collections import Counter
    counts = Counter()
    labels, pixels, lines, bad = parse_block(data, SPEC, first_line_no, True, dialect, counts)
    return [[int(lab)] + px.tolist() for lab, px in zip(labels, pixels)], lines.tolist(), bad, counts


@pytest.mark.parametrize("delimiter, quote, eol, header, bom", [
    (",", False, "\n", None, False),
    (";", False, "\n", None, False),
    ("\t", False, "\r\n", "label\tp0\tp1\tp2\tp3", False),
    ("|", True, "\n", '"label"|"a"|"b"|"c"|"d"', False),
    (",", True, "\r", "label,p0,p1,p2,p3", True),
    (",", False, "\r\n", "0,1,2,3,4", True),           # integer column names (pandas)
    (",", False, "\n", "label,0,1,2,3", False),         # names mixed with indices
])
def test_every_dialect_is_sniffed_and_parses_to_the_same_rows(delimiter, quote, eol, header, bom):
    data = csv_bytes(ROWS, delimiter, quote, eol, header, bom)
    dialect = csvparse.sniff(data, "x.csv")
    assert (dialect.delimiter, dialect.quoted, dialect.line_terminator, dialect.bom) == (delimiter, quote, eol, bom)
    assert dialect.header == header and dialect.columns == 5 and dialect.data_lines == 3
    rows, lines, bad, counts = parse_all(data, dialect)
    assert rows == ROWS and bad == []
    first = 2 if header else 1
    assert lines == [first, first + 1, first + 2]
    assert counts["header_lines"] == (1 if header else 0)


def test_quoted_bulk_path_equals_the_line_by_line_parser():
    rng = np.random.default_rng(3)
    rows = [[int(rng.integers(0, 10))] + rng.integers(0, 17, 4).tolist() for _ in range(500)]
    data = csv_bytes(rows, quote=True)
    table = csvparse.parse_clean(data, 5, b",", quoted=True)
    assert table is not None and table.tolist() == rows
    by_line = [list(csvparse.parse_row(line, SPEC)) for _n, line in csvparse.lines(data)]
    assert [[lab] + px for lab, px in by_line] == rows
    # quotes that do not wrap whole fields are not clean: the line-by-line parser decides
    for block in [b'"1,2",3\n', b'1,""\n', b'1"2",3\n', b'"1""2",3\n', b'"1,2\n']:
        assert csvparse.parse_clean(block, 2, b",", quoted=True) is None, block


def test_blank_lines_are_counted_never_rows_or_bad_rows():
    data = b"\n7,0,16,3,4\n\n   \n,,,,\n\"\",\"\",\"\",\"\",\"\"\n1,2,3,4,5\n\n"
    rows, lines, bad, counts = parse_all(data, csvparse.Dialect())
    assert rows == ROWS[:2] and lines == [2, 7] and bad == []
    assert counts["blank_lines"] == 6
    assert csvparse.sniff(data, "x.csv").blank_lines == 6


def test_header_conventions_on_the_first_line_only():
    assert csvparse.looks_like_header(["label", "p0", "p1"], first_line=True)
    assert csvparse.looks_like_header("label,0,1,2".split(","))
    assert csvparse.looks_like_header("1x1,1x2,label".split(","))
    assert csvparse.looks_like_header("0,1,2,3".split(","), first_line=True)
    assert csvparse.looks_like_header("1,2,3,4".split(","), first_line=True)
    assert not csvparse.looks_like_header("1,2,3,4".split(","))        # a row elsewhere in the file
    assert not csvparse.looks_like_header("5,0,0,3".split(","), first_line=True)
    assert not csvparse.looks_like_header("2,3,4,5".split(","), first_line=True)
    assert not csvparse.looks_like_header("3,0,nan,1".split(","), first_line=True)
    assert not csvparse.looks_like_header("3,0,x,1".split(","), first_line=True)


@pytest.mark.parametrize("data, words", [
    (codecs.BOM_UTF32_BE + "5,0,0,1,2\n".encode("utf-32-be"), ["UTF-32BE", "re-encode it as UTF-8"]),
    ("5,0,0,1,2\n".encode("utf-16-le"), ["NUL bytes", "re-encode it as UTF-8", "iconv -f UTF-16LE -t UTF-8",
                                          "UTF-16 with a byte-order mark"]),
    (b"label,a,b,c,d,e\n5,0,0,1,2,\n1,2,3,4,5,\n", ["column 6 ('e') is empty in every row", "line 2",
                                                    "delete the column"]),
    (b"sep=:\n5:0:0:1:2\n", ["line 1", "sets the delimiter ':'", "comma-separated"]),
    (b"5 0 0 1 2\n1 2 3 4 5\n", ["does not split into fields", "line 1", "comma-separated"]),
])
def test_unreadable_dialects_name_the_file_what_was_seen_and_what_to_do(data, words):
    with pytest.raises(csvparse.InputError) as e:
        csvparse.sniff(data, "raw/v1/x.csv")
    assert "raw/v1/x.csv" in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_semicolon_file_with_decimal_commas_reads_them_and_quarantines_fractions():
    data = b"5;0;0;1;2\n1;2;3,5;4;5\n6;0,0;16,00;1;2\n"
    dialect = csvparse.sniff(data, "x.csv")
    assert (dialect.delimiter, dialect.decimal) == (";", ",")
    rows, _lines, bad, _counts = parse_all(data, dialect)
    assert rows == [[5, 0, 0, 1, 2], [6, 0, 16, 1, 2]] and [b[:2] for b in bad] == [(2, "non_integer")]


def test_inputs_read_part_directories_any_case_and_refuse_unknown_files(tmp_path):
    raw = tmp_path / "v1"
    (raw / "digits.csv").mkdir(parents=True)
    (raw / "score" / "s.csv").mkdir(parents=True)
    for name in ["a.csv", "B.CSV", "c.Csv.GZ", "d.tsv", "e.csv.bz2", "digits.csv/part-00000.csv",
                 "digits.csv/part-00001.csv.gz", "digits.csv/_SUCCESS", "digits.csv/.part-00000.csv.crc",
                 "score/s.csv/part-0.csv", "notes.txt", "book.xlsx", ".hidden.csv", "_tmp.csv"]:
        (raw / name).write_bytes(b"")
    labeled, unlabeled, skipped, unreadable = inputs.list_inputs(str(raw))
    assert [n for n, _p in labeled] == ["B.CSV", "a.csv", "c.Csv.GZ", "d.tsv", "digits.csv/part-00000.csv",
                                        "digits.csv/part-00001.csv.gz", "e.csv.bz2"]
    assert [n for n, _p in unlabeled] == ["score/s.csv/part-0.csv"]
    assert skipped == [".hidden.csv", "_tmp.csv", "digits.csv/.part-00000.csv.crc", "digits.csv/_SUCCESS"]
    assert unreadable == ["book.xlsx", "notes.txt"]


def test_inputs_whose_names_are_not_utf8_are_refused_naming_each_with_escapes(tmp_path):
    """A cp1252 name from a Windows tool (bytes b"M\\xe4rz.csv" on disk) cannot be stored as it is in the
    manifest or the lineage index (UTF-8 text): listing the inputs refuses it, naming it with escapes and
    as cp1252, and saying what to do. Hidden (skipped) names are only recorded, escaped."""
    raw = tmp_path / "v1"
    (raw / "score").mkdir(parents=True)
    base = os.fsencode(str(raw))
    for name in [b"a.csv", b"M\xe4rz.csv", b"score/S\xfcd.csv", b".~lock.M\xe4rz.csv#", b"notes\xff.txt"]:
        with open(os.path.join(base, name), "wb") as f:
            f.write(b"5,0,0,1,2\n")
    os.mkdir(os.path.join(base, b"Gr\xf6\xdfe.csv"))
    with open(os.path.join(base, b"Gr\xf6\xdfe.csv", b"part-0.csv"), "wb") as f:
        f.write(b"5,0,0,1,2\n")
    with pytest.raises(csvparse.InputError) as e:
        inputs.list_inputs(str(raw))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{raw} holds 4 files whose name is not UTF-8: ")
    for shown in ["'Gr\\xf6\\xdfe.csv' ('Größe.csv' if its bytes are cp1252", "'M\\xe4rz.csv' ('März.csv' if",
                  "'notes\\xff.txt' ('notesÿ.txt' if", "'score/S\\xfcd.csv' ('score/Süd.csv' if"]:
        assert shown in msg, msg
    assert "rename them to UTF-8" in msg and "nothing was written" in msg
    assert "\udce4" not in msg and msg.encode("utf-8")  # printable as it is, in a UTF-8 log

    for name in [b"M\xe4rz.csv", b"score/S\xfcd.csv", b"notes\xff.txt", b"Gr\xf6\xdfe.csv/part-0.csv"]:
        os.remove(os.path.join(base, name))
    os.rmdir(os.path.join(base, b"Gr\xf6\xdfe.csv"))
    labeled, unlabeled, skipped, unreadable = inputs.list_inputs(str(raw))
    assert [n for n, _p in labeled] == ["a.csv"] and unlabeled == [] and unreadable == []
    assert skipped == [".~lock.M\\xe4rz.csv#"]
    assert inputs.printable_name("März.csv") == "März.csv" and inputs.is_utf8_name("März.csv")
    assert not inputs.is_utf8_name(os.fsdecode(b"M\xe4rz.csv"))


def test_compressed_inputs_stream_in_whole_lines_and_a_truncated_one_says_where(tmp_path):
    body = b"".join(b"%d,1,2,3,4\n" % (i % 10) for i in range(20000))
    for name, data in [("a.csv.gz", gzip.compress(body)), ("a.csv.bz2", bz2.compress(body))]:
        path = tmp_path / name
        path.write_bytes(data)
        chunks = list(inputs.range_chunks(name, str(path), 0, len(data), b"\n"))
        assert b"".join(chunks) == body and all(c.endswith(b"\n") for c in chunks)
        cut = len(data) * 7 // 10
        path.write_bytes(data[:cut])
        got = []
        with pytest.raises(csvparse.InputError) as e:
            for chunk in inputs.range_chunks(name, str(path), 0, cut, b"\n"):
                got.append(chunk)
        assert name in str(e.value) and "corrupt" in str(e.value) and "compressed byte" in str(e.value)
        readable = int(str(e.value).split("only its first ")[1].split(" lines")[0].replace(",", ""))
        assert (5000 < readable < 20000) if name.endswith(".gz") else readable < 20000  # bzip2: 900 kB blocks
        assert body.startswith(b"".join(got))  # what came before the damage is whole lines of the file


def test_scan_spans_are_line_aligned_for_cr_only_files(tmp_path):
    lines = [b"%d,1,2,3,4" % (i % 10) for i in range(1000)]
    path = tmp_path / "a.csv"
    path.write_bytes(b"\r".join(lines) + b"\r")
    data = path.read_bytes()
    spans = inputs.range_spans([inputs.range_lines(str(path), part, 3, b"\r") for part in range(3)], len(data))
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    numbers = []
    for start, end, first_line in spans:
        part = data[start:end]
        assert start == 0 or data[start - 1:start] == b"\r"
        numbers += list(range(first_line, first_line + part.count(b"\r")))
        assert part.split(b"\r")[0] == lines[first_line - 1]
    assert numbers == list(range(1, 1001))


def test_head_reads_whole_long_lines(tmp_path):
    line = b"3," + b",".join([b"200"] * 360000)  # a 600x600 image: a 1.4 MB line
    path = tmp_path / "big.csv"
    path.write_bytes((line + b"\n") * 4)
    head, complete = inputs.read_head("big.csv", str(path))
    dialect = csvparse.sniff(head, "big.csv", complete)
    assert complete and dialect.columns == 360001 and dialect.data_lines == 4


@pytest.mark.parametrize("content, note", [
    (b"", "empty"), (b"label,a,b,c,d\n", "header only"), (b"\n\n  \n", "blank lines only"),
    (b"sep=;\r\nlabel;a;b;c;d\r\n", "header only"), (b"sep=;\r\n", "empty")])
def test_files_without_rows_are_recognised(content, note):
    assert convert.no_rows_note(csvparse.sniff(content, "x.csv"), True) == note
    assert convert.no_rows_note(csvparse.sniff(content, "x.csv"), False) is None
    assert convert.no_rows_note(csvparse.sniff(b"5,0,0,1,2\n", "x.csv"), True) is None


def test_shipped_producer_cases_are_sniffed_as_written():
    base = os.path.join(os.path.dirname(__file__), "..", "data", "csv-dialects")
    seen = {}
    for case in sorted(os.listdir(base)):
        if os.path.isdir(os.path.join(base, case)):
            labeled, _u, _s, _x = inputs.list_inputs(os.path.join(base, case))
            seen[case] = [csvparse.sniff(inputs.read_head(n, p)[0], n).describe() for n, p in labeled]
    assert seen["bom_noheader"][0]["encoding"] == "UTF-8 with BOM" and seen["bom_noheader"][0]["header"] is None
    assert seen["cr_only"][0]["line_terminator"] == "CR" and seen["cr_only"][0]["header"].startswith("label,")
    assert seen["numeric_header"][0]["header"].startswith("0,1,2,3,")
    assert seen["quoted_all"][0]["quoted"] and seen["quoted_all"][0]["header"].startswith('"label"')
    assert len(seen["spark_dir"]) == 2 and len(seen["upper_ext"]) == 2
    de = seen["excel_de_semicolon"][0]
    assert (de["delimiter"], de["decimal"], de["encoding"], de["preamble_lines"]) == (";", ",", "Windows-1252", 1)
    assert seen["pandas_index"][0]["index_column"] and seen["r_write_csv"][0]["index_column"]
    assert seen["title_comments"][0]["preamble_lines"] == 4 and seen["title_comments"][0]["header"].startswith("label,")
    assert seen["trailing_delimiter"][0]["trailing_delimiter"]


def test_shipped_producer_cases_parse_to_their_expected_row_counts():
    """Every case of tests/data/csv-dialects through the parser alone: the counts of its EXPECTED.md, no bad row."""
    base = os.path.join(os.path.dirname(__file__), "..", "data", "csv-dialects")
    expected = {}
    for line in open(os.path.join(base, "EXPECTED.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].isdigit():
            expected[cells[0]] = int(cells[2])
    spec = csvparse.Spec(num_pixels=64, pixel_max=16)
    for case, count in expected.items():
        labeled, _u, _s, _x = inputs.list_inputs(os.path.join(base, case))
        rows = 0
        for name, path in labeled:
            data = open(path, "rb").read()
            labels, _px, _lines, bad = parse_block(data, spec, 1, True, csvparse.sniff(data, name))
            assert bad == [], (case, name, bad[:3])
            rows += len(labels)
        assert rows == count, case


def _table(rows, d=",", eol="\n", fmt=str, header=None, end=True, above=(), encoding="utf-8"):
    out = list(above) + ([header] if header is not None else []) + [d.join(fmt(v) for v in r) for r in rows]
    return (eol.join(out) + (eol if end else "")).encode(encoding)


H = "label,p0,p1,p2,p3"
#: Exports of real tools, one per kind: (bytes, dialect fields expected, lines that are not rows). Every one
#: must read back exactly ROWS, on lines 1 + the lines above them (see the README's dialect survey).
EXPORTS = {
    "excel_en_us_crlf": (_table(ROWS, eol="\r\n", header=H), dict(line_terminator="\r\n"), dict(header_lines=1)),
    "excel_de_decimal_comma": (_table(ROWS, ";", "\r\n", lambda v: f"{v},0", H.replace(",", ";")),
                               dict(delimiter=";", decimal=","), dict(header_lines=1)),
    "excel_fr_cp1252_header": (_table(ROWS, ";", "\r\n", header="étiquette;p0;p1;p2;p3", encoding="cp1252"),
                               dict(encoding="Windows-1252", header="étiquette;p0;p1;p2;p3"), dict(header_lines=1)),
    "excel_csv_utf8_bom": (codecs.BOM_UTF8 + _table(ROWS, eol="\r\n", header=H), dict(bom=True), dict(header_lines=1)),
    "excel_sep_line": (_table(ROWS, ";", "\r\n", header=H.replace(",", ";"), above=["sep=;"]),
                       dict(delimiter=";", preamble=1), dict(header_lines=2)),
    "excel_mac_cr": (_table(ROWS, eol="\r", header=H), dict(line_terminator="\r"), dict(header_lines=1)),
    "excel_empty_rows": (_table(ROWS[:1] + [["", "", "", "", ""]] + ROWS[1:], header=H), {},
                         dict(header_lines=1, blank_lines=1)),
    "libreoffice_quoted_names": (_table(ROWS, header='"label","p0","p1","p2","p3"'), dict(quoted=True),
                                 dict(header_lines=1)),
    "google_sheets_no_final_eol": (_table(ROWS, eol="\r\n", header=H, end=False), {}, dict(header_lines=1)),
    "pandas_index": (_table([[i] + r for i, r in enumerate(ROWS)], header="," + H), dict(index_column=True),
                     dict(header_lines=1)),
    "pandas_index_read_back": (_table([[i] + r for i, r in enumerate(ROWS)], header="Unnamed: 0," + H),
                               dict(index_column=True), dict(header_lines=1)),
    "pandas_quote_all": (_table(ROWS, fmt=lambda v: f'"{v}"', header='"label","p0","p1","p2","p3"'),
                         dict(quoted=True), dict(header_lines=1)),
    "pandas_floats": (_table(ROWS, fmt=lambda v: f"{v}.0", header=H), {}, dict(header_lines=1)),
    "pandas_semicolon_floats": (_table(ROWS, ";", fmt=lambda v: f"{v}.0"), dict(delimiter=";", decimal="."), {}),
    "r_write_csv": (_table([[f'"{i + 1}"'] + r for i, r in enumerate(ROWS)], header='"","label","p0","p1","p2","p3"'),
                    dict(index_column=True, quoted=True), dict(header_lines=1)),
    "spark_no_header": (_table(ROWS), dict(header=None), {}),
    "postgres_copy_text": (_table(ROWS, "\t"), dict(delimiter="\t"), {}),
    "postgres_copy_csv_header": (_table(ROWS, header=H), {}, dict(header_lines=1)),
    "mysql_outfile_pipes": (_table(ROWS, "|", fmt=lambda v: f'"{v}"'), dict(delimiter="|", quoted=True), {}),
    "trailing_delimiter": (_table([r + [""] for r in ROWS], header=H + ","), dict(trailing_delimiter=True),
                           dict(header_lines=1)),
    "trailing_delimiter_no_header": (_table([r + [""] for r in ROWS], ";"),
                                     dict(delimiter=";", trailing_delimiter=True), {}),
    "comments_above": (_table(ROWS, header=H, above=["# exported 2026-12-07", "# digits"]), dict(preamble=2),
                       dict(header_lines=3)),
    "title_above": (_table(ROWS, header=H, above=["Digits export,,,,", ""]), dict(preamble=2),
                    dict(header_lines=2, blank_lines=1)),
    "title_above_no_header": (_table(ROWS, ";", above=["Digits"]), dict(preamble=1, header=None), dict(header_lines=1)),
    "blank_lines_above_header": (_table(ROWS, header=H, above=["", ""]), dict(preamble=2),
                                 dict(header_lines=1, blank_lines=2)),
    "blank_lines_at_end": (_table(ROWS, header=H) + b"\n\n  \n", {}, dict(header_lines=1, blank_lines=3)),
    "spaces_around_fields": (_table(ROWS, ", ", header=H.replace(",", ", ")), {}, dict(header_lines=1)),
    "excel_unicode_text": (codecs.BOM_UTF16_LE + _table(ROWS, "\t", "\r\n", header=H.replace(",", "\t"),
                                                         encoding="utf-16-le"),
                           dict(encoding="UTF-16LE", bom=True, delimiter="\t"), dict(header_lines=1)),
    "utf16_big_endian": (codecs.BOM_UTF16_BE + _table(ROWS, ";", "\n", lambda v: f"{v},0", encoding="utf-16-be"),
                         dict(encoding="UTF-16BE", decimal=","), {}),
    "latin1_names": (_table(ROWS, header="Ziffer,p0,p1,p2,Größe", encoding="latin-1"),
                     dict(encoding="Windows-1252"), dict(header_lines=1)),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exports_of_real_tools_read_back_exactly(name):
    data, expected, not_rows = EXPORTS[name]
    dialect = csvparse.sniff(data, name)
    assert dialect.columns == 5 and dialect.data_lines == 3, dialect
    for field, value in expected.items():
        assert getattr(dialect, field) == value, (field, dialect)
    rows, lines, bad, counts = parse_all(data, dialect)
    assert rows == ROWS and bad == [], bad
    assert len(lines) == 3 and lines[0] == 1 + counts["header_lines"] + counts["blank_lines"] - (
        name == "blank_lines_at_end") * 3 - (name == "excel_empty_rows"), lines
    assert {k: v for k, v in counts.items() if v} == not_rows
    assert dialect.describe()["encoding"].startswith(dialect.encoding)


@pytest.mark.parametrize("data, line, words", [
    (b'5,"1,000",0,1,2\n', 1, ["number_format", "grouped by thousands", "1000 Separator"]),
    (b"5;1.000;0;1;2\n", 1, ["number_format", "grouped by thousands"]),
    (b"5;2,0;0;1;2\n5;1.5;0;1;2\n", 2, ["number_format", "'.' in column 1", "decimal separator is ','"]),
    (b"5\t1 000\t0\t1\t2\n", 1, ["number_format", "grouped by thousands"]),
])
def test_numbers_in_another_locale_format_are_bad_rows_never_misread(data, line, words):
    """1.000 in a de-DE file is a thousand, 1,000 in an en-US one too: neither is read as 1 (or refused
    silently): the row is quarantined naming the column and what to change in the export."""
    dialect = csvparse.sniff(data, "x.csv")
    rows, _lines, bad, _counts = parse_all(data, dialect)
    assert [b[0] for b in bad] == [line] and all(r[1] != 1 for r in rows)
    text = " ".join(bad[0][1:3])
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("data", [
    b"Digits\nlabel\n5 0 0 1 2\n",                    # title-like lines only: no table, refused, not skipped
    b"5 0 0 1 2\n1 2 3 4 5\n",
])
def test_lines_that_split_on_no_delimiter_are_refused_not_taken_for_titles(data):
    with pytest.raises(csvparse.InputError, match="does not split into fields"):
        csvparse.sniff(data, "x.csv")


def test_a_row_with_one_value_is_not_a_title():
    data = b"5,,,,\n1,2,3,4,5\n"
    dialect = csvparse.sniff(data, "x.csv")
    assert dialect.preamble == 0
    rows, _lines, bad, _counts = parse_all(data, dialect)
    assert rows == [[1, 2, 3, 4, 5]] and [b[:2] for b in bad] == [(1, "empty_field")]


def test_index_column_bulk_and_line_by_line_paths_agree():
    rng = np.random.default_rng(5)
    rows = [[int(rng.integers(0, 10))] + rng.integers(0, 17, 4).tolist() for _ in range(300)]
    data = _table([[i] + r for i, r in enumerate(rows)], header="," + H)
    dialect = csvparse.sniff(data, "x.csv")
    assert dialect.index_column and csvparse.parse_clean(data.split(b"\n", 1)[1], 6) is not None
    assert parse_all(data, dialect)[0] == rows
    slow = data.replace(b"\n1,", b"\n 1,")  # one line the bulk parser refuses: the block goes line by line
    got, lines, bad, _counts = parse_all(slow, dialect)
    assert got == rows and bad == [] and lines == list(range(2, 302))


@pytest.mark.parametrize("data", [
    b"label,p0,p1,p2,p3\n7,0,16,3,4,\n1,2,3,4,5,\n9,9,9,9,9,\n",       # the rows end with ',', the header not
    b"7;0;16;3;4; \r\n1;2;3;4;5;\r\n9;9;9;9;9;  \r\n",                  # spaces after the last ';'
])
def test_trailing_delimiters_the_header_does_not_name_are_dropped(data):
    dialect = csvparse.sniff(data, "x.csv")
    assert dialect.trailing_delimiter and dialect.columns == 5
    rows, _lines, bad, _counts = parse_all(data, dialect)
    assert rows == ROWS and bad == []


def test_files_convert_does_not_read_say_what_they_are_and_how_to_convert_them():
    assert inputs.what_it_is("book.XLSX").startswith("book.XLSX (a spreadsheet workbook: save each sheet as 'CSV UTF-8")
    assert "rename it to .tsv or .csv" in inputs.what_it_is("export.txt")
    assert "rename it to .tsv or .csv" in inputs.what_it_is("export.txt.gz")
    assert "spark.read.format" in inputs.what_it_is("part-0.parquet")
    assert "unpack it" in inputs.what_it_is("digits.zip")
    assert inputs.what_it_is("README") == "README"


def _partitioned(root, folders, header="p0,p1,p2,p3", extra=None):
    """raw/v/digits.csv/<folder>/part-00000.csv for each folder (pixels only: ROWS without their label) as
    df.write.partitionBy("label").csv(..., header=True) writes them, and ``extra``: {name: bytes}."""
    raw = root / "raw" / "v"
    for folder in folders:
        (raw / "digits.csv" / folder).mkdir(parents=True)
        (raw / "digits.csv" / folder / "part-00000.csv").write_bytes(_table([r[1:] for r in ROWS], header=header))
    if folders:
        (raw / "digits.csv" / "_SUCCESS").write_bytes(b"")
    for name, data in (extra or {}).items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(data)
    return raw


def test_label_partition_folders_give_their_rows_the_label(tmp_path):
    """df.write.partitionBy("label").csv(...): the label is in the folder name (any letter case), the rows
    hold the pixels only; read as Spark's partition discovery reads them, beside a file with a label column."""
    from tfospipe import jobargs

    raw = _partitioned(tmp_path, ["label=0", "LABEL=3", "label=09"], extra={"plain.csv": _table(ROWS, header=H)})
    labeled, unlabeled, skipped, unreadable = inputs.list_inputs(str(raw))
    names = [n for n, _p in labeled]
    assert names == ["digits.csv/LABEL=3/part-00000.csv", "digits.csv/label=0/part-00000.csv",
                     "digits.csv/label=09/part-00000.csv", "plain.csv"]
    assert [inputs.partition_label(n) for n in names] == [3, 0, 9, None]
    assert (unlabeled, skipped, unreadable) == ([], ["digits.csv/_SUCCESS"], [])
    params = jobargs.ConvertParams(data_root=str(tmp_path), version="v", pixel_max=16, label_column=-1)
    found = convert.prepare(params)  # pixels-only files count with the folder's label: 5 fields, 2x2 images
    assert found.image_shape == (2, 2) and found.num_pixels == 4
    stage = tmp_path / "stage"
    for split in ("train", "eval", "_lineage"):
        (stage / split).mkdir(parents=True)
    for shard, (name, path) in enumerate(found.labeled):
        task = convert.RangeTask(shard, name, path, 0, os.path.getsize(path), 1, "labeled", ("train", "eval"),
                                 found.dialects[path][0])
        got = convert.convert_range(task, str(stage), str(tmp_path / "q"), 4, params)
        label = inputs.partition_label(name)
        expected = {label: 3} if label is not None else {4: 1, 5: 1, 9: 1}  # plain.csv: --label-column -1
        assert got["label_counts"] == expected and got["bad_kinds"] == {} and got["rows"] == 3, name
        if label is not None:
            keys = np.concatenate([got["stats"][s]["keys"] for s in ("train", "eval")])
            pixels = np.array([r[1:] for r in ROWS])
            assert sorted(keys) == sorted(csvparse.content_keys(np.full(3, label), pixels)[0])


@pytest.mark.parametrize("folders, words", [
    (["label=0", "label=__HIVE_DEFAULT_PARTITION__"],
     ["digits.csv/label=__HIVE_DEFAULT_PARTITION__", "label was null", "label=K, K from 0 to 9", "nothing was written"]),
    (["label=1", "label=12"], ["(digits.csv/label=12)", "not a label 0..9"]),
    (["label=-1"], ["(digits.csv/label=-1)"]),
    (["label=seven"], ["(digits.csv/label=seven)"]),
    (["label=1/label=2"], ["(digits.csv/label=1/label=2)", "inside another label folder"]),
    (["source=scanner", "source=web"],
     ["partition folders of the column 'source' (digits.csv/source=scanner, digits.csv/source=web)",
      "reads only the label from folder names", "rename its folders to label=K", ".drop('source')",
      "nothing was written"]),
    (["date=2026-01-01/label=3"], ["column 'date' (digits.csv/date=2026-01-01)", ".drop('date')"]),
])
def test_partition_folders_convert_cannot_read_are_refused_naming_them(tmp_path, folders, words):
    raw = _partitioned(tmp_path, folders)
    with pytest.raises(csvparse.InputError) as e:
        inputs.list_inputs(str(raw))
    msg = str(e.value)
    for word in words:
        assert word in msg, msg
    assert "--label-column" not in msg  # no hint that would read another column as the label


def test_a_label_folder_under_score_is_refused(tmp_path):
    raw = _partitioned(tmp_path, [], extra={"a.csv": _table(ROWS), "score/label=1/s.csv": _table(ROWS)})
    with pytest.raises(csvparse.InputError, match=r"\(score/label=1\).*under score/"):
        inputs.list_inputs(str(raw))


@pytest.mark.parametrize("header, extra, words", [
    ("label,p0,p1,p2,p3", {"plain.csv": _table(ROWS)}, ["its header names a column 'label'"]),
    (None, {"plain.csv": _table(ROWS * 3)}, ["its lines have 5 fields, one more than the 4 pixels"]),
    (None, {}, ["its lines have 5 fields, the 4 pixels of a square image and one more"]),
])
def test_a_file_under_a_label_folder_that_holds_a_label_column_is_refused(tmp_path, header, extra, words):
    from tfospipe import jobargs
    from tfospipe.runner import JobError

    raw = _partitioned(tmp_path, ["label=2"], header=header, extra=extra)
    with open(raw / "digits.csv" / "label=2" / "part-00000.csv", "wb") as f:  # the label kept in the rows too
        f.write(_table(ROWS, header=header))
    with pytest.raises(JobError) as e:
        convert.prepare(jobargs.ConvertParams(data_root=str(tmp_path), version="v", pixel_max=16))
    msg = str(e.value)
    for word in ["digits.csv/label=2/part-00000.csv lies under a label=K folder", "nothing was written", *words]:
        assert word in msg, msg


@pytest.mark.parametrize("encoding, bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)])
@pytest.mark.parametrize("eol", ["\r\n", "\r"])
def test_utf16_files_cut_into_ranges_read_every_line_once_and_lineage_finds_them(tmp_path, encoding, bom, eol):
    """Excel's 'Unicode Text': convert's byte ranges end after two-byte line ends at even offsets, so
    every range decodes on its own and the line numbers are the file's."""
    import importlib.util
    rows = [[i % 10] + [(i * 7 + k) % 17 for k in range(4)] for i in range(2000)]
    data = bom + _table(rows, "\t", eol, header="label\tp0\tp1\tp2\tp3", encoding=encoding)
    path = tmp_path / "a.tsv"
    path.write_bytes(data)
    head, complete = inputs.read_head("a.tsv", str(path))
    dialect = csvparse.sniff(head, "a.tsv", complete)
    assert len(dialect.eol) == 2 and dialect.describe()["encoding"].endswith("with BOM")
    for parts in (1, 3, 7):
        spans = inputs.range_spans([inputs.range_lines(str(path), p, parts, dialect.eol) for p in range(parts)],
                                   len(data))
        got, lines = [], []
        for start, end, first_line in spans:
            assert start % 2 == 0
            line_no, at_start = first_line, start == 0
            for chunk in inputs.range_chunks("a.tsv", str(path), start, end, dialect.eol):
                for labels, pixels, numbers, bad in csvparse.iter_block(chunk, SPEC, line_no, at_start, dialect):
                    assert bad == []
                    got += [[int(lab)] + px.tolist() for lab, px in zip(labels, pixels)]
                    lines += numbers.tolist()
                line_no += chunk.count(dialect.eol)
                at_start = False
        assert got == rows and lines == list(range(2, 2002)), parts
    spec = importlib.util.spec_from_file_location(
        "lineage_script", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "lineage.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    eol_bytes, enc = script._line_end(dialect.describe())
    assert eol_bytes == dialect.eol
    assert script.raw_line(str(path), "a.tsv", 1, eol_bytes, enc) == "label\tp0\tp1\tp2\tp3"
    assert script.raw_line(str(path), "a.tsv", 1501, eol_bytes, enc) == "\t".join(map(str, rows[1499]))


def test_a_comment_line_among_the_rows_is_a_bad_row_saying_where_comments_may_go():
    data = _table(ROWS[:1], header=H, above=["# digits"]) + b"# second batch\n" + _table(ROWS[1:])
    dialect = csvparse.sniff(data, "x.csv")
    rows, _lines, bad, counts = parse_all(data, dialect)
    assert rows == ROWS and counts["header_lines"] == 2
    assert [b[:2] for b in bad] == [(4, "comment")] and "move it above the header" in bad[0][2]
