"""One rule per param: what a trigger accepts is exactly what the jobs accept, for every DAG param.

For each param of the DAG (taken from the DAG and from jobargs, not listed here) a set of edge cases
is generated from its JSON schema: numbers at, inside and outside the bounds, whole-number floats
(2.0, 1e1), NaN, infinities, huge values, booleans and null; strings with a trailing newline,
surrounding spaces, wrong case, '..', '/', non-ASCII letters and digits, empty, maximum length and one
more, shapes 0x0 / 1x1 / 10000x1. Each value goes through

* the trigger: the DAG as the API server holds it (serialized and read back), ``params.deep_merge(
  conf).validate()``, which is what ``create_dagrun`` runs for a run triggered from the UI, the REST
  API or the CLI and what a backfill runs on its ``--dag-run-conf``; and the SDK's ``ParamsDict``,
  which the task runner validates again before it renders anything;
* the job: every task that reads the param has its ``application_args`` rendered by Airflow's
  templating with the value in ``params``, then parsed by the job's own parser (``jobargs.parse``).

Both must accept or both refuse, and an accepted value must reach the job unchanged. A value of a
JSON type the schema does not admit (a string "5" for an integer) only has to be refused by the
trigger: once rendered, "5" and 5 are the same text, and the trigger is what stops the string.
"""
import copy
import math
import os
import types

import pytest

from tfospipe import jobargs

DAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dags")
DS = "2026-11-28"
REFUSED = object()


def _readers():
    """DAG param -> [(job, Arg)] of the job flags it reaches; dataset_version reaches every job's --version."""
    readers = {"dataset_version": [(job, a) for job, args in jobargs.JOBS.items() for a in args
                                   if a.name == "version"],
               "data_wait_timeout": []}  # read by the DAG's wait_for_data sensor, no job
    for job, args in jobargs.JOBS.items():
        for a in args:
            if a.param:
                readers.setdefault(a.param, []).append((job, a))
    return readers


READERS = _readers()


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=DAGS_DIR)
    assert bag.import_errors == {}
    return bag.get_dag("tfos_pipeline")


@pytest.fixture(scope="module")
def served(dag):
    """The DAG as the scheduler and API server hold it (serialized, then read back)."""
    from airflow.serialization.serialized_objects import DagSerialization
    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


@pytest.fixture(scope="module")
def context(dag):
    var = types.SimpleNamespace(value=types.SimpleNamespace(get=lambda key, default=None: default))
    return {"params": {name: p.value for name, p in dag.params.items()}, "ds": DS,
            "run_id": "manual__2026-11-28T10:00:00+00:00", "var": var}


# --- edge cases, generated from each param's schema ------------------------------------------------

def _json_type(rule):
    types_ = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
    return [t for t in types_ if t != "null"][0]


def _number_cases(rule):
    limits = jobargs.bounds(rule)  # under allOf (jobargs.integer, jobargs.number)
    low = limits.get("minimum", limits.get("exclusiveMinimum"))
    high = limits.get("maximum")
    edges = [x for x in (low, high) if x is not None]
    cases = [0, 1, -1, 2, 10, 0.0, -0.0, 0.5, 2.0, 2.5, 1e1, 1e-05, 5e-324, 1e300, -1e300, 10 ** 100,
             -(10 ** 100), math.inf, -math.inf, math.nan, True, False, None]
    for edge in edges:
        cases += [edge, float(edge), edge + 1, edge - 1, float(edge) + 0.5, float(edge) - 0.5,
                  math.nextafter(float(edge), math.inf), math.nextafter(float(edge), -math.inf)]
    if len(edges) == 2:
        cases.append((edges[0] + edges[1]) / 2)
    return cases


#: Wrong-type values for number params: the trigger alone must refuse them.
NUMBER_LOOKALIKES = ["5", "2.0", "nan", "NaN", "inf", "1e1", "", " 1", "0x10"]


