"""Browser test: `nbs/explore.ipynb` in JupyterLab (headless, loopback, token) opened in Debian's Chromium through Playwright;
all cells run; the hyperparameter panel, the inference explorer and the run browser must be visible on the page.
Screenshots go to test-artifacts/ (git-ignored)."""
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

try: from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError: PlaywrightTimeout = TimeoutError   # reported by the `chromium` fixture

from conftest import DEBUG_CONFIG, ROOT, cli

CHROMIUM = Path(os.environ.get("CARDIAC_DREAMER_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "command -v chromium || (apt-get update && apt-get install -y chromium)"
ARTIFACTS = ROOT / "test-artifacts"
# JupyterLab settings for a deterministic page: every cell attached to the DOM, no news/update checks (no network)
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url, token, method="GET"):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r: return r.status


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: the browser test drives Debian's Chromium (no browser download). "
                    f"Install it with: {INSTALL}   (make test runs this first)")
    try: import playwright.sync_api  # noqa: F401
    except ImportError: pytest.fail("the Python package 'playwright' is missing: run make install")
    return CHROMIUM


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, its Jupyter/IPython state in a temp folder; shut down after the test."""
    base = tmp_path_factory.mktemp("lab")
    nbdir = base / "notebooks"; nbdir.mkdir()
    for rel, body in LAB_SETTINGS.items():
        p = base / "config" / "lab" / "user-settings" / rel
        p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(body))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "IPYTHONDIR": str(base / "ipython"), "PYTHONUNBUFFERED": "1"}
    token, port = secrets.token_hex(16), _free_port()
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
                             "--allow-root"], cwd=nbdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    yield dict(url=url, token=token, nbdir=nbdir, proc=proc, log=base / "lab.log")
    try: _api(f"{url}/api/shutdown", token, "POST")
    except (OSError, urllib.error.URLError): pass
    try: proc.wait(timeout=30)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    log.close()


def _wait_ready(lab, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert lab["proc"].poll() is None, "JupyterLab exited:\n" + lab["log"].read_text()[-3000:]
        try:
            if _api(f"{lab['url']}/api/status", lab["token"]) == 200: return
        except (OSError, urllib.error.URLError): pass
        time.sleep(0.5)
    raise AssertionError("JupyterLab did not start:\n" + lab["log"].read_text()[-3000:])


def _explore_notebook(dest: Path, outputs: Path, data: Path):
    """The repository's explore.ipynb with its parameters pointed at the temp outputs and data (injected after the
    `parameters` cell, as papermill does)."""
    nb = nbformat.read(ROOT / "nbs" / "explore.ipynb", as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    params = dict(config_path=str(DEBUG_CONFIG), outputs_dir=str(outputs), data_dir=str(data))
    cell = nbformat.v4.new_code_cell("# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    nbformat.write(nb, dest)


def _accept_kernel_dialog(page):
    """JupyterLab may ask which kernel to start ("Select Kernel"): take the preselected one (the notebook's python3)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and "Kernel" in dialog.first.inner_text(): dialog.locator(".jp-mod-accept").first.click()


def _wait_kernel_idle(page, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _accept_kernel_dialog(page)
        if page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() and not page.locator(".jp-Dialog").count():
            return
        time.sleep(1)
    raise AssertionError("the notebook's kernel did not become idle")


def _run_all_cells(page, tries=3):
    """Run > Run All Cells once the kernel is idle; clicked again if JupyterLab dropped it (kernel not connected yet)."""
    started = "() => [...document.querySelectorAll('.jp-InputArea-prompt')].some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"
    for _ in range(tries):
        _wait_kernel_idle(page)
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).first.click()
        try: page.wait_for_function(started, timeout=20_000); return
        except PlaywrightTimeout: page.keyboard.press("Escape")
    raise AssertionError("JupyterLab did not start running the cells")


def _fit_tiny_run(data: Path, outputs: Path) -> subprocess.Popen:
    """`cardiac-dreamer fit`, 1 epoch of the debug config: a finished tiny run for the explorer and the browser (started
    in the background: it trains while JupyterLab, Chromium and the kernel start)."""
    return subprocess.Popen([sys.executable, "-m", "cardiac_dreamer", "fit", "--config", str(DEBUG_CONFIG), "--data_dir", str(data),
                             "--output_dir", str(outputs), "--set", "training.max_epochs=1", "--no_progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_explore_notebook_in_jupyterlab(chromium, lab, tiny_phantom, tmp_path):
    from playwright.sync_api import sync_playwright
    outputs = tmp_path / "outputs"
    fit = _fit_tiny_run(tiny_phantom, outputs)
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("explore*.png"): old.unlink()
    _explore_notebook(lab["nbdir"] / "explore.ipynb", outputs, tiny_phantom)
    try:
        _wait_ready(lab)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 3400})   # tall: the whole notebook in one screenshot
            try:
                page.goto(f"{lab['url']}/lab/tree/explore.ipynb?token={lab['token']}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                _wait_kernel_idle(page)
                out, _ = fit.communicate(timeout=600)
                assert fit.returncode == 0, out[-4000:]
                run = next(outputs.glob("run_*"))
                assert (run / "final_model.ckpt").is_file() and json.loads((run / "status.json").read_text())["state"] == "finished"
                _run_all_cells(page)
                _check_widgets(page, run)
                page.screenshot(path=str(ARTIFACTS / "explore.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "explore_failure.png"))
                raise
            finally:
                browser.close()
    finally:
        if fit.poll() is None: fit.kill(); fit.wait()
    assert (ARTIFACTS / "explore.png").stat().st_size > 10_000


def _check_widgets(page, run: Path):
    """All cells ran without an error; the panel, the explorer and the run browser are visible with their content."""
    panel, explorer, runs = (page.locator(c) for c in (".cd-hyperparameter-panel", ".cd-inference-explorer", ".cd-run-browser"))
    runs.wait_for(state="attached", timeout=240_000)
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputArea-prompt')].some(e => e.textContent.includes('*'))",
                           timeout=120_000)
    errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.all_inner_texts()
    # the hyperparameter panel: tabs, controls, buttons
    panel.scroll_into_view_if_needed(); panel.wait_for(state="visible", timeout=30_000)
    text = panel.inner_text()
    for s in ("Hyperparameter panel", "Model", "Loss", "Training", "Data", "Run training", "Save YAML", "token_type", "d_model"):
        assert s in text, (s, text[:2000])
    assert panel.locator("button:has-text('Run training')").is_enabled()
    # the inference explorer: the run's checkpoint, the sketch and the action table with units
    explorer.scroll_into_view_if_needed(); explorer.wait_for(state="visible")
    text = explorer.inner_text()
    assert "Inference explorer" in text and "translation error" in text and "pitch" in text and "deg" in text, text[:2000]
    assert explorer.locator("select").first.evaluate("e => e.options[e.selectedIndex].text") == f"{run.name}/final_model.ckpt"
    img = explorer.locator("img").first
    img.wait_for(state="visible")
    assert img.evaluate("e => e.naturalWidth") > 100
    # the run browser: the finished run in the table; selecting it in the page overlays its validation curve
    runs.scroll_into_view_if_needed(); runs.wait_for(state="visible")
    text = runs.inner_text()
    assert "Run browser" in text and run.name in text and "finished" in text, text[:2000]
    runs.locator("select[multiple]").select_option(run.name)
    runs.locator("img").first.wait_for(state="visible", timeout=60_000)
    assert runs.locator("img").first.evaluate("e => e.naturalWidth") > 100
