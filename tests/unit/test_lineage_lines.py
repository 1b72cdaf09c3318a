"""scripts/lineage.py's line reader: a raw line found by the number convert gave it (no Spark needed)."""
import os

import pytest

from conftest import PROJECT_DIR


def test_raw_lines_are_read_as_convert_numbers_them(tmp_path):
    """Line numbers count from the file's first line (a header or blank line included), in the
    decompressed text; the byte-order mark and the CR of CRLF are not part of the line."""
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("lineage_script", os.path.join(PROJECT_DIR, "scripts", "lineage.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = "\ufefflabel,p0\r\n1,2\r\n\r\n3,4\r\n5,6"
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    assert [script.raw_line(str(gz), "a.csv.gz", n, b"\n") for n in (1, 2, 3, 4, 5)] == \
        ["label,p0", "1,2", "", "3,4", "5,6"]
    cr = tmp_path / "b.csv"
    cr.write_bytes(b"7,8\r9,10\r")
    assert script.raw_line(str(cr), "b.csv", 2, b"\r") == "9,10"
    with pytest.raises(script.LineageError, match="has 2 lines, not 3"):
        script.raw_line(str(cr), "b.csv", 3, b"\r")
