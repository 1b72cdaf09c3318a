"""Playwright (sync API) helpers that drive the Airflow 3 UI like a user: sign in, trigger the DAG
through its params form, check that invalid params are refused, screenshot the grid.

What the trigger dialog does (Airflow 3.3), and so what these helpers rely on:

* It has an "Unpause <dag> on trigger" checkbox, ticked by default for a paused DAG: the helpers
  untick it, so a test never unpauses the DAG by accident.
* "Run Parameters" lists one field per param, labelled with the param's ``title`` or else its name
  (``dataset_version`` is "Dataset version"): a textbox for a string, a spinbutton for a number, a
  drop-down (combobox) for an enum. "Advanced Options" (run id, note, conf JSON editor) is left closed.
* The only client-side check is "required": a param whose type does not allow null is required, and
  an empty value ("") disables the Trigger button and shows "This field is required". Patterns,
  enums and bounds are checked by the API server, whose 400 the dialog shows in its error alert.
* A spinbutton clamps a number outside the schema's top-level [minimum, maximum] to the bound when it
  loses focus, with no error (epochs 0 would become 1). The pipeline's params keep their bounds under
  ``allOf`` (jobargs.integer, jobargs.number), so the field takes any number and the API server refuses one
  out of range, in one sentence naming the range (the tfos_ui plugin's middleware). Should a field clamp
  again, :func:`_fill` fails loudly rather than trigger with the changed value.

The REST calls made here authenticate with the session's ``_token`` cookie that the login sets.
"""

import contextlib
import re
import urllib.parse

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"  # the system Chromium: no browser download
TIMEOUT_MS = 30_000


@contextlib.contextmanager
def browser(headless=True, width=1600, height=1000):
    """A fresh headless Chromium page (``width`` x ``height``, 30 s timeouts); the browser is closed on exit."""
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=headless)
        try:
            context = chromium.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            chromium.close()


