import hashlib
import os
import random
import shutil
import string
import time

import pytest

from tfospipe import fs, paths, serving


def listing(d):
    return sorted(os.listdir(d))


def test_a_commit_publishes_its_own_attempt_and_leaves_other_attempts_alone(tmp_path):
    other = tmp_path / ".v1.attempts" / fs._attempt_name()  # a live (or killed) attempt, started just now
    os.makedirs(other)
    with fs.Staging(str(tmp_path / "v1")) as st:
        st.commit({})
    assert listing(tmp_path) == [".v1.attempts", "v1"]
    assert os.path.islink(tmp_path / "v1") and fs.resolve(str(tmp_path / "v1")) == st.path
    attempts = tmp_path / ".v1.attempts"
    assert [n for n in listing(attempts) if n != ".lock"] == sorted([other.name, st.attempt])  # within the grace
    time.sleep(1.01)  # attempt names have whole seconds
    assert fs.collect_attempts(str(tmp_path / "v1"), grace=0) == [other.name]     # past it: unreferenced goes
    assert [n for n in listing(attempts) if n != ".lock"] == [st.attempt]


def _fake_model(d, text, weights=b"w"):
    """A directory shaped like a SavedModel (top file and variables/), with chosen bytes."""
    os.makedirs(os.path.join(d, "variables"))
    with open(os.path.join(d, "saved_model.pb"), "w") as f:
        f.write(text)
    with open(os.path.join(d, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(weights)
    return str(d)


def _promote(layout, model_dir, version="v1", run="r1", **info):
    digest = serving.model_digest(model_dir)
    mv = paths.model_version(version, run, digest)
    return mv, serving.promote(layout, model_dir, mv, info, digest)


def _snapshot(d):
    """Every file under d: relative path -> (sha256, inode, mtime_ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(d):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            with open(full, "rb") as f:
                out[os.path.relpath(full, d)] = (hashlib.sha256(f.read()).hexdigest(), st.st_ino, st.st_mtime_ns)
    return out


def test_promote_swaps_pointer_and_rollback_restores(tmp_path):
    layout = paths.Layout(str(tmp_path))
    assert serving.current(layout) is None
    mv1, _ = _promote(layout, _fake_model(tmp_path / "m1", "one"), "v1", "r1", accuracy=0.9)
    mv2, _ = _promote(layout, _fake_model(tmp_path / "m2", "two"), "v2", "r1", accuracy=0.95)
    assert mv1.startswith("v1__r1__") and mv2.startswith("v2__r1__")
    now = serving.current(layout)
    assert now["model_version"] == mv2 and now["previous"] == mv1 and now["accuracy"] == 0.95
    with open(os.path.join(now["path"], "saved_model.pb")) as f:
        assert f.read() == "two"
    assert serving.versions(layout) == [mv1, mv2]
    # a promotion killed between its attempt's _SUCCESS and its publication is not a version
    killed = os.path.join(layout.serving(), "models", f".{mv2}x.attempt-20261207T000000Z-0123456789ab")
    os.makedirs(killed)
    open(os.path.join(killed, "_SUCCESS"), "w").close()
    assert serving.versions(layout) == [mv1, mv2]
    back = serving.rollback(layout)
    assert back["model_version"] == mv1 and back["from"] == mv2 and back["accuracy"] == 0.9
    serving.rollback(layout, to=mv2)
    assert serving.current(layout)["model_version"] == mv2
    with pytest.raises(ValueError, match="not a committed model"):
        serving.rollback(layout, to="nope")


def test_the_digest_covers_every_file_and_ignores_the_commit_files(tmp_path):
    a = _fake_model(tmp_path / "a", "graph", b"weights")
    assert serving.model_digest(a) == serving.model_digest(_fake_model(tmp_path / "b", "graph", b"weights"))
    assert serving.model_digest(a) != serving.model_digest(_fake_model(tmp_path / "c", "graph", b"weightz"))
    assert serving.model_digest(a) != serving.model_digest(_fake_model(tmp_path / "d", "graph2", b"weights"))
    moved = _fake_model(tmp_path / "e", "graph", b"")
    os.rename(os.path.join(moved, "variables"), os.path.join(moved, "vars"))  # same bytes, other layout
    with open(os.path.join(moved, "vars", "variables.data-00000-of-00001"), "wb") as f:
        f.write(b"weights")
    assert serving.model_digest(moved) != serving.model_digest(a)
    digest = serving.model_digest(a)
    for name in ("_SUCCESS", "_manifest.json"):
        open(os.path.join(a, name), "w").write("x")
    assert serving.model_digest(a) == digest
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no model files"):
        serving.model_digest(str(tmp_path / "empty"))


def test_a_retrained_model_under_the_same_run_is_promoted_beside_the_serving_one(tmp_path):
    layout = paths.Layout(str(tmp_path))
    run_model = tmp_path / "models" / "v1" / "r1" / "model"
    mv1, _ = _promote(layout, _fake_model(run_model, "graph", b"first weights"))
    before = _snapshot(layout.serving_model(mv1))
    shutil.rmtree(run_model)  # the same run trained again: the run's model is replaced
    mv2, pointer = _promote(layout, _fake_model(run_model, "graph", b"other weights"))
    assert mv2 != mv1 and mv2.startswith("v1__r1__")
    assert _snapshot(layout.serving_model(mv1)) == before  # not rewritten, not even touched
    assert pointer["model_version"] == mv2 and pointer["previous"] == mv1 and pointer["changed"]
    assert serving.versions(layout) == sorted([mv1, mv2])
    assert serving.rollback(layout)["model_version"] == mv1
    with open(os.path.join(serving.current(layout)["path"], "variables", "variables.data-00000-of-00001"), "rb") as f:
        assert f.read() == b"first weights"


def test_promoting_a_promoted_model_again_copies_nothing_and_keeps_the_pointer(tmp_path):
    layout = paths.Layout(str(tmp_path))
    m1 = _fake_model(tmp_path / "m1", "one")
    mv1, first = _promote(layout, m1)
    before = _snapshot(layout.serving_model(mv1))
    pointer_before = serving.current(layout)
    mv_again, again = _promote(layout, m1)
    assert mv_again == mv1 and again["changed"] is False
    assert _snapshot(layout.serving_model(mv1)) == before
    assert serving.current(layout) == pointer_before and pointer_before["previous"] is None
    # the same name with other bytes (a forged or truncated digest) is refused, the model untouched
    other = _fake_model(tmp_path / "m2", "two")
    with pytest.raises(ValueError, match="never replaced"):
        serving.promote(layout, other, mv1, {}, serving.model_digest(other))
    assert _snapshot(layout.serving_model(mv1)) == before and serving.current(layout) == pointer_before


def test_a_copy_that_differs_from_the_named_digest_is_not_published(tmp_path):
    layout = paths.Layout(str(tmp_path))
    m1 = _fake_model(tmp_path / "m1", "one")
    stale = "0" * 64  # the digest the name was made from no longer matches the files
    mv = paths.model_version("v1", "r1", stale)
    with pytest.raises(ValueError, match="changed while it was being promoted"):
        serving.promote(layout, m1, mv, {}, stale)
    assert serving.versions(layout) == [] and serving.current(layout) is None
    assert os.listdir(os.path.join(layout.serving(), "models")) == []  # no attempt left behind


def test_previous_never_names_the_current_model(tmp_path):
    layout = paths.Layout(str(tmp_path))
    models = {n: _fake_model(tmp_path / n, n) for n in ("a", "b")}
    seen = []
    for step in ["a", "a", "b", "b", "a", "rollback", "rollback", "b", "to-a", "to-b", "rollback"]:
        try:
            if step in models:
                _promote(layout, models[step])
            elif step == "rollback":
                serving.rollback(layout)
            else:
                serving.rollback(layout, to=paths.model_version("v1", "r1", serving.model_digest(models[step[3:]])))
        except ValueError:
            pass  # a refused move changes nothing
        now = serving.current(layout)
        assert now["previous"] != now["model_version"]
        chain = [now["model_version"]] + now["history"]
        assert all(x != y for x, y in zip(chain, chain[1:])), chain
        seen.append(now["model_version"])
    mv_a = paths.model_version("v1", "r1", serving.model_digest(models["a"]))
    with pytest.raises(ValueError, match="already serving"):
        serving.rollback(layout, to=serving.current(layout)["model_version"])
    assert set(seen) == {mv_a, paths.model_version("v1", "r1", serving.model_digest(models["b"]))}


def test_rollback_walks_back_through_every_model_that_served(tmp_path):
    layout = paths.Layout(str(tmp_path))
    names = [_promote(layout, _fake_model(tmp_path / f"m{i}", f"model {i}"), f"v{i}", "r")[0] for i in range(4)]
    assert serving.current(layout)["history"] == names[2::-1]
    assert [serving.rollback(layout)["model_version"] for _ in range(3)] == names[2::-1]
    assert serving.current(layout)["previous"] is None
    with pytest.raises(ValueError, match="nothing to roll back to"):
        serving.rollback(layout)
    # --to moves forward and is itself undone by a plain rollback
    serving.rollback(layout, to=names[3])
    assert serving.current(layout)["previous"] == names[0]
    assert serving.rollback(layout)["model_version"] == names[0]
    assert serving.versions(layout) == sorted(names)  # every promoted model is kept


def test_a_pointer_written_before_histories_still_rolls_back(tmp_path):
    layout = paths.Layout(str(tmp_path))
    mv1, _ = _promote(layout, _fake_model(tmp_path / "m1", "one"), "v1")
    mv2, _ = _promote(layout, _fake_model(tmp_path / "m2", "two"), "v2")
    old = {k: v for k, v in serving.current(layout).items() if k != "history"}
    fs.write_json(layout.serving_pointer(), old)
    assert serving.rollback(layout)["model_version"] == mv1
    fs.write_json(layout.serving_pointer(), dict(old, model_version=mv2, previous=mv2))  # pointed at itself
    with pytest.raises(ValueError, match="nothing to roll back to"):
        serving.rollback(layout)


# -- model version names -----------------------------------------------------------------------

ALPHABET = string.ascii_letters + string.digits + "._-"


def _segment(rng, n):
    """A random valid path segment of n characters (alphanumeric start, no '..')."""
    s = rng.choice(string.ascii_letters + string.digits) + "".join(rng.choice(ALPHABET) for _ in range(n - 1))
    while ".." in s:
        s = s.replace("..", ".a")
    return s


def test_model_version_is_a_valid_segment_for_any_version_and_run():
    rng = random.Random(7)
    digest = hashlib.sha256(b"model").hexdigest()
    names = {}
    for _ in range(3000):
        version = _segment(rng, rng.choice([1, 2, 20, 60, 86, 87, 100, 127, 128, rng.randint(1, 128)]))
        raw_run = rng.choice(["manual__", "scheduled__", "backfill__", ""]) + "".join(
            rng.choice(ALPHABET + ":+T /") for _ in range(rng.randint(1, 200))).replace("..", ".a")
        run = paths.run_slug(raw_run)
        mv = paths.model_version(version, run, digest)
        assert paths.check_segment(mv, "model version") == mv and len(mv) <= 128
        assert paths.model_version(version, run, digest) == mv  # deterministic
        assert names.setdefault(mv, (version, run)) == (version, run)  # distinct inputs, distinct names
    assert any(len(v) + len(r) + 16 > 128 for v, r in names.values())  # long inputs were generated


def test_model_version_keeps_long_inputs_apart_and_short_ones_readable():
    digest = hashlib.sha256(b"model").hexdigest()
    assert paths.model_version("2026-11-28", "manual__2026-11-28T10_00_00_00_00", digest) == \
        f"2026-11-28__manual__2026-11-28T10_00_00_00_00__{digest[:12]}"
    v = "v" * 128
    run = "scheduled__" + "x" * 117
    cases = [(v, run, digest), (v[:-1] + "w", run, digest), (v, run[:-1] + "y", digest),
             (v, run, hashlib.sha256(b"other").hexdigest())]
    names = [paths.model_version(*c) for c in cases]
    assert len(set(names)) == len(cases) and all(len(n) == 128 for n in names)
    assert all(n.startswith("v" * 54 + "__scheduled__") for n in names)
    # a short run keeps all of itself, the version is cut
    assert paths.model_version(v, "r1", digest).startswith("v" * 106 + "__r1__")
    for bad in ("", "XYZ" * 5, "abc", None):
        with pytest.raises(ValueError, match="invalid model digest"):
            paths.model_version("v1", "r1", bad)
    with pytest.raises(paths.PathError):
        paths.model_version("../x", "r1", digest)
