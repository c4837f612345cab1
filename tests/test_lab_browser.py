"""JupyterLab in a real browser, as a user meets it: the server started as ``make lab`` starts it, headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium through /usr/bin/chromedriver: Selenium never fetches a
driver), notebook 02 opened from the file browser's folder and run with Run > Run All Cells from the menu bar. Every
cell must run, at least one figure must show inline, and no cell may show an error.

The notebook draws a recorded run: the test writes one first, with request records in the load generator's schema
(three closed-loop steps of 200 requests), so no model server is needed."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_lab import start_lab

from gawm_lib import config, runs
from gawm_lib.loadgen.records import COLUMNS, schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
NOTEBOOK = "notebooks/02_figures_load_sweep.ipynb"
# Chromium as root in a container with no network but loopback: without the background-networking flags it keeps
# trying Google's hosts; its profile lives in the test's tmp_path.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def write_run(raw_dir: Path, levels=(1, 2, 4), per_step: int = 200, seed: int = 0) -> runs.Run:
    """A COMPLETED run of ResNet50 with request records as the load generator writes them (a parquet dataset of part
    files in its schema): a short warm-up, then closed-loop steps at ``levels`` users of ``per_step`` requests each,
    latency growing with the users as a queue's would."""
    cfg = config.validate_params(
        {
            "name": "browser",
            "workloads": ["resnet50"],
            "prometheus": {"enabled": False},
            "load": {"levels": list(levels), "step_duration_s": 1},
        },
        source="test",
    )
    effective = cfg.model_dump(mode="json")
    run = runs.create_run("browser", effective, effective, raw_dir=raw_dir)
    rng = np.random.default_rng(seed)
    frames, clock = [], 1_000_000_000
    for step, users in [(-1, 1), *enumerate(levels)]:
        n = 20 if step < 0 else per_step
        compute = rng.lognormal(np.log(20e6), 0.2, n).astype(np.int64)  # ~20 ms forward pass
        queue = (compute * (users - 1) * rng.uniform(0.5, 1.0, n)).astype(np.int64)
        latency = compute + queue + 1_000_000
        scheduled = clock + np.cumsum(latency) // users
        done = scheduled + latency
        clock = int(done.max()) + 10_000_000
        frames.append(
            pd.DataFrame(
                {
                    "workload": "resnet50",
                    "phase": "warmup" if step < 0 else "step",
                    "step": step,
                    "level": float(users),
                    "scheduled_ns": scheduled,
                    "sent_ns": scheduled,
                    "first_byte_ns": done - 100_000,
                    "done_ns": done,
                    "status": 200,
                    "error": "",
                    "bytes_out": 150_000,
                    "bytes_in": 400,
                    "items": 1,
                    "batch_size": 1,
                    "server_queue_ns": queue,
                    "server_compute_ns": compute,
                    "server_decode_ns": 2_000_000,
                    "truncated": -1,
                    "replica": "127.0.0.1:8000",
                    "process": 0,
                }
            )
        )
    records = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    run.requests_path.mkdir()
    records.to_parquet(run.requests_path / "resnet50-part-00000.parquet", schema=schema(), index=False)
    run.finish("COMPLETED")
    return run


