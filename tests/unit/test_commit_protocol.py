"""The commit protocol on a local root and on a real S3 API (the ``moto`` server): outputs published by a
conditional write of their pointer, ``kill -9`` at each step of a commit, two attempts of one output at
once, 20 concurrent promoters, a rollback racing a promotion, run ids the old encoding merged, and S3
folder markers. Processes, not threads, where the issue is processes (a killed job, racing drivers).

The S3 root is a moto server of its own that handles one request at a time: moto_server's threaded
handler checks ``If-Match``/``If-None-Match`` and stores the object in two steps, so two racing PUTs
can both pass their condition there (seen: two winners of one round); S3 makes the check and the write
one step, which a server serving one request at a time reproduces."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import fake_model, free_port
from tfospipe import fs, inputs, jobspec, paths, serving

PARTS = 4
MOTO_BUCKET = "tfos-cas"
SERIAL_MOTO = r"""
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False,
           request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="module")
def serial_moto(tmp_path_factory):
    """The endpoint of a moto S3 server handling one request at a time, with the bucket created."""
    import urllib.request
    port = free_port()
    log = open(tmp_path_factory.mktemp("serial-moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERIAL_MOTO, str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, f"moto did not start; see {log.name}"
                time.sleep(0.1)
        import boto3
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket=MOTO_BUCKET)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch):
    """A fresh root: a local directory, or a prefix of the serial moto server's bucket (credentials and
    endpoint in the environment only, which the subprocesses inherit)."""
    if request.param == "local":
        return str(tmp_path / "root")
    endpoint = request.getfixturevalue("serial_moto")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    return f"s3://{MOTO_BUCKET}/c-{uuid.uuid4().hex[:10]}"


