import base64
import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfospipe import datareport, datastats


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.target.astype(np.int64), d.data.astype(np.int64)          # values 0..16, 8x8


def stats_of(labels, pixels, value_max=255):
    n = len(pixels) * 4 // 5
    return datastats.of_arrays({"train": (labels[:n], pixels[:n]), "eval": (labels[n:], pixels[n:])},
                               (8, 8), value_max, blocks=2)


FINDINGS = [
    {"kind": "class_below_min_fraction", "split": "train", "where": 3, "value": 0.0123, "threshold": 0.05,
     "uncertainty": 0.004, "param": "min_class_fraction", "reference": None, "anomaly": True},
    {"kind": "label_drift", "split": "train", "where": None, "value": 0.0021, "threshold": 0.02,
     "uncertainty": 0.001, "param": "max_label_js", "reference": "v1", "anomaly": False},
    {"kind": "image_shape", "split": "train", "where": "<script>alert(1)</script>", "value": [8, 8],
     "threshold": [8, 8], "uncertainty": None, "param": None, "reference": "v1", "anomaly": False},
]


def pngs_of(page):
    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_two_versions_shows_the_anomaly_the_figures_and_escapes_text(digits):
    labels, pixels = digits
    v1 = stats_of(labels[:900], pixels[:900])
    v2 = stats_of(labels[900:], pixels[900:])
    page = datareport.render("v2", v2, v1, "v1", FINDINGS, "train")
    assert page.startswith("<!DOCTYPE html>")
    anomaly_row = re.search(r"<tr class=anomaly>(.*?)</tr>", page).group(1)
    assert "class_below_min_fraction" in anomaly_row and "0.0123" in anomaly_row and "0.05" in anomaly_row
    assert page.index("class_below_min_fraction") < page.index("label_drift</td>")     # anomalies first
    assert "1 anomaly in 3 finding(s)" in page
    images = pngs_of(page)
    assert len(images) >= 3 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in images)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page                          # self-contained
    assert "v1 (train)" in page and "0..16 of 0..255" in page


def test_drift_scores_are_zero_for_the_same_data_and_large_for_a_pixel_scale_change(digits):
    labels, pixels = digits
    v1 = stats_of(labels, pixels)
    scores = datareport.feature_drift_scores(v1, v1, "train", "train")
    assert len(scores) == 64 and max(scores) < 1e-12
    rescaled = stats_of(labels, pixels * 255 // 16)                                  # 0..16 -> 0..255
    scores = np.array(datareport.feature_drift_scores(rescaled, v1, "train", "train"))
    varying = np.array(v1["splits"]["train"]["features"]["std"]) > 1                 # not the blank border
    v16 = stats_of(labels, pixels, 16)     # at 0..255 every digit value (0..16) falls into the first bin
    noise = np.array(datareport.feature_drift_scores(v16, v16, "eval", "train"))     # resampling noise only
    assert 0 < noise.max() < 0.05 and noise[varying].mean() < 0.01
    assert scores[varying].mean() > 0.3 and 0.9 < scores.max() <= 1.0       # zeros stay zeros: not all 1 bit


def test_drift_scores_refuse_incomparable_statistics(digits):
    labels, pixels = digits
    with pytest.raises(ValueError, match="histogram bins differ"):
        datareport.feature_drift_scores(stats_of(labels, pixels, 16), stats_of(labels, pixels), "train", "train")
    with pytest.raises(ValueError, match="no split 'score'"):
        datareport.feature_drift_scores(stats_of(labels, pixels), stats_of(labels, pixels), "score", "train")
    empty = datastats.of_arrays({"train": (labels[:0], pixels[:0])}, (8, 8), 255)
    with pytest.raises(ValueError, match="split 'train' is empty"):
        datareport.feature_drift_scores(empty, stats_of(labels, pixels), "train", "train")
    page = datareport.render("v2", empty, stats_of(labels, pixels), "v1", [], "train")     # still renders
    assert "No drift map: split &#x27;train&#x27; is empty" in page and "none (empty) of 0..255" in page


def test_report_of_a_first_version_and_of_an_unlabeled_split(digits):
    labels, pixels = digits
    stats = datastats.of_arrays({"train": (labels, pixels), "score": (None, pixels[:50])}, (8, 8), 255)
    page = datareport.render("v1", stats, None, None, [], "convert")
    assert "There is no reference version" in page and "no drift to show" in page and "No findings" in page
    assert len(pngs_of(page)) == 2
    page = datareport.render("v1", stats, stats, "v0", FINDINGS[1:], "score", split="score")
    assert "unlabeled" in page and "No anomaly in 2 finding(s)" in page
    assert len(pngs_of(page)) == 2                                                    # moments, drift


def test_given_scores_are_drawn_and_bad_lengths_are_explained(digits):
    labels, pixels = digits
    stats = stats_of(labels, pixels)
    page = datareport.render("v2", stats, stats, "v1", [], "train", feature_scores=[0.5] * 64)
    assert "Largest: 0.5 bits at pixel 0" in page
    page = datareport.render("v2", stats, stats, "v1", [], "train", feature_scores=[0.5] * 10)
    assert "10 drift scores for an image of 8x8 pixels" in page


def test_write_puts_the_page_on_a_path(tmp_path):
    path = str(tmp_path / "train.html")
    datareport.write(path, "<p>é</p>")
    assert (tmp_path / "train.html").read_bytes() == "<p>é</p>".encode("utf-8")