def _string_cases(rule, default):
    cases = ["", " ", "\n", "\t", "a", "A", "é", "ü" * 3, "ß", ".", "..", "/", "a/b", "../etc", "a..b", "a.b",
             "-rf", ".hidden", "_x", "a b", "a;rm -rf /", "$(id)", "`id`", "a|b", "a\\b", "x" * 100, "x" * 127,
             "x" * 128, "x" * 129, "2026-11-28", "２０２６", "٢٨", "nan", "NaN", "None", "null", "true", "0",
             "-1", "1.5", "0x0", "1x1", "28x28", "9999x9999", "10000x1", "1x10000", "28X28", "028x28",
             "28 x 28", "28x", "x28", "28x28x1", "-1x4", "٢٨x٢٨", "２８x２８", "auto", "AUTO", "Auto", None, 5,
             2.0, True, ["a"]]
    for s in [default, "v1", "2026-11-28", "x" * 127, "28x28", "auto"] + list(rule.get("enum", [])):
        if isinstance(s, str):
            cases += [s, s.upper(), s.capitalize(), s + "\n", "\n" + s, " " + s, s + " ", s + "\t", s + "\r",
                      s + "\x00", s + "/", s[:-1] + s[-1:].upper()]
    return cases


def cases(name, rule, default):
    """(value, same_json_type) pairs for a param."""
    if _json_type(rule) in ("integer", "number"):
        return [(v, True) for v in _number_cases(rule) + [default]] + [(v, False) for v in NUMBER_LOOKALIKES]
    return [(v, v is None or isinstance(v, str)) for v in _string_cases(rule, default)]


# --- the two sides ---------------------------------------------------------------------------------

def alone(params, name):
    """``params`` (a ParamsDict) reduced to a copy of param ``name``.

    ``ParamsDict.validate`` resolves each param on its own (airflow/sdk/definitions/param.py), so with the
    other params at their defaults, which :func:`test_the_defaults_validate_on_both_sides` checks, the whole
    dict accepts a value exactly when this one does. Each resolve is a ``jsonschema.validate``, which checks
    the schema against its meta-schema first (~3 ms here): validating one param instead of all of them
    per case is what keeps this module's thousands of cases at a few seconds per param."""
    return type(params)({name: copy.deepcopy(params.get_param(name))})


def trigger_accepts(dag, served, name, value):
    """Whether a run with conf {name: value} is created; the server and the task runner must agree."""
    from airflow.exceptions import ParamValidationError
    try:
        alone(served.params, name).deep_merge({name: value}).validate()
        server = True
    except ParamValidationError:
        server = False
    sdk_params = alone(dag.params, name)
    try:
        sdk_params[name] = value
        sdk_params.validate()
        sdk = True
    except ParamValidationError:
        sdk = False
    assert server == sdk, (name, value, server, sdk)
    return server


_RENDERED = {}


def _render(task, template, ctx, name):
    """Airflow's rendering of one argument; those that do not read param ``name`` are rendered once."""
    if "params." + name in template:
        return task.render_template(template, ctx)
    key = (task.task_id, template)
    if key not in _RENDERED:
        _RENDERED[key] = task.render_template(template, ctx)
    return _RENDERED[key]


def job_reads(dag, context, name, value):
    """{job: the parsed flag, or REFUSED} for every task that reads param ``name``, rendered by Airflow."""
    ctx = dict(context, params=dict(context["params"], **{name: value}))
    got = {}
    for job, arg in READERS[name]:
        task = dag.get_task(job)
        argv = [_render(task, a, ctx, name) for a in task.application_args]
        try:
            got[job] = getattr(jobargs.parse(job, argv), arg.name)
        except SystemExit as e:
            assert e.code == 2
            got[job] = REFUSED
    return got


def expected_value(name, value):
    """What the job should hold for an accepted param value."""
    if name == "dataset_version":
        return value or DS
    if name == "image_shape":
        return None if value == "auto" else tuple(int(v) for v in value.split("x"))
    return value


