import os

import pytest

from tfospipe import fs, paths, serving


def listing(d):
    return sorted(os.listdir(d))


def test_staging_commit_publishes_whole_and_replaces_older_output(tmp_path):
    final = str(tmp_path / "out" / "v1")
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("a.txt"), b"first")
        assert not os.path.exists(final)           # nothing visible before the commit
        st.commit({"n": 1})
    assert listing(final) == ["_SUCCESS", "_manifest.json", "a.txt"]
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("b.txt"), b"second")
        st.commit({"n": 2})
    assert listing(final) == ["_SUCCESS", "_manifest.json", "b.txt"]
    assert fs.read_json(os.path.join(final, "_manifest.json")) == {"n": 2}
    assert listing(tmp_path / "out") == ["v1"]     # no staging or trash left behind


def test_failed_job_leaves_previous_output_intact_and_nothing_partial(tmp_path):
    final = str(tmp_path / "v1")
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("good.txt"), b"good")
        st.commit({"n": 1})
    with pytest.raises(RuntimeError):
        with fs.Staging(final) as st:
            fs.write_bytes(st.file("half.txt"), b"half")
            raise RuntimeError("killed midway")
    assert listing(final) == ["_SUCCESS", "_manifest.json", "good.txt"]
    assert listing(tmp_path) == ["v1"]


def test_leftovers_of_a_killed_attempt_are_removed_by_the_next(tmp_path):
    os.makedirs(tmp_path / ".v1.staging-dead")
    with fs.Staging(str(tmp_path / "v1")) as st:
        st.commit({})
    assert listing(tmp_path) == ["v1"]


def _fake_model(d, text):
    os.makedirs(d)
    with open(os.path.join(d, "saved_model.pb"), "w") as f:
        f.write(text)


def test_promote_swaps_pointer_and_rollback_restores(tmp_path):
    layout = paths.Layout(str(tmp_path))
    assert serving.current(layout) is None
    _fake_model(tmp_path / "m1", "one")
    _fake_model(tmp_path / "m2", "two")
    serving.promote(layout, str(tmp_path / "m1"), "v1__r1", {"accuracy": 0.9})
    serving.promote(layout, str(tmp_path / "m2"), "v2__r1", {"accuracy": 0.95})
    now = serving.current(layout)
    assert now["model_version"] == "v2__r1" and now["previous"] == "v1__r1"
    with open(os.path.join(now["path"], "saved_model.pb")) as f:
        assert f.read() == "two"
    assert serving.versions(layout) == ["v1__r1", "v2__r1"]
    serving.rollback(layout)
    assert serving.current(layout)["model_version"] == "v1__r1"
    serving.rollback(layout, to="v2__r1")
    assert serving.current(layout)["model_version"] == "v2__r1"
    with pytest.raises(ValueError, match="not a committed model"):
        serving.rollback(layout, to="nope")