@pytest.fixture
def browser(tmp_path):
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).is_file():
            pytest.fail(
                f"{program} is missing: install the test system programs (python3 -m gawm_lib.sysdeps "
                "--install --tests, as root)"
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given too, Selenium Manager is never asked
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.25):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout_s`` passes (a failure naming
    ``what``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# What the test changes in JupyterLab, in the user settings of its own config folder: no autosave (a run notebook must
# never be written back into the checkout), no news prompt over the page.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

# The state of the open notebook, read from the page: every code cell's prompt ("[3]:" run, "[*]:" running or
# queued, "[ ]:" never run), the kernel's execution state in the notebook's toolbar and its session in the status bar
# ("Python 3 (ipykernel) | Idle"), inline images that have loaded, error outputs (an exception, or a traceback printed
# to stderr) and whether the document has unsaved changes.
NOTEBOOK_STATE = """
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) return null;
const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
const session = [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent.trim())
  .find(t => / \\| \\w+$/.test(t));
const images = [...panel.querySelectorAll('.jp-OutputArea-output img')];
const errors = [
  ...[...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], '
                                + '.jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
     .map(e => e.textContent),
  ...[...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
     .map(e => e.textContent).filter(t => t.includes('Traceback'))];
const tab = document.querySelector('.lm-TabBar-tab.jp-mod-current');
return {prompts: prompts, kernel: indicator ? indicator.getAttribute('data-status') : null, session: session || '',
        images: images.filter(i => i.complete && i.naturalWidth > 100).length, errors: errors,
        unsaved: !!(tab && tab.classList.contains('jp-mod-dirty'))};
"""


def open_and_run_all(driver, base: str, token: str, notebook: str, timeout_s: float = 300) -> dict:
    """Open JupyterLab where ``make lab`` opens it, open ``notebook`` (a path from the project root) from the file
    browser, run it with Run > Run All Cells and wait until the kernel is idle and every code cell has run or one
    shows an error. Returns the notebook's final state (see NOTEBOOK_STATE), its first figure scrolled into view."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def state() -> dict:
        return driver.execute_script(NOTEBOOK_STATE) or {"prompts": [], "kernel": None, "session": ""}

    driver.get(f"{base}/?token={token}")
    folder, name = notebook.rsplit("/", 1)
    wait_for(lambda: f"/lab/tree/{folder}" in driver.current_url, 30, f"the landing page /lab/tree/{folder}")

    def listed():
        items = driver.find_elements(By.CSS_SELECTOR, f'.jp-DirListing-item[title^="Name: {name}"]')
        return items[0] if items else None

    ActionChains(driver).double_click(wait_for(listed, 60, f"{name} in the file browser")).perform()
    wait_for(
        lambda: state()["session"].endswith("| Idle") and state()["kernel"] == "idle" and state()["prompts"],
        120,
        f"{name} open with its kernel started and idle",
    )

    def run_all() -> bool:
        """Run > Run All Cells, once the menu offers it (it is greyed out until the notebook is the current widget)."""
        bar = [
            e
            for e in driver.find_elements(By.CSS_SELECTOR, "#jp-MainMenu .lm-MenuBar-itemLabel")
            if e.text.strip() == "Run"
        ]
        if not bar:
            return False
        bar[0].click()
        item = [
            e
            for e in driver.find_elements(By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]')
            if "lm-mod-disabled" not in e.get_attribute("class")
        ]
        if not item:
            ActionChains(driver).send_keys(Keys.ESCAPE).perform()
            return False
        assert item[0].text.startswith("Run All Cells"), item[0].text
        item[0].click()
        return True

    wait_for(run_all, 30, "Run > Run All Cells to be offered", poll_s=0.5)
    wait_for(lambda: any(p != "[ ]:" for p in state()["prompts"]), 30, "Run All Cells to start the first cell")

    def finished():  # an error stops Run All: the cells after it are left unrun
        now = state()
        ran = all(p.strip("[]:").isdigit() for p in now["prompts"])
        queued = any("*" in p for p in now["prompts"])
        return now if now["kernel"] == "idle" and not queued and (ran or now["errors"]) else None

    final = wait_for(finished, timeout_s, f"every cell of {notebook} to run")
    figures = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
    if figures:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", figures[0])
    return final


def run_cell_below(driver, code: str, timeout_s: float = 60) -> dict:
    """Add a code cell below the selected one, type ``code`` into it and run it (Shift+Enter), as a user would;
    returns the notebook's state once the kernel is idle again and the cell has run."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = len(driver.execute_script(NOTEBOOK_STATE)["prompts"])
    ActionChains(driver).send_keys(Keys.ESCAPE).send_keys("b").perform()  # command mode, insert below
    wait_for(lambda: len(driver.execute_script(NOTEBOOK_STATE)["prompts"]) == before + 1, 10, "a new cell")
    editor = driver.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-mod-selected .cm-content"
    )[0]
    editor.click()
    ActionChains(driver).send_keys(code).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

    def done():
        now = driver.execute_script(NOTEBOOK_STATE)
        ok = now["kernel"] == "idle" and all(p.strip("[]:").isdigit() for p in now["prompts"][: before + 1])
        return now if ok else None

    return wait_for(done, timeout_s, f"the cell {code!r} to run")