# --- tests -----------------------------------------------------------------------------------------

def test_every_dag_param_is_a_job_flag_with_the_same_schema(dag, served):
    assert set(dag.params) == set(READERS)
    assert served.params.get_param("data_wait_timeout").schema == dict(jobargs.DATA_WAIT_TIMEOUT, title="Wait for data (seconds)")
    for name, readers in READERS.items():
        schema = dict(served.params.get_param(name).schema)
        schema.pop("title", None)
        for job, arg in readers:
            rule = jobargs.DATASET_VERSION if name == "dataset_version" else arg.schema
            assert schema == rule, (name, job)
            assert dag.get_task(job) is not None


def test_the_defaults_validate_on_both_sides(dag, served):
    """Every param's default is valid in the whole dict, on the server and in the task runner: the premise
    of :func:`alone`."""
    defaults = {name: p.value for name, p in dag.params.items()}
    assert served.params.validate() == defaults
    assert copy.deepcopy(dag.params).validate() == defaults
    assert set(defaults) == set(READERS)


@pytest.mark.parametrize("name", sorted(READERS))
def test_trigger_and_jobs_accept_the_same_values(dag, served, context, name, capsys):
    rule = served.params.get_param(name).schema
    default = dag.params.get_param(name).value
    mismatches, accepted, refused = [], 0, 0
    for value, same_type in cases(name, rule, default):
        at_trigger = trigger_accepts(dag, served, name, value)
        if not same_type:
            if at_trigger:
                mismatches.append(f"{value!r} ({type(value).__name__}) accepted at trigger")
            continue
        for job, got in job_reads(dag, context, name, value).items():
            if at_trigger and got is REFUSED:
                mismatches.append(f"{value!r}: trigger accepts, {job} refuses")
            elif not at_trigger and got is not REFUSED:
                mismatches.append(f"{value!r}: trigger refuses, {job} accepts as {got!r}")
            elif at_trigger:
                want = expected_value(name, value)
                kind = {"integer": int, "number": float}.get(_json_type(rule), type(want))
                if want is None:  # an optional param left empty (jobargs.optional): the job holds None
                    kind = type(None)
                if got != want or type(got) is not kind:
                    mismatches.append(f"{value!r}: {job} reads {got!r}, not {want!r} as {kind.__name__}")
        accepted += at_trigger
        refused += not at_trigger
    capsys.readouterr()  # the parsers' usage messages
    assert not mismatches, f"{name}: " + "; ".join(mismatches)
    assert accepted >= 1 and refused >= 5, (name, accepted, refused)  # the cases reach both sides of the rule


@pytest.mark.parametrize("name, value", [
    ("epochs", 2.0), ("epochs", 1e1), ("cluster_size", 2.0), ("num_shards", 4.0), ("pixel_max", 255.0),
    ("batch_size", 64.0), ("inference_batch_size", 1e2), ("num_ps", 0.0), ("label_column", -1.0),
])
def test_whole_number_floats_run_as_integers(dag, served, context, name, value):
    """JSON schema counts 2.0 as an integer: the trigger accepts it and the job gets the integer."""
    assert trigger_accepts(dag, served, name, value)
    for job, got in job_reads(dag, context, name, value).items():
        assert got == int(value) and type(got) is int, (job, got)


@pytest.mark.parametrize("name, value", [
    ("dataset_version", "v1\n"), ("dataset_version", "x" * 129), ("image_shape", "0x0"), ("epochs", 2.5),
    ("eval_fraction", math.nan), ("learning_rate", 0), ("inference_mode", "TFOS"), ("compression", "gzip\n"),
])
def test_refused_at_trigger_with_the_schemas_message(served, name, value):
    from airflow.exceptions import ParamValidationError
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}: "):
        served.params.deep_merge({name: value}).validate()
