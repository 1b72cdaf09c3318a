"""Compare-and-swap promotion and the serving history, without Spark: threads and processes racing
for the pointer, concurrent history writers, rollbacks recorded with who ran them, the history on the
report page, and the DAG serialising validate runs."""
import json
import os
import urllib.parse
import subprocess
import sys
import threading
import time

import pytest

from conftest import fake_model
from tfospipe import paths, serving

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def named(model_dir, version="v1", run="r1"):
    digest = serving.model_digest(model_dir)
    return paths.model_version(version, run, digest), digest


def promote_when_unchanged(layout, model_dir, run, before_swap=lambda: None, rounds=100):
    """What validate does: read the champion, (evaluate), swap only if it still serves, else again.
    Returns the champions compared with, one per round."""
    mv, digest = named(model_dir, run=run)
    compared = []
    for _ in range(rounds):
        now = serving.current(layout)
        expected = now["model_version"] if now else None
        compared.append(expected)
        before_swap()
        try:
            serving.promote(layout, model_dir, mv, {"run_id": run}, digest, expected=expected,
                            event={"run_id": run, "compared_with": expected})
            return compared
        except serving.ChampionChanged:
            continue
    raise AssertionError(f"{run} never promoted")


def assert_chain(layout):
    """Every pointer move starts from the model the previous one left, and a promotion replaces the
    model it was compared with; the pointer names the last one."""
    served = None
    moves = [e for e in serving.history(layout) if e["action"] in ("promote", "rollback")]
    for e in moves:
        assert e["from"] == served, e
        if e["action"] == "promote":
            assert e["compared_with"] == e["from"], e
        served = e["to"]
    assert serving.current(layout)["model_version"] == served
    assert serving.current(layout)["event"] == moves[-1]["id"]
    return moves


def test_a_swap_against_a_model_that_no_longer_serves_changes_nothing(tmp_path):
    layout = paths.Layout(str(tmp_path))
    a, b = fake_model(tmp_path / "a", "a"), fake_model(tmp_path / "b", "b")
    mv_a, digest_a = named(a, run="ra")
    mv_b, digest_b = named(b, run="rb")
    serving.promote(layout, a, mv_a, {}, digest_a, expected=None)
    with pytest.raises(serving.ChampionChanged, match=f"it was empty, it is now {mv_a}") as caught:
        serving.promote(layout, b, mv_b, {}, digest_b, expected=None)  # compared with nothing; a serves now
    assert caught.value.now["model_version"] == mv_a and caught.value.expected is None
    assert serving.current(layout)["model_version"] == mv_a
    assert serving.versions(layout) == [mv_a]  # the stale candidate was not even copied
    assert [e["action"] for e in serving.history(layout)] == ["promote"]
    serving.promote(layout, b, mv_b, {}, digest_b, expected=mv_a)  # compared with a: it replaces a
    assert serving.current(layout)["model_version"] == mv_b and serving.current(layout)["previous"] == mv_a
    serving.rollback(layout)  # a rollback also moves the pointer away from what a candidate was compared with
    c = fake_model(tmp_path / "c", "c")
    mv_c, digest_c = named(c, run="rc")
    with pytest.raises(serving.ChampionChanged, match=f"it was {mv_b}, it is now {mv_a}"):
        serving.promote(layout, c, mv_c, {}, digest_c, expected=mv_b)
    assert serving.current(layout)["model_version"] == mv_a


def test_threads_racing_to_promote_never_replace_a_model_they_were_not_compared_with(tmp_path):
    layout = paths.Layout(str(tmp_path))
    n = 8
    models = [fake_model(tmp_path / f"m{i}", f"model {i}") for i in range(n)]
    barrier = threading.Barrier(n)
    compared, errors = {}, []

    def worker(i):
        waits = [barrier.wait]  # the first round only: every thread reads the same champion, then all swap

        def wait_once():
            if waits:
                waits.pop()(timeout=30)
        try:
            compared[i] = promote_when_unchanged(layout, models[i], f"r{i}", wait_once)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(c[0] is None for c in compared.values())       # all compared with "nothing serving" first
    assert sum(len(c) > 1 for c in compared.values()) == n - 1  # only one swap could win that round
    moves = assert_chain(layout)
    assert len(moves) == n and len(set(serving.versions(layout))) == n
    assert len({e["id"] for e in serving.history(layout)}) == n