@contextlib.contextmanager
def lab_on_recorded_runs(tmp_path: Path, figures: Path):
    """JupyterLab as ``make lab`` starts it, with the test's settings (LAB_SETTINGS) and the runs of
    ``tmp_path / "raw"``, figures to ``figures``; yields (base URL, token)."""
    for name, settings in LAB_SETTINGS.items():
        path = tmp_path / "cfg" / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {"GAWM_RAW_DIR": str(tmp_path / "raw"), "GAWM_FIGURES_DIR": str(figures)}
    with start_lab(tmp_path, env=env) as (base, token, _):
        yield base, token


def test_notebook_02_run_all_in_jupyterlab_shows_its_figures_inline_and_no_error(tmp_path, browser):
    run, figures = write_run(tmp_path / "raw"), tmp_path / "figures"
    with lab_on_recorded_runs(tmp_path, figures) as (base, token):
        try:
            state = open_and_run_all(browser, base, token, NOTEBOOK)
            browser.save_screenshot(str(tmp_path / "notebook_02.png"))  # the notebook with its first figure in view
            assert state["errors"] == [], "\n\n".join(state["errors"])[-3000:]
            assert state["images"] >= 1, state
            assert list(figures.glob(f"{run.id}_*.png")), sorted(p.name for p in figures.iterdir())  # and saved
            # The error check above can see an error: one more cell that fails shows as one, with its exception.
            failed = run_cell_below(browser, "1 / 0")
            assert len(failed["errors"]) == 1 and "ZeroDivisionError" in failed["errors"][0], failed["errors"]
            assert failed["unsaved"], "the run notebook was saved: it must never be written back into the checkout"
        except BaseException:
            browser.save_screenshot(str(tmp_path / "failure.png"))
            print(f"screenshot of the page: {tmp_path / 'failure.png'}; server log: {tmp_path / 'jupyter.log'}")
            raise


# The other figure notebooks, each run with Run All Cells on the same recorded run (03, 04, 09 read it; 05 and 06 start
# their own small servers with their offline defaults): every one shows its figures inline and no error.
OTHER_NOTEBOOKS = [
    "notebooks/03_analyze_models.ipynb",
    "notebooks/04_capacity_plan.ipynb",
    "notebooks/05_replica_scaling.ipynb",
    "notebooks/06_whisper_audio_duration.ipynb",
    "notebooks/09_thesis_figures.ipynb",
]


@pytest.mark.parametrize("notebook", OTHER_NOTEBOOKS, ids=[Path(n).stem[:2] for n in OTHER_NOTEBOOKS])
def test_each_figure_notebook_run_all_in_jupyterlab_shows_its_figures_inline(tmp_path, browser, notebook):
    write_run(tmp_path / "raw")
    figures = tmp_path / "figures"
    with lab_on_recorded_runs(tmp_path, figures) as (base, token):
        try:
            state = open_and_run_all(browser, base, token, notebook, timeout_s=420)
            assert state["errors"] == [], "\n\n".join(state["errors"])[-3000:]
            assert state["images"] >= 1, state
            assert list(figures.glob("*.png")), "no figure saved"
        except BaseException:
            browser.save_screenshot(str(tmp_path / "failure.png"))
            print(f"screenshot of the page: {tmp_path / 'failure.png'}; server log: {tmp_path / 'jupyter.log'}")
            raise
