import gzip

import numpy as np
import pytest

from tfospipe import csvparse

SPEC = csvparse.Spec(num_pixels=4, pixel_max=16)


def row(text):
    return text.encode("utf-8")


def parse_block(data, spec, first_line_no=1, header_allowed=True, dialect=None, counts=None):
    """All the blocks csvparse.iter_block (the convert job's parser) yields for ``data``, joined:
    (labels, pixels, line numbers, bad)."""
    parts = list(csvparse.iter_block(data, spec, first_line_no, header_allowed, dialect, counts))
    if not parts:
        return np.empty(0, np.int64), np.empty((0, spec.num_pixels), np.int64), np.empty(0, np.int64), []
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), [b for p in parts for b in p[3]])


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
    (b'7,0,"1,2,3', "quote"),
    (b'7,0,1"x,2,3', "quote"),
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


def test_parse_block_skips_first_line_header_and_reports_line_numbers():
    data = b"label,p0,p1,p2,p3\n1,0,0,0,0\nlabel,p0,p1,p2,p3\n2,0,0,0,99\n3,1,1,1,1\n"
    labels, pixels, lines, bad = parse_block(data, SPEC)
    assert labels.tolist() == [1, 3] and lines.tolist() == [2, 5]
    assert pixels.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
    assert [(b[0], b[1]) for b in bad] == [(3, "header"), (4, "pixel_range")]
    assert bad[1][3] == "2,0,0,0,99"


def test_parse_block_without_header_crlf_and_gzip():
    data = b"1,0,0,0,0\r\n2,1,2,3,4\r\n"
    labels, pixels, lines, bad = parse_block(gzip.decompress(gzip.compress(data)), SPEC)
    assert labels.tolist() == [1, 2] and lines.tolist() == [1, 2] and bad == []
    # a block from the middle of a file: numbering continues, a header-like first line is bad there
    labels, _px, lines, bad = parse_block(b"label,a,b,c,d\n4,1,1,1,1", SPEC, 41, header_allowed=False)
    assert lines.tolist() == [42] and bad[0][:2] == (41, "header")


def test_bulk_and_line_by_line_parsing_agree():
    import numpy as np
    rng = np.random.default_rng(1)
    rows = [f"{rng.integers(0, 10)}," + ",".join(map(str, rng.integers(0, 17, 4))) for _ in range(300)]
    clean = ("\n".join(rows) + "\n").encode()
    dirty = ("\n".join(rows[:150] + ["9,1,2,3,x"] + rows[150:]) + "\n").encode()
    a = parse_block(clean, SPEC)
    b = parse_block(dirty, SPEC)
    assert csvparse.parse_clean(clean, 5) is not None and csvparse.parse_clean(dirty, 5) is None
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    assert b[2].tolist() == list(range(1, 151)) + list(range(152, 302)) and b[3][0][:2] == (151, "non_numeric")


def test_parse_clean_refuses_anything_unusual():
    for block in [b"1,,3\n", b"1,2\n\n", b"1,-2,3\n", b"1, 2,3\n", b"1,2,3", b"1,2.0,3\n", b"1,2,3,4\n5,6\n",
                  b'1,"2",3\n', b"12345678901234567,1,1\n"]:
        assert csvparse.parse_clean(block, 3) is None, block
    assert csvparse.parse_clean(b"1,2,300\n4,5,6\n", 3).tolist() == [[1, 2, 300], [4, 5, 6]]


def test_bulk_parser_paths_agree_with_the_line_by_line_parser_at_every_field_length():
    """Fields of 1-3 digits take the uint16 path (three gathers per field), longer ones the int64 path;
    both must give what parse_row gives, whatever the lengths of neighbouring fields."""
    import numpy as np
    rng = np.random.default_rng(7)
    for top, dtype in ((9, np.uint16), (99, np.uint16), (999, np.uint16), (99_999, np.int64)):
        values = rng.integers(0, top + 1, (500, 6))
        values[0] = [0, top, 0, top, 0, top]  # shortest and longest side by side, and at the line's ends
        text = "".join(",".join(map(str, r)) + "\n" for r in values).encode()
        table = csvparse.parse_clean(text, 6)
        assert table.dtype == dtype and table.tolist() == values.tolist(), top
        spec = csvparse.Spec(num_pixels=5, pixel_max=top, num_classes=top + 1)
        assert [[lab] + px for lab, px in (csvparse.parse_row(line, spec) for line in text.splitlines())] == \
            values.tolist()


def test_scan_ranges_tile_a_file_and_number_its_lines(tmp_path):
    from tfospipe import inputs
    lines = [b"%d,1,2" % i for i in range(1, 101)]
    path = tmp_path / "a.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = path.read_bytes()
    for parts in (1, 2, 7, 150):  # more parts than lines: some ranges are empty
        ranges = [inputs.range_lines(str(path), part, parts) for part in range(parts)] if parts > 1 else []
        spans = inputs.range_spans(ranges[::-1], len(data))  # any order in
        assert spans[0][0] == 0 and spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        for start, end, first_line in spans:
            if end > start:
                assert data[start:end].split(b"\n")[0] == lines[first_line - 1]
        assert inputs.file_digest("a.csv", str(path))["bytes"] == len(data)


def test_split_is_a_function_of_content_and_fraction():
    pixels = np.array([[1, 2, 3, 4]])
    assert csvparse.splits_of(np.array([3]), pixels, 0.2) == csvparse.splits_of(np.array([3]), pixels.copy(), 0.2)
    assert csvparse.splits_of(np.array([3]), pixels, 0.0).tolist() == ["train"]
    assert csvparse.splits_of(np.array([3]), pixels, 1.0).tolist() == ["eval"]
    labels = np.arange(5000) % 10
    rows = np.arange(5000)[:, None] + np.arange(4)
    split = csvparse.splits_of(labels, rows, 0.2)
    assert 0.17 < (split == "eval").mean() < 0.23
    # a row's split does not depend on the rows beside it
    assert [csvparse.splits_of(labels[i:i + 1], rows[i:i + 1], 0.2)[0] for i in range(0, 5000, 97)] == \
        split[::97].tolist()


def test_row_id_is_stable_and_distinct():
    assert csvparse.row_id("a.csv", 5) == csvparse.row_id("a.csv", 5)
    ids = {csvparse.row_id("a.csv", i) for i in range(10000)}
    assert len(ids) == 10000 and all(0 <= i < 2 ** 63 for i in ids)


def test_sniffed_column_count_ignores_header_and_stray_rows():
    lines = [b"label,a,b,c,d", b"1,0,0,0,0", b"1,0,0,0,0", b"1,0,0"]
    assert csvparse.sniff(b"\n".join(lines) + b"\n", "x.csv").columns == 5
    assert csvparse.sniff(b"label,a\n", "x.csv").columns is None
