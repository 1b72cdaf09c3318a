import gzip

import pytest

from tfospipe import csvparse

SPEC = csvparse.Spec(num_pixels=4, pixel_max=16)


def row(text):
    return text.encode("utf-8")


def test_good_row_parses_to_label_and_pixels():
    assert csvparse.parse_row(row("7,0,16,3,4"), SPEC) == (7, [0, 16, 3, 4])
    assert csvparse.parse_row(row("7,0.0,16,3, 4"), SPEC) == (7, [0, 16, 3, 4])


@pytest.mark.parametrize("raw, kind", [
    (b"7,0,1,2", "column_count"),
    (b"7,0,1,2,3,4", "column_count"),
    (b"", "empty_line"),
    (b"   ", "empty_line"),
    (b"7,0,x,2,3", "non_numeric"),
    (b",0,1,2,3", "label_missing"),
    (b"10,0,1,2,3", "label_range"),
    (b"-1,0,1,2,3", "label_range"),
    (b"7,0,17,2,3", "pixel_range"),
    (b"7,0,-1,2,3", "pixel_range"),
    (b"7,0,nan,2,3", "nan_inf"),
    (b"7,0,inf,2,3", "nan_inf"),
    (b"7,0,1.5,2,3", "non_integer"),
    (b'7,0,"1",2,3', "quote"),
    (b"7,0,\xff\xfe,2,3", "invalid_utf8"),
    (b"7,0,1\x00,2,3", "garbage_bytes"),
    (b"label,p0,p1,p2,p3", "header"),
    (b"7,0,,2,3", "empty_field"),
])
def test_bad_rows_name_their_kind(raw, kind):
    with pytest.raises(csvparse.RowError) as e:
        csvparse.parse_row(raw, SPEC)
    assert e.value.kind == kind
    assert str(e.value)


def test_unlabeled_spec_has_no_label_column():
    spec = csvparse.Spec(num_pixels=4, labeled=False, pixel_max=16)
    assert csvparse.parse_row(row("1,2,3,4"), spec) == (None, [1, 2, 3, 4])


def test_parse_file_skips_first_line_header_and_reports_line_numbers():
    data = b"label,p0,p1,p2,p3\n1,0,0,0,0\nlabel,p0,p1,p2,p3\n2,0,0,0,99\n3,1,1,1,1\n"
    out = list(csvparse.parse_file("a.csv", data, SPEC))
    assert [r[0] for r in out] == ["ok", "bad", "bad", "ok"]
    assert out[0][1:] == (2, 1, [0, 0, 0, 0])
    assert out[1][1:3] == (3, "header")
    assert out[2][1:3] == (4, "pixel_range")
    assert out[2][4] == "2,0,0,0,99"


def test_parse_file_without_header_and_gzip():
    data = b"1,0,0,0,0\r\n2,1,2,3,4\r\n"
    plain = list(csvparse.parse_file("a.csv", data, SPEC))
    zipped = list(csvparse.parse_file("a.csv.gz", gzip.compress(data), SPEC))
    assert plain == zipped
    assert [r[1] for r in plain] == [1, 2]


def test_corrupt_gzip_is_one_bad_record_not_a_crash():
    out = list(csvparse.parse_file("a.csv.gz", b"not gzip", SPEC))
    assert out[0][0] == "bad" and out[0][2] == "bad_gzip"


def test_split_is_a_function_of_content_and_fraction():
    pixels = [1, 2, 3, 4]
    assert csvparse.split_of(3, pixels, 0.2) == csvparse.split_of(3, list(pixels), 0.2)
    assert csvparse.split_of(3, pixels, 0.0) == "train"
    assert csvparse.split_of(3, pixels, 1.0) == "eval"
    rows = [(i % 10, [i, i + 1, i + 2, i + 3]) for i in range(5000)]
    frac = sum(csvparse.split_of(label, px, 0.2) == "eval" for label, px in rows) / len(rows)
    assert 0.17 < frac < 0.23


def test_row_id_is_stable_and_distinct():
    assert csvparse.row_id("a.csv", 5) == csvparse.row_id("a.csv", 5)
    ids = {csvparse.row_id("a.csv", i) for i in range(10000)}
    assert len(ids) == 10000 and all(0 <= i < 2 ** 63 for i in ids)


def test_infer_num_columns_ignores_header_and_stray_rows():
    lines = [b"label,a,b,c,d", b"1,0,0,0,0", b"1,0,0,0,0", b"1,0,0"]
    assert csvparse.infer_num_columns(lines) == 5
    assert csvparse.infer_num_columns([b"label,a"]) is None
