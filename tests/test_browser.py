"""Every notebook as a reader runs it: JupyterLab in headless Chromium, "Run All Cells" from the Run
menu in the fresh kernel the notebook opened with, at the smoke settings (the kernel inherits
TAPE_VS_FIT_SMOKE=1). One JupyterLab page opens the notebooks one after the other, each closed
unsaved, its kernel shut down, before the next.

Fails on: a notebook marked modified as soon as it is open (before anything ran), an error
output, output on stderr (e.g. TensorFlow's start-up log lines), a figure-making cell without a
figure, a cell that did not run, or a cell marked ``# NBVAL_CHECK_OUTPUT`` whose outputs differ
from the committed ones as nbval --nbval-lax compares them (this run is the notebooks' run at the
pinned versions; scripts/test_oldest.sh runs them under nbval at the oldest). The first figure of
each notebook is saved as a screenshot under output/browser/.

The server listens on 127.0.0.1 with a random free port and a token; its settings and workspace
folders are throwaway, autosave is off (nothing is written back to notebooks/). Chromium is
Debian's (/usr/bin/chromium; .ci/run installs it), driven by Playwright, which downloads no
browser. Deselect with ``-m "not browser"``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = ROOT / "output" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# A call that draws a figure: plt.subplots(...), plt.figure(...), helpers' plot_...(...).
FIGURE_CALL = re.compile(r"\b(?:plt\.(?:subplots|figure)|plot_\w+)\(")
RUN_TIMEOUT_S = 600  # per notebook, at the smoke settings, on a busy 2-core machine
# JupyterLab user settings (one file per plugin):
SETTINGS = {
    # Nothing is saved: the notebooks under test stay as committed.
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # Attach every cell to the page (the default "full" windowing leaves off-screen cells out).
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # No requests to the internet, no news toast over the menu bar.
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}

# The notebook's state, read from JupyterLab's model (window.jupyterapp, exposed by
# --LabApp.expose_app_in_browser) rather than from the rendered page. STATUS_JS, polled while the
# notebook runs, is small: execution counts and whether an error was output. STATE_JS, read once
# the run is over, holds every cell's source and outputs (figures included).
FIND_PANEL_JS = """
  const app = window.jupyterapp;
  if (!app) return null;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.context?.path === path);
  if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return null;
  const kernel = panel.sessionContext.session?.kernel?.status ?? null;