WORKER = r"""
import os, sys, time
from tfospipe import paths, serving
layout = paths.Layout({root!r})
model, run, ready, go = sys.argv[1:5]
digest = serving.model_digest(model)
mv = paths.model_version("v1", run, digest)
rounds = 0
while True:
    rounds += 1
    now = serving.current(layout)
    expected = now["model_version"] if now else None
    if rounds == 1:
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
    try:
        serving.promote(layout, model, mv, {{"run_id": run}}, digest, expected=expected,
                        event={{"run_id": run, "compared_with": expected}})
        break
    except serving.ChampionChanged:
        continue
print(rounds)
"""


def test_processes_racing_to_promote_are_serialised_by_the_compare_and_swap(tmp_path):
    """Separate processes, as two validate drivers are: the conditional write of the pointer holds."""
    root = tmp_path / "root"
    layout = paths.Layout(str(root))
    first = fake_model(tmp_path / "first", "first")
    mv0, digest0 = named(first, run="r0")
    serving.promote(layout, first, mv0, {}, digest0, expected=None, event={"compared_with": None})
    code = WORKER.format(root=str(root))
    n = 4
    procs = []
    for i in range(n):
        model = fake_model(tmp_path / f"p{i}", f"process model {i}")
        procs.append(subprocess.Popen([sys.executable, "-c", code, model, f"p{i}", str(tmp_path / f"ready{i}"),
                                       str(tmp_path / "go")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)) and time.time() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()  # every process compared with mv0; now all swap
    rounds = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        rounds.append(int(out.strip()))
    assert sorted(rounds)[0] == 1 and sum(r > 1 for r in rounds) == n - 1
    moves = assert_chain(layout)
    assert len(moves) == n + 1 and moves[1]["from"] == mv0


def test_history_survives_concurrent_writers(tmp_path):
    layout = paths.Layout(str(tmp_path))
    per_writer, writers = 40, 6

    def write(w):
        for i in range(per_writer):
            serving.record(layout, "rejected", {"model_version": f"m{w}", "n": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    code = ("from tfospipe import paths, serving\n"
            f"layout = paths.Layout({str(tmp_path)!r})\n"
            f"[serving.record(layout, 'rollback', {{'model_version': 'proc', 'n': i}}) for i in range({per_writer})]")
    proc = subprocess.Popen([sys.executable, "-c", code])
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert proc.wait(60) == 0
    events = serving.history(layout)
    assert len(events) == (writers + 1) * per_writer
    assert len({e["id"] for e in events}) == len(events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    for w in range(writers):  # each writer's own events in the order it wrote them
        assert [e["n"] for e in serving.history(layout, f"m{w}")] == list(range(per_writer))
    assert [e["n"] for e in serving.history(layout, "proc")] == list(range(per_writer))
    assert not [n for n in os.listdir(serving.history_dir(layout)) if not n.endswith(".json")]
    with pytest.raises(ValueError, match="unknown serving action"):
        serving.record(layout, "deleted", {})


def serving_cli(root, *argv, user="alice"):
    env = dict(os.environ, USER=user, LOGNAME=user)
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root", str(root),
                           *argv], capture_output=True, text=True, timeout=60, env=env)


def test_rollbacks_are_recorded_with_who_ran_them_and_history_prints_every_decision(tmp_path, monkeypatch):
    layout = paths.Layout(str(tmp_path / "root"))
    names = []
    for i in range(3):
        model = fake_model(tmp_path / f"m{i}", f"model {i}")
        mv, digest = named(model, version=f"2026-11-0{i + 1}", run="r")
        expected = names[-1] if names else None
        serving.promote(layout, model, mv, {"accuracy": 0.5 + i / 10, "dataset_version": f"2026-11-0{i + 1}",
                                            "run_id": "r"}, digest, expected=expected,
                        event={"compared_with": expected, "eval_data": f"eval split of 2026-11-0{i + 1}",
                               "rule": "promotion=auto: every model that passes the gate is promoted"})
        names.append(mv)
    serving.reject(layout, "2026-11-04__r__0123456789ab", {"accuracy": 0.1, "rule": "gate: accuracy 0.1 < 0.8",
                                                           "dataset_version": "2026-11-04"})

    rolled = serving_cli(tmp_path / "root", "rollback", "--to", names[0])  # any earlier version
    assert rolled.returncode == 0, rolled.stderr
    assert f"serving {names[0]} (was {names[2]}; previous now {names[2]})" in rolled.stdout
    rolled = serving_cli(tmp_path / "root", "rollback", user="bob")  # a plain rollback undoes --to
    assert rolled.returncode == 0 and serving.current(layout)["model_version"] == names[2]

    events = serving.history(layout)
    assert [e["action"] for e in events] == ["promote"] * 3 + ["rejected", "rollback", "rollback"]
    assert events[4]["from"] == names[2] and events[4]["to"] == names[0]
    assert events[4]["triggered_by"] == f"scripts/serving.py rollback --to {names[0]} by alice"
    assert events[5]["triggered_by"] == "scripts/serving.py rollback by bob"
    assert events[3]["from"] == events[3]["to"] == names[2]  # a rejection leaves serving as it was
    assert_chain(layout)

    shown = serving_cli(tmp_path / "root", "history")
    assert shown.returncode == 0, shown.stderr
    heads = [line for line in shown.stdout.splitlines() if not line.startswith(" ")]
    assert [h.split()[1] for h in heads] == [e["action"] for e in events]
    assert f"promote    {names[0]} -> {names[1]}" in shown.stdout
    assert "accuracy 0.6000 on eval split of 2026-11-02" in shown.stdout
    assert f"rollback   {names[2]} -> {names[0]}" in shown.stdout and "by scripts/serving.py rollback --to" in shown.stdout
    assert "model 2026-11-04__r__0123456789ab" in shown.stdout and "rule: gate: accuracy 0.1 < 0.8" in shown.stdout
    one = serving_cli(tmp_path / "root", "history", "--model", names[1])
    assert [h.split()[1] for h in one.stdout.splitlines() if not h.startswith(" ")] == ["promote", "promote"]
    (tmp_path / "empty").mkdir()  # a root nothing was promoted in yet
    empty = serving_cli(tmp_path / "empty", "history")
    assert empty.returncode == 0 and "no serving history in" in empty.stdout


def test_the_report_page_shows_the_history_of_the_model_it_judged(tmp_path):
    import tfos_ui

    layout = paths.Layout(str(tmp_path))
    a, b = fake_model(tmp_path / "a", "a"), fake_model(tmp_path / "b", "b")
    mv_a, digest_a = named(a, run="ra")
    mv_b, digest_b = named(b, run="rb")
    serving.promote(layout, a, mv_a, {}, digest_a, expected=None,
                    event={"run_id": "ra", "accuracy": 0.91234, "rule": "promotion=auto <all>"})
    serving.reject(layout, mv_b, {"run_id": "rb", "rule": "gate: accuracy 0.1 < min_accuracy 0.8"})
    page = tfos_ui.history_html(layout, mv_a)
    assert f"Serving history of <code>{mv_a}</code>" in page
    assert page.count("<tr>") == 3  # header, its promotion, the rejection of b while it served
    assert "<td>promote</td>" in page and "<td>0.9123</td>" in page and "promotion=auto &lt;all&gt;" in page
    page_b = tfos_ui.history_html(layout, mv_b)
    assert page_b.count("<tr>") == 2 and "<td>rejected</td>" in page_b and "<td>promote</td>" not in page_b
    assert "No serving decision recorded" in tfos_ui.history_html(layout, "v9__r__0123456789ab")

    # the page itself: the report, then the history of the model named in its metrics.json
    from fastapi.testclient import TestClient
    report_dir = layout.validation("v1", "ra")
    os.makedirs(report_dir)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(f"# Validation of model {mv_a}\n")
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump({"model_version": mv_a}, f)
    tfos_ui.app.dependency_overrides = {dep.dependency: (lambda: None) for dep in tfos_ui._signed_in}
    original = tfos_ui._layout
    tfos_ui._layout = lambda: layout
    try:
        page = TestClient(tfos_ui.app).get("/reports/v1/ra/")
    finally:
        tfos_ui._layout = original
        tfos_ui.app.dependency_overrides = {}
    assert page.status_code == 200, page.text
    assert f"<h1>Validation of model {mv_a}</h1>" in page.text and f"Serving history of <code>{mv_a}</code>" in page.text
    assert page.text.index("<h1>") < page.text.index("Serving history") and "<td>rejected</td>" in page.text


def test_a_dag_runs_validation_report_tab_shows_its_report_inside_the_ui(tmp_path):
    """The plugin's external view: a "Validation report" tab on each DAG run's page, whose iframe loads
    /tfos/runs/<dag>/<run>/: the run's report found by its folder name under any dataset version, its image
    and data reports linked where their own pages serve them; a run without a report says so."""
    import tfos_ui
    from fastapi.testclient import TestClient

    (view,) = tfos_ui.TFoSUIPlugin.external_views
    assert view["destination"] == "dag_run" and view["href"] == "/tfos/runs/{DAG_ID}/{RUN_ID}/"
    layout = paths.Layout(str(tmp_path))
    run_id = "manual__2026-11-28T10:00:00+00:00"
    report_dir = layout.validation("v7", paths.run_slug(run_id))
    os.makedirs(report_dir)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write("# Validation of run r\n\n![confusion matrices](confusion_matrix.png)\n")
    os.makedirs(layout.data_checks_dir("v7"))
    open(layout.data_report("v7", "train"), "w").close()
    tfos_ui.app.dependency_overrides = {dep.dependency: (lambda: None) for dep in tfos_ui._signed_in}
    original = tfos_ui._layout
    tfos_ui._layout = lambda: layout
    try:
        client = TestClient(tfos_ui.app)
        page = client.get("/runs/tfos_pipeline/" + urllib.parse.quote(run_id, safe="") + "/")
        none = client.get("/runs/tfos_pipeline/scheduled__2026-11-29T00:00:00+00:00/")
        odd = client.get("/runs/tfos_pipeline/..%20x/")  # any run id makes a safe folder name
    finally:
        tfos_ui._layout = original
        tfos_ui.app.dependency_overrides = {}
    assert page.status_code == 200, page.text
    assert "<h1>Validation of run r</h1>" in page.text and "<code>v7</code>" in page.text
    slug = paths.run_slug(run_id)
    # relative to /tfos/runs/<dag>/<run>/: the report page's image and the data report page
    assert f'src="../../../reports/v7/{slug}/confusion_matrix.png"' in page.text
    assert "href='../../../data-checks/v7/train'" in page.text and "data-checks/v7/infer" not in page.text
    assert none.status_code == 200 and "has no validation report yet" in none.text
    assert odd.status_code == 200 and "has no validation report yet" in odd.text


def test_the_dag_runs_one_validate_at_a_time_and_passes_the_data_date():
    import jinja2
    from airflow.dag_processing.dagbag import DagBag
    from tfospipe import jobargs

    dag = DagBag(dag_folder=os.path.join(PROJECT_DIR, "dags")).get_dag("tfos_pipeline")
    validate = dag.get_task("validate")
    assert validate.pool == "tfos_serving" and validate.pool_slots == 1
    assert dag.params["promotion"] == "if_not_older"
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    i = validate.application_args.index("--data-date")
    template = validate.application_args[i + 1]

    class Run:
        run_after = __import__("datetime").datetime(2026, 11, 29, 10, 0)

    assert env.from_string(template).render(ds="2026-11-20", dag_run=Run) == "2026-11-20"
    assert env.from_string(template).render(ds=None, dag_run=Run) == "2026-11-29"  # manual run, no logical date
    args = jobargs.parse("validate", ["--data-root", "/d", "--version", "mnist-v2", "--run-id", "r",
                                      "--data-date", "2026-11-29", "--promotion", "auto"])
    assert args.data_date == "2026-11-29" and args.promotion == "auto"
    for bad in ("2026-02-30", "20261129", "2026-11-29\n"):
        with pytest.raises(SystemExit):
            jobargs.parse("validate", ["--data-root", "/d", "--version", "v", "--run-id", "r", "--data-date", bad])


def test_history_events_are_plain_json_objects_named_by_time(tmp_path):
    layout = paths.Layout(str(tmp_path))
    event = serving.record(layout, "rejected", {"model_version": "m"})
    name = event["id"] + ".json"
    assert sorted(os.listdir(serving.history_dir(layout))) == [name]
    with open(os.path.join(serving.history_dir(layout), name)) as f:
        assert json.load(f) == event
    assert name[:8].isdigit() and name[8] == "T" and event["triggered_by"]


def test_a_validate_event_records_the_gate_statistics_and_the_history_shows_them(tmp_path):
    import numpy as np

    import tfos_ui
    from tfospipe import metrics, validate

    sys.path.insert(0, os.path.join(PROJECT_DIR, "scripts"))
    try:
        import serving as serving_script
    finally:
        sys.path.pop(0)
    labels = np.arange(360) % 10
    cand, serv = labels.copy(), labels.copy()
    cand[:9] = (labels[:9] + 1) % 10                     # 9 records only the serving model gets right
    accs, pairs = {}, metrics.empty_pairs()
    for name, pred in (("candidate", cand), ("champion", serv)):
        accs[name] = metrics.summarize(metrics.update(metrics.empty(), labels, np.eye(10)[pred]))
    metrics.update_pairs(pairs, labels, np.eye(10)[cand], np.eye(10)[serv])
    t = validate.GateThresholds(min_accuracy=0.8, max_regression=0.02, gate="significance")
    verdict = validate.gate(accs["candidate"], accs["champion"], t, pairs)
    assert not verdict.passed
    layout = paths.Layout(str(tmp_path))
    cand_info = validate._Candidate(version="v1", run_id="r1", policy="auto", params={}, dir="d", digest="x",
                                    mv="v1__r1__0123456789ab", data_date="2026-11-28", image_shape=(8, 8),
                                    eval_files=[], eval_rows=360, report_dir="rep")
    r = validate._Round(1, None, None, accs, "compared", [], verdict, True, "promotion=auto", time.time())
    event = serving.reject(layout, cand_info.mv, validate._event(cand_info, r))
    (stored,) = serving.history(layout)
    assert stored == event and stored["gate"]["decided_by"] == "significance: significantly worse (p=0.00195)"
    g = stored["gate"]
    assert (g["cand_only"], g["serving_only"]) == (0, 9) and g["p_serving_better"] == 0.5 ** 9
    assert g["p_two_sided"] == 2 * 0.5 ** 9 and g["p_candidate_better"] == 1.0 and g["decidable"]
    assert len(g["accuracy_interval"]) == len(g["serving_accuracy_interval"]) == len(g["difference_interval"]) == 2
    assert g["difference"] == -9 / 360 and set(g["p_holm_by_class"]) == {str(c) for c in range(10)}
    assert g["lost_classes"] == []
    line = serving.gate_line(g)
    assert line.startswith("significance: significantly worse (p=0.00195) | b=0 c=9, p(worse)=0.00195 p(better)=1")
    assert "difference -0.0250 [" in line
    assert "gate: " + line in serving_script.format_event(stored)
    page = tfos_ui.history_html(layout, cand_info.mv)
    assert "<th>gate</th>" in page and "b=0 c=9" in page
    assert serving.gate_line(None) == "" and serving.gate_line({"decided_by": "threshold"}) == "threshold"
