"""JupyterLab in headless Chromium for the browser tests: start the server, drive the page, screenshot.

Everything runs on localhost: a JupyterLab server on a random free port with token auth and no
browser of its own, and Debian's Chromium driven through its ChromeDriver (no browser download).
Screenshots of every step are saved under ``$VLA_RL_BROWSER_ARTIFACTS`` (default
``test-artifacts/browser``).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("VLA_RL_BROWSER_ARTIFACTS", "test-artifacts/browser")).resolve()


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return ("Chromium and ChromeDriver are not installed (Debian: apt-get install chromium chromium-driver); "
                "the JupyterLab browser test needs them")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` on 127.0.0.1, serving ``root`` with a random token."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root, self.port, self.token = Path(root), free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(ARTIFACTS / "jupyterlab.log", "w")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}", "--allow-root",
               "--ServerApp.disable_check_xsrf=False", "--LabApp.news_url=None",
               "--LabServerApp.extension_manager=readonly", "--ServerApp.port_retries=0"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    json.load(r)
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer on {self.url} within 120 s; see {self.log.name}")

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}&reset"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=20)
        except Exception:  # noqa: BLE001
            os.killpg(self.proc.pid, 9)
        self.log.close()


def make_driver(width: int = 1400, height: int = 1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={ARTIFACTS / 'chrome-profile'}-{secrets.token_hex(4)}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    return driver


class Step:
    """A named step of the walk-through: screenshots go to the artifacts folder; a failure names them."""

    def __init__(self, driver, name: str):
        self.driver, self.name, self.shots = driver, name, []

    def shot(self, label: str, element=None, png: bytes | None = None) -> Path:
        """Save ``png`` if given, else a screenshot of ``element`` (the page if it was redrawn meanwhile)."""
        from selenium.common.exceptions import StaleElementReferenceException

        path = ARTIFACTS / f"{self.name}--{len(self.shots):02d}-{label}.png"
        if png is not None:
            path.write_bytes(png)
        elif element is not None:
            try:
                element.screenshot(str(path))
            except StaleElementReferenceException:        # a live output replaced it: take the page
                self.driver.save_screenshot(str(path))
        else:
            self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def fail(self, message: str):
        import pytest

        path = self.shot("failure")
        pytest.fail(f"{self.name}: {message} (screenshot: {path})")

    def check(self, condition: bool, message: str):
        if not condition:
            self.fail(message)


# -- JupyterLab page helpers ---------------------------------------------------------------------------

def open_notebook(driver, server: LabServer, path: str, timeout: float = 120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.lab_url(path))
    WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")))
    wait_kernel_idle(driver, timeout)
    dismiss_popups(driver)


def dismiss_popups(driver) -> None:
    """Close JupyterLab's first-start notifications (news opt-in) so nothing covers the notebook."""
    driver.execute_script("""
        for (const b of document.querySelectorAll('.jp-toast-button, button')) {
            if ((b.textContent || '').trim() === 'No' && b.closest('.Toastify__toast, .jp-Notification-Toast, [class*=toast]')) b.click();
        }
        const files = document.querySelector('.jp-SideBar .lm-TabBar-tab.lm-mod-current[data-id="filebrowser"]');
        if (files) files.click();   // collapse the file browser: more room for the notebook
    """)


def kernel_status(driver) -> str:
    """The status bar's kernel text, e.g. 'Python 3 (ipykernel) | Idle'."""
    return driver.execute_script("""
        const bar = document.querySelector('#jp-main-statusbar');
        return bar ? bar.innerText : '';""") or ""


def wait_kernel_idle(driver, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = kernel_status(driver)
        if "| Idle" in status and not running_cells(driver):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the kernel did not become idle within {timeout:.0f} s (status bar: {kernel_status(driver)!r})")


def running_cells(driver) -> int:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt'))
            .filter(p => p.textContent.includes('*')).length;""")


def run_all(driver) -> None:
    """Run > Run All Cells, through the menu as a person would."""
    from selenium.webdriver.common.by import By

    menus = driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
    run_menu = next(m for m in menus if m.text.strip() == "Run")
    run_menu.click()
    time.sleep(0.3)
    items = driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item[data-command='runmenu:run-all'], "
                                                  ".lm-Menu-item[data-command='notebook:run-all-cells']")
    items[0].click()


def wait_all_done(driver, step: Step, timeout: float) -> None:
    """Wait until every cell has executed (no ``[*]`` prompt left, every code cell numbered)."""
    deadline = time.time() + timeout
    started = False
    while time.time() < deadline:
        busy = running_cells(driver)
        started = started or busy > 0
        if started and busy == 0:
            unexecuted = driver.execute_script("""
                return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt'))
                    .filter(p => !/\\[\\d+\\]/.test(p.textContent)).length;""")
            if unexecuted == 0:
                return
        time.sleep(1)
    step.fail(f"the notebook did not finish within {timeout:.0f} s")


def cell_errors(driver) -> list[str]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] pre, .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"] pre'))
            .map(e => e.textContent.slice(0, 400)).filter(t => /Error|Traceback/.test(t));""")