def login(page, url, user, password):
    """Sign in through the login form and wait for the UI home page."""
    page.goto(f"{url}/auth/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    home = page.get_by_role("heading", name="Welcome")
    refused = page.get_by_text(re.compile(r"\b40[13] (Unauthorized|Forbidden)"))
    home.or_(refused).first.wait_for()
    if not home.is_visible():
        raise AssertionError(f"login refused: {refused.first.inner_text()}")


def api(page, url, path, method="GET"):
    """A REST call (``/api/v2`` + ``path``) as the signed-in user; returns the JSON body, if any."""
    response = page.request.fetch(f"{url}/api/v2{path}", method=method)
    if not response.ok:
        raise AssertionError(f"{method} {path}: {response.status} {response.text()[:500]}")
    return response.json() if response.body() else None


def delete_run(page, url, dag_id, run_id):
    api(page, url, f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}", "DELETE")


def _runs(page, url, dag_id):
    """run_id -> conf of the DAG's 100 newest runs."""
    runs = api(page, url, f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit=100")["dag_runs"]
    return {r["dag_run_id"]: r["conf"] or {} for r in runs}


def _open_trigger_form(page, url, dag_id):
    """Open the DAG's Trigger dialog with "unpause on trigger" unticked; returns the dialog."""
    page.goto(f"{url}/dags/{dag_id}")
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("trigger-dag-submit").wait_for()  # rendered once the DAG's params are loaded
    unpause = dialog.get_by_role("checkbox", name=re.compile(r"^Unpause .* on trigger$"))
    if unpause.count() and unpause.is_checked():
        # The styled box covers the hidden input: click the visible label text instead.
        dialog.get_by_text(re.compile(r"^Unpause .* on trigger$")).click()
        assert not unpause.is_checked(), "could not untick 'Unpause on trigger'"
    return dialog


def _fill(page, dialog, label, value):
    """Enter ``value`` in the field labelled ``label``. Returns None, or the form's objection when it
    has no such option. Raises AssertionError when the form silently rewrites the value."""
    field = dialog.get_by_role("group").filter(
        has=page.locator("label", has_text=re.compile(rf"^{re.escape(label)}\s*\*?$")))
    field.wait_for()  # before count(): count() does not wait for the form to render
    text = str(value)
    if field.get_by_role("combobox").count():  # enum: a searchable drop-down
        field.get_by_role("combobox").fill(text)
        option = page.get_by_role("option", name=text, exact=True)
        if not option.count():
            objection = page.get_by_role("listbox").inner_text().strip()
            field.get_by_role("combobox").fill("")  # close the menu (Escape would close the dialog)
            return f"{label}: {objection}"
        option.click()
        field.get_by_text(text, exact=True).first.wait_for()
        return None
    box = field.get_by_role("spinbutton")
    if box.count():  # number: clamped to the schema's bounds on blur
        box.fill(text)
        box.blur()
        shown = box.input_value().replace(",", "")
        if float(shown) != float(value):
            raise AssertionError(
                f"the form changed {label} from {text!r} to {shown!r} without an error (clamped to the "
                "param's bounds); it would trigger with that value, not refuse it")
        return None
    box = field.get_by_role("textbox")
    if not text:
        box.fill(" ")  # an untouched empty field shows no error: edit it, as a user clearing it would
    box.fill(text)
    box.blur()
    assert box.input_value() == text, f"{label}: the form shows {box.input_value()!r}, not {text!r}"
    return None


def _fill_form(page, url, dag_id, dialog, values):
    """Fill the params form; ``values`` is keyed by param name (its label is its title, else its name).
    Returns the form's objections (a drop-down without the value)."""
    params = api(page, url, f"/dags/{dag_id}/details")["params"] or {}
    section = dialog.get_by_role("button", name="Run Parameters")
    if values and section.get_attribute("aria-expanded") == "false":
        section.click()
    objections = []
    for name, value in values.items():
        label = (params.get(name, {}).get("schema") or {}).get("title") or name
        objection = _fill(page, dialog, label, value)
        if objection:
            objections.append(objection)
    return objections


def _submit(page, dialog):
    """Click Trigger; returns the API's response to the dialog's POST .../dagRuns."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as info:
        dialog.get_by_test_id("trigger-dag-submit").click()
    return info.value


def trigger(page, url, dag_id, values):
    """Trigger ``dag_id`` through the UI with the params in ``values`` (by param name).

    Returns the new run's run_id, or None when no run was created (the Trigger button stayed
    disabled, or the API refused the params). The DAG stays paused."""
    dialog = _open_trigger_form(page, url, dag_id)
    objections = _fill_form(page, url, dag_id, dialog, values)
    assert not objections, f"the form would not take {values}: {objections}"
    submit = dialog.get_by_test_id("trigger-dag-submit")
    if not submit.is_enabled():
        return None
    response = _submit(page, dialog)
    if not response.ok:
        dialog.get_by_test_id("error-alert").wait_for()
        return None
    run_id = response.json()["dag_run_id"]
    dialog.wait_for(state="hidden")  # the UI then shows the new run's page
    assert run_id in _runs(page, url, dag_id), f"{run_id} is not listed by the REST API"
    return run_id


def refused(page, url, dag_id, values):
    """Assert that the UI refuses to trigger ``dag_id`` with ``values`` and that no run was created
    (checked through the REST API); returns the error text the UI shows.

    The refusal is either in the form (an empty required field: "This field is required" and a
    disabled Trigger button; an enum value the drop-down does not offer: "No options"), or from the
    API server (pattern, enum and bound violations: "400 Bad Request" and the jsonschema message
    in the dialog's error alert)."""
    before = set(_runs(page, url, dag_id))
    dialog = _open_trigger_form(page, url, dag_id)
    objections = _fill_form(page, url, dag_id, dialog, values)
    submit = dialog.get_by_test_id("trigger-dag-submit")
    if objections:
        error = "\n".join(objections)  # nothing to submit: the value cannot even be entered
    elif not submit.is_enabled():
        errors = dialog.locator('[data-part="error-text"]')  # the fields' error messages
        error = "\n".join(t.strip() for t in errors.all_inner_texts() if t.strip())
    else:
        response = _submit(page, dialog)
        if response.ok:
            run_id = response.json()["dag_run_id"]
            delete_run(page, url, dag_id, run_id)
            raise AssertionError(f"the UI triggered {run_id} with {values} (run deleted)")
        alert = dialog.get_by_test_id("error-alert")
        alert.wait_for()
        error = alert.inner_text().strip()
    assert error, f"the UI refused {values} without showing an error"
    # No run with these values appeared (other runs may come and go: match on the conf).
    new = {run_id: conf for run_id, conf in _runs(page, url, dag_id).items() if run_id not in before}
    mine = [r for r, conf in new.items() if all(str(conf.get(k)) == str(v) for k, v in values.items())]
    assert not mine, f"refused {values}, but the REST API lists {mine}"
    return error


def screenshot_grid(page, url, dag_id, path):
    """Open the DAG's grid view and save a full-page PNG screenshot to ``path``."""
    page.goto(f"{url}/dags/{dag_id}")
    page.get_by_role("button", name=re.compile(r"^Show Grid")).click()
    # Grid rows have the test id task-<task_id> (task-state-badge is a badge elsewhere).
    page.get_by_test_id(re.compile(r"^task-(?!state-badge$)")).first.wait_for()
    with contextlib.suppress(PlaywrightTimeout):  # the UI polls while runs are active
        page.wait_for_load_state("networkidle", timeout=10_000)
    page.screenshot(path=str(path), full_page=True)


def page_width(page, url):
    """Open ``url`` and return how wide its page is (the document's scroll width, in CSS pixels)."""
    page.goto(url)
    page.wait_for_load_state("load")
    return page.evaluate("document.documentElement.scrollWidth")


def extra_link(page, url, dag_id, run_id, task_id, name):
    """The task instance's extra link ``name`` as the UI renders it on the instance's Details tab (under
    "Extra Links"): (href, target)."""
    page.goto(f"{url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}/tasks/{task_id}/details")
    link = page.get_by_role("link", name=name, exact=True)
    link.first.wait_for()
    return link.first.get_attribute("href"), link.first.get_attribute("target")


def run_tab(page, url, dag_id, run_id, name, expect):
    """Open the DAG run's page, click its tab ``name`` (a plugin's external view, which the UI shows in an
    iframe titled ``name``), wait until the iframe shows ``expect``, and return (the iframe's text, the
    page's scroll width in CSS pixels)."""
    page.goto(f"{url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}")
    tab = page.get_by_role("tab", name=name)
    (tab if tab.count() else page.get_by_text(name, exact=True)).first.click()
    body = page.frame_locator(f"iframe[title='{name}']").locator("body")
    body.get_by_text(expect).first.wait_for(timeout=60000)
    return body.inner_text(), page.evaluate("document.documentElement.scrollWidth")