"""
STATUS_JS = """path => {""" + FIND_PANEL_JS + """
  const counts = [];
  let error = false;
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    counts.push(cell.executionCount);
    for (let i = 0; i < cell.outputs.length; i++) error ||= cell.outputs.get(i).type === 'error';
  }
  return {dirty: panel.context.model.dirty, kernel, counts, error};
}"""
STATE_JS = """path => {""" + FIND_PANEL_JS + """
  const cells = [];
  for (const cell of panel.content.model.cells) {
    cells.push({type: cell.type, source: cell.sharedModel.getSource(),
                count: cell.type === 'code' ? cell.executionCount : null,
                outputs: cell.type === 'code' ? cell.outputs.toJSON() : []});
  }
  return {dirty: panel.context.model.dirty, kernel, cells};
}"""
# Open a notebook in the running JupyterLab (what its /lab/tree/<path> URL does), and close it
# unsaved (disposing the panel asks nothing).
OPEN_JS = "async path => { await window.jupyterapp.commands.execute('docmanager:open', {path}); }"
CLOSE_JS = """path => {
  const app = window.jupyterapp;
  for (const w of Array.from(app.shell.widgets('main'))) if (w.context?.path === path) w.dispose();
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_settings(settings_dir: Path) -> None:
    for plugin, values in SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


def api(base: str, token: str, route: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{route}", method=method,
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group started by `process`, SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # already gone
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, token) of a JupyterLab server on the repository root; stopped afterwards, and
    the checkpoints JupyterLab makes of each notebook it opens removed (unless they were there
    before)."""
    checkpoints = ROOT / "notebooks" / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()
    tmp = tmp_path_factory.mktemp("lab")
    write_settings(tmp / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, TAPE_VS_FIT_SMOKE="1", JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"))
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={ROOT}", "--ServerApp.terminals_enabled=False",
        f"--LabApp.user_settings_dir={tmp / 'settings'}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",  # no PyPI queries
    ]
    if os.geteuid() == 0:  # CI containers run as root, which the server refuses by default
        command.append("--allow-root")
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(base, token, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       + (tmp / "server.log").read_text(errors="replace")) from None
                time.sleep(0.5)
        yield base, token
    finally:
        stop_group(server)  # the server and the kernels it started
        log.close()
        if not had_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium context with a fresh profile; closed afterwards."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM=...)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def wait_for_status(page, path: str, done, what: str, timeout_s: float) -> dict:
    """Poll the notebook's status (STATUS_JS) until done(status); fail naming `what` on
    time-out."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = page.evaluate(STATUS_JS, path)
        if status is not None and done(status):
            return status
        page.wait_for_timeout(500)
    pytest.fail(f"{path}: timed out after {timeout_s:.0f} s waiting for {what}; "
                f"last state: {summary(status)}")


def summary(status) -> str:
    if status is None:
        return "notebook not open"
    return f"kernel {status['kernel']}, execution counts {status['counts']}"


def finished(status) -> bool:
    """Kernel idle and every code cell run (or stopped by an error, checked afterwards)."""
    return status["kernel"] == "idle" and (all(count is not None for count in status["counts"])
                                           or status["error"])


# nbval --nbval-lax compares the outputs of the cells marked so with the committed ones: stream
# text by stream name, and every field of display data and results but images and widget ids
# (nbval/plugin.py: IPyNbFile.__init__'s skip_compare, IPyNbCell.compare_outputs, coalesce_streams).
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"
UNCOMPARED_DATA = ("image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json")


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def compared_outputs(outputs) -> dict[str, list[str]]:
    """What nbval compares of a cell's outputs: each stream's text, all of one name joined (with
    backspaces and bare carriage returns applied, as nbval does), and each data field's values
    in order."""
    fields = defaultdict(list)
    streams = {}
    for output in outputs:
        if output["output_type"] == "stream":
            streams[output["name"]] = streams.get(output["name"], "") + text(output["text"])
        for key, value in output.get("data", {}).items():
            if key not in UNCOMPARED_DATA:
                fields[key].append(text(value))
    for name, stream in streams.items():
        while re.search(r"[^\n]\x08", stream):
            stream = re.sub(r"[^\n]\x08", "", stream)
        fields[f"stream {name}"].append(re.sub(r"^.*\r(?=[^\n])", "", stream, flags=re.MULTILINE))
    return dict(fields)


def problems(state, committed) -> list[str]:
    """What is wrong with a run's `state` (STATE_JS) of the `committed` notebook."""
    found = []
    for index, (cell, stored) in enumerate(zip(state["cells"], committed.cells, strict=True)):
        if cell["type"] != "code":
            continue
        where = f"cell {index} ({cell['source'].strip().splitlines()[0][:60]!r})"
        if CHECK_OUTPUT in cell["source"]:
            ran, expected = compared_outputs(cell["outputs"]), compared_outputs(stored.outputs)
            if ran != expected:
                found.append(f"{where}: outputs differ from the committed ones: {ran} != "
                             f"{expected}")
        for output in cell["outputs"]:
            if output["output_type"] == "error":
                found.append(f"{where}: {output['ename']}: {output['evalue']}")
            elif output["output_type"] == "stream" and output["name"] == "stderr":
                found.append(f"{where}: stderr: {''.join(output['text'])[:300]!r}")
        if cell["count"] is None:
            found.append(f"{where}: did not run")
        if FIGURE_CALL.search(cell["source"]) and not any(
            "image/png" in output.get("data", {}) for output in cell["outputs"]
        ):
            found.append(f"{where}: draws a figure, but shows none")
    return found


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.fixture(scope="module")
def lab_page(lab, browser):
    """One JupyterLab page for every notebook (each opened and closed in it in turn)."""
    base, token = lab
    page = browser.new_page()
    page.bring_to_front()  # the page a reader looks at (hidden pages may defer rendering)
    page.goto(f"{base}/lab?token={token}")
    page.wait_for_function("() => window.jupyterapp?.started !== undefined", timeout=180_000)
    page.evaluate("() => window.jupyterapp.started")
    page.evaluate("() => window.jupyterapp.restored")
    try:
        yield page
    finally:
        page.close()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_run_all_in_jupyterlab(lab, lab_page, notebook):
    base, token = lab
    page = lab_page
    path = notebook.relative_to(ROOT).as_posix()
    committed = notebook.read_bytes()
    try:
        page.evaluate(OPEN_JS, path)
        # Open, with its kernel started and idle: nothing has run, so nothing may have changed.
        wait_for_status(page, path, lambda status: status["kernel"] == "idle",
                        "the notebook to open with an idle kernel", 180)
        page.wait_for_timeout(1000)  # let JupyterLab finish what it does on open
        opened = page.evaluate(STATUS_JS, path)
        assert not opened["dirty"], (
            f"{path} is marked modified right after opening, before anything ran (e.g. metadata "
            "that JupyterLab rewrites, such as the kernelspec's display_name)")

        # Run All in the kernel started on open, which has run nothing: the state of a restarted
        # kernel, without starting a second one.
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
        page.get_by_text("Run All Cells", exact=True).click()
        # Run All clears every cell's execution count when it queues them, so the counts stored
        # in the notebook cannot be mistaken for a finished run.
        wait_for_status(page, path, lambda status: None in status["counts"],
                        "the run to start", 120)
        wait_for_status(page, path, finished, "every cell to run", RUN_TIMEOUT_S)

        state = page.evaluate(STATE_JS, path)
        found = problems(state, nbformat.reads(committed.decode(), as_version=4))
        if any(FIGURE_CALL.search(cell["source"]) for cell in state["cells"]):
            figures = page.locator(".jp-OutputArea-output img").filter(visible=True)
            if figures.count():
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                figures.first.screenshot(path=str(SCREENSHOTS / f"{notebook.stem}.png"))
            else:
                found.append("no figure visible on the page")
        assert not found, f"{path} in JupyterLab:\n" + "\n".join(found)
        assert notebook.read_bytes() == committed, f"{path} was saved (autosave should be off)"
    finally:
        page.keyboard.press("Escape")  # a dialog left open by a failure
        page.evaluate(CLOSE_JS, path)  # drops the unsaved notebook
        # Shut the kernel down, freeing its memory before the next notebook.
        for session in api(base, token, "/api/sessions"):
            api(base, token, f"/api/sessions/{session['id']}", method="DELETE")


def test_compared_outputs_are_what_nbval_lax_compares():
    """Streams of one name compared as one text (JupyterLab merges them, a stored notebook may
    not), images left out, every other field kept: one changed line differs."""
    stored = [nbformat.v4.new_output("stream", text="a\n"),
              nbformat.v4.new_output("stream", text="b\n"),
              nbformat.v4.new_output("display_data", {"image/png": "AAAA", "text/plain": "<Fig>"})]
    ran = [{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
           {"output_type": "display_data", "data": {"image/png": "BBBB", "text/plain": "<Fig>"}}]
    assert compared_outputs(ran) == compared_outputs(stored) == {
        "stream stdout": ["a\nb\n"], "text/plain": ["<Fig>"]}
    ran[0]["text"] = ["a\n", "c\n"]
    assert compared_outputs(ran) != compared_outputs(stored)