def _python(code, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def read_output(final):
    """What a reader sees: resolve the pointer once, then read every part. Returns the one tag all parts
    and the manifest carry; fails on a missing output, a missing part or a mix of attempts."""
    assert fs.is_committed(final), f"no committed output at {final}"
    base = fs.resolve(final)
    tags = {fs.read_bytes(paths.join(base, f"part-{i}")).decode() for i in range(PARTS)}
    tags.add(fs.read_json(paths.join(base, fs.MANIFEST))["tag"])
    assert len(tags) == 1, f"a mix of attempts: {tags}"
    return tags.pop()


def commit(final, tag):
    with fs.Staging(final) as st:
        for i in range(PARTS):
            fs.write_bytes(st.file(f"part-{i}"), tag.encode())
        st.commit({"tag": tag})
    return st


# kill -9 of the committing process at one step; the patch runs in the child only
KILLED_COMMIT = r"""
import os, signal, sys
from tfospipe import fs
final, tag, step = sys.argv[1:4]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if step == "attempt":            # the attempt is complete (_SUCCESS in it), its pointer not yet written
    fs._publish = die
elif step == "pointer":          # inside the pointer write, before it lands
    if "://" in final:
        real = fs._client(final).pipe_file
        def pipe(path, data, **kw):
            if path.endswith(fs.COMMIT):
                die()
            return real(path, data, **kw)
        fs._client(final).pipe_file = pipe
    else:
        os.replace = die     # the symbolic link is made; its rename over the output is not
elif step == "gc":               # the pointer moved; killed while removing a superseded attempt
    os.environ[fs.ATTEMPT_GRACE_ENV] = "0"
    real_rmtree = fs.rmtree
    def rmtree(path):
        names = fs.listdir(path)
        if names:
            real_rmtree(fs._join(path, names[0]))   # part of the attempt is gone
        die()
    fs.rmtree = rmtree
with fs.Staging(final) as st:
    for i in range(4):
        fs.write_bytes(st.file(f"part-{i}"), tag.encode())
    st.commit({"tag": tag})
print("not killed")
"""


def test_kill_at_each_commit_step_leaves_the_previous_or_the_new_output_whole(root):
    final = paths.join(root, "out", "v1")
    commit(final, "old")
    for step, seen in (("attempt", "old"), ("pointer", "old"), ("gc", "new")):
        if step == "gc":
            time.sleep(1.05)  # a superseded attempt started a whole second before: past a grace of 0
        proc = _python(KILLED_COMMIT, final, "new", step)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (step, out, err)
        assert read_output(final) == seen, step
        if step != "gc":
            assert fs.is_committed(final)
    # the next attempt is not blocked (no lock left held) and publishes whole
    st = commit(final, "after")
    assert read_output(final) == "after" and fs.resolve(final) == st.path


TWO_ATTEMPTS = r"""
import os, sys, time
from tfospipe import fs
final, tag, sync, me, other = sys.argv[1:6]
def wait(name):
    while not os.path.exists(os.path.join(sync, name)):
        time.sleep(0.05)
def mark(name):
    open(os.path.join(sync, name), "w").close()
if me == "b":
    wait("a-half")           # a is writing
with fs.Staging(final) as st:
    for i in range(2):
        fs.write_bytes(st.file(f"part-{i}"), tag.encode())
    mark(me + "-half")
    wait(other + "-half")    # the other attempt started while this one writes
    for i in range(2, 4):
        fs.write_bytes(st.file(f"part-{i}"), tag.encode())
    mark(me + "-ready")
    wait("go")
    try:
        st.commit({"tag": tag})
        print("committed")
    except fs.CommitConflict as e:
        print("conflict:", e)
"""


def test_two_attempts_at_once_give_one_complete_output(root, tmp_path):
    final = paths.join(root, "out", "v1")
    commit(final, "old")
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = {me: _python(TWO_ATTEMPTS, final, me, str(sync), me, other) for me, other in (("a", "b"), ("b", "a"))}
    deadline = time.monotonic() + 60
    while not all((sync / f"{me}-ready").exists() for me in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), \
            [p.communicate() for p in procs.values() if p.poll() is not None]
        time.sleep(0.02)
    (sync / "go").touch()
    results = {}
    for me, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results[me] = out.strip()
    winners = [me for me, r in results.items() if r == "committed"]
    assert len(winners) == 1, results
    loser = ({"a", "b"} - set(winners)).pop()
    assert results[loser].startswith("conflict:") and "run the task again" in results[loser]
    assert read_output(final) == winners[0]    # every part of the winner: the loser deleted nothing of it


PROMOTERS = r"""
import os, sys, threading, time
from tfospipe import paths, serving
root, sync, rounds, *runs = sys.argv[1:]
layout = paths.Layout(root)

def promoter(model, run):
    digest = serving.model_digest(model)
    mv = paths.model_version("v1", run, digest)
    for r in range(int(rounds)):
        now = serving.current(layout)
        expected = now["model_version"] if now else None
        open(os.path.join(sync, f"ready-{r}-{run}"), "w").close()
        while not os.path.exists(os.path.join(sync, f"go-{r}")):
            time.sleep(0.05)
        try:
            pointer = serving.promote(layout, model, mv, {"run_id": run}, digest, expected=expected,
                                      event={"run_id": run, "compared_with": expected})
            result = "won" if pointer["changed"] else "serving already"
        except serving.ChampionChanged as e:
            serving.reject(layout, mv, {"run_id": run, "compared_with": expected, "rule": f"lost the race: {e}"})
            result = "lost"
        with open(os.path.join(sync, f"done-{r}-{run}"), "w") as f:
            f.write(result)

threads = [threading.Thread(target=promoter, args=(runs[i], runs[i + 1])) for i in range(0, len(runs), 2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_20_concurrent_promoters_one_winner_per_round_and_every_decision_recorded(root, tmp_path):
    """20 promoters of different models, 5 threads in each of 4 processes (fewer interpreters to start on
    2 cores), all comparing with the same serving model before they race for the pointer."""
    n, rounds, per_process = 20, 3, 5
    layout = paths.Layout(root)
    sync = tmp_path / "sync"
    sync.mkdir()
    runs = [f"p{i:02d}" for i in range(n)]
    models = {run: fake_model(tmp_path / run, f"model {run}") for run in runs}
    procs = [_python(PROMOTERS, root, str(sync), str(rounds),
                     *[x for run in runs[i:i + per_process] for x in (models[run], run)])
             for i in range(0, n, per_process)]
    winners = []
    try:
        for r in range(rounds):
            deadline = time.monotonic() + 120
            while not all((sync / f"ready-{r}-{run}").exists() for run in runs):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                    [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
                time.sleep(0.02)
            (sync / f"go-{r}").touch()  # all 20 compared with the same champion; now all swap
            while not all((sync / f"done-{r}-{run}").exists() for run in runs):
                assert time.monotonic() < deadline and all(p.poll() is None or p.returncode == 0 for p in procs)
                time.sleep(0.02)
            won = [run for run in runs if (sync / f"done-{r}-{run}").read_text() == "won"]
            assert len(won) == 1, (r, won)
            winners += won
    finally:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    assert serving.current(layout)["run_id"] == winners[-1]
    events = serving.history(layout)
    assert [e["run_id"] for e in events if e["action"] == "promote"] == winners
    # the others: rejected, or (the model that served, in the rounds after it won) unchanged; no entry lost
    assert [e["action"] for e in events].count("rejected") + [e["action"] for e in events].count("unchanged") \
        == rounds * (n - 1)
    assert [e["run_id"] for e in events if e["action"] == "unchanged"] == \
        [w for w, r in zip(winners, range(1, rounds)) if (sync / f"done-{r}-{w}").read_text() == "serving already"]
    assert len({e["id"] for e in events}) == len(events) == rounds * n
    served = None
    for e in (e for e in events if e["action"] == "promote"):
        assert e["from"] == served == e["compared_with"], e  # each replaced the model it was compared with
        served = e["to"]


def _promote(layout, tmp_path, name, expected):
    model = fake_model(tmp_path / name, name)
    digest = serving.model_digest(model)
    mv = paths.model_version("v1", name, digest)
    return serving.promote(layout, model, mv, {"run_id": name}, digest, expected=expected,
                           event={"run_id": name, "compared_with": expected})["model_version"]


def _racing(monkeypatch, other):
    """Run ``other`` once, just before the first pointer write of the code under test lands."""
    real = serving._swap
    state = {"ran": False}

    def swap(*a, **k):
        if not state["ran"]:
            state["ran"] = True
            other()
        return real(*a, **k)
    monkeypatch.setattr(serving, "_swap", swap)


def test_a_rollback_racing_a_promotion_never_undoes_what_it_did_not_see(root, tmp_path, monkeypatch):
    layout = paths.Layout(root)
    a = _promote(layout, tmp_path, "a", None)
    b = _promote(layout, tmp_path, "b", a)
    # the rollback read "b serves"; a promotion of c (compared with b) lands before its write
    c_dir = fake_model(tmp_path / "c", "c")
    c = paths.model_version("v1", "c", serving.model_digest(c_dir))
    real_swap = serving._swap
    _racing(monkeypatch, lambda: serving.promote(layout, c_dir, c, {"run_id": "c"}, serving.model_digest(c_dir),
                                                 expected=b, event={"run_id": "c", "compared_with": b}))
    with pytest.raises(serving.ChampionChanged, match=f"during the rollback: it was {b}, it is now {c}; nothing "
                                                      "was rolled back"):
        serving.rollback(layout)
    assert serving.current(layout)["model_version"] == c
    monkeypatch.setattr(serving, "_swap", real_swap)
    # a rollback that names the state its user saw refuses another one
    with pytest.raises(serving.ChampionChanged, match=f"it was {b}, it is now {c}"):
        serving.rollback(layout, expected=b)
    # the other order: a promotion compared with c; a rollback to b lands first
    d_dir = fake_model(tmp_path / "d", "d")
    d = paths.model_version("v1", "d", serving.model_digest(d_dir))
    _racing(monkeypatch, lambda: serving.rollback(layout, expected=c))
    with pytest.raises(serving.ChampionChanged, match=f"it was {c}, it is now {b}"):
        serving.promote(layout, d_dir, d, {"run_id": "d"}, serving.model_digest(d_dir), expected=c)
    now = serving.current(layout)
    assert now["model_version"] == b and now["history"][:1] == [a]
    moves = [(e["action"], e["from"], e["to"]) for e in serving.history(layout) if e["action"] != "rejected"]
    assert moves == [("promote", None, a), ("promote", a, b), ("promote", b, c), ("rollback", c, b)]


def test_a_writer_killed_between_its_swap_and_its_history_write_loses_no_event(root, tmp_path, monkeypatch):
    layout = paths.Layout(root)
    a = _promote(layout, tmp_path, "a", None)
    real = serving._write_event

    def killed(layout_, event):
        if event.get("to") != a and event["action"] == "promote":
            raise KeyboardInterrupt("killed")  # the pointer moved; the event was not written
        return real(layout_, event)
    monkeypatch.setattr(serving, "_write_event", killed)
    with pytest.raises(KeyboardInterrupt):
        _promote(layout, tmp_path, "b", a)
    monkeypatch.setattr(serving, "_write_event", real)
    b = serving.current(layout)["model_version"]
    assert [e["to"] for e in serving.history(layout)] == [a, b]     # read from the pointer meanwhile
    assert len(fs.listdir(layout.serving_history())) == 1
    serving.rollback(layout)                                         # the next writer records it first
    assert len(fs.listdir(layout.serving_history())) == 3
    assert [(e["action"], e["to"]) for e in serving.history(layout)] == [("promote", a), ("promote", b),
                                                                          ("rollback", a)]


def test_run_ids_the_old_encoding_merged_train_and_report_into_folders_of_their_own(tmp_path):
    layout = paths.Layout(str(tmp_path))
    train = jobspec.SPECS["train"].output
    assert train(layout, "v1", "exp:1") != train(layout, "v1", "exp+1")
    assert train(layout, "v1", "exp:1").endswith("/models/v1/exp.3a1")
    assert layout.validation("v1", paths.run_slug("exp:1")) != layout.validation("v1", paths.run_slug("exp+1"))
    # model versions, which name the run, stay apart too
    digest = "0" * 64
    assert paths.model_version("v1", paths.run_slug("exp:1"), digest) != \
        paths.model_version("v1", paths.run_slug("exp+1"), digest)


def test_a_root_without_conditional_writes_is_refused_unless_single_writer(monkeypatch):
    monkeypatch.delenv(fs.SINGLE_WRITER_ENV, raising=False)
    for uri in ("gs://b/data", "hdfs://nn:8020/data", "abfs://c@a.dfs.core.windows.net/data"):
        with pytest.raises(fs.StorageError, match=f"conditional write.*{fs.SINGLE_WRITER_ENV}=1") as e:
            fs.check_commits(uri)
        assert "\n" not in str(e.value) and uri in str(e.value)
    fs.check_commits("s3://b/data")
    monkeypatch.setenv(fs.SINGLE_WRITER_ENV, "1")
    fs.check_commits("gs://b/data")


@pytest.mark.parametrize("root", ["s3"], indirect=True)
def test_s3_folder_markers_are_not_files(root, capsys):
    import boto3
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    prefix = root[len(f"s3://{MOTO_BUCKET}/"):]
    for key, body in (("raw/v1/", b""),                             # the S3 console's "Create folder"
                      ("raw/v1/digits.csv/", b""),                  # an S3A directory marker
                      ("raw/v1/digits.csv/part-00000.csv", b"5,0,1,2\n"),
                      ("raw/v1/b.csv", b"3,4,5,6\n"),
                      ("raw/v1/score_$folder$", b""),               # EMR markers
                      ("raw/v1/score/s.csv", b"1,2,3,4\n")):
        s3.put_object(Bucket=MOTO_BUCKET, Key=f"{prefix}/{key}", Body=body)
    raw = paths.join(root, "raw", "v1")
    assert fs.listdir(paths.join(root, "raw")) == ["v1"]
    assert fs.listdir(raw) == ["b.csv", "digits.csv", "score"]
    assert fs.listdir(paths.join(raw, "digits.csv")) == ["part-00000.csv"]
    assert [files for _d, _s, files in fs.walk(raw)] == [["b.csv"], ["part-00000.csv"], ["s.csv"]]
    labeled, unlabeled, skipped, unreadable = inputs.list_inputs(raw)
    assert [n for n, _ in labeled] == ["b.csv", "digits.csv/part-00000.csv"]
    assert [n for n, _ in unlabeled] == ["score/s.csv"] and skipped == [] and unreadable == []
    assert f"skipping {raw}/score_$folder$: an EMR folder marker" in capsys.readouterr().err
