"""JupyterLab itself, in a real headless Chromium, running notebooks whose kernel is a kernelserver
namespace: `jupyter lab --gateway-url=<kernelserver>`, driven through its menus and keys as a user would.

Nothing is mocked: a real `kernelserver serve`, a real `jupyter lab` (the jupyterlab package, its
prebuilt front end), Debian's chromium and chromedriver, all on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, free_port, wait_until

# JupyterLab's first page load on a busy machine takes tens of seconds (a 10 MB bundle, then a
# kernel started through the gateway); the module's first test also waits for `jupyter lab` itself.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
except ImportError:  # pragma: no cover - the test extra installs them
    webdriver = None

if webdriver is None or not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("needs selenium and a Chromium with its chromedriver "
                "(apt-get install chromium chromium-driver; .ci/run installs them)",
                allow_module_level=True)
if importlib.util.find_spec("jupyterlab") is None:
    pytest.skip("needs jupyterlab (pip install -e '.[test]')", allow_module_level=True)

# As tests/test_console.py: Chromium's own background traffic stays off, loopback only.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--no-first-run", "--disable-default-apps", "--window-size=1400,1000"]
WAIT = 90.0  # generous for that reason; every wait still ends at a condition
LAB_TOKEN = "lab-token-0123456789"
# Keeps every dialog JupyterLab opens, so a dialog that came and went is still seen (its text is
# read when asked: at the first mutation a dialog may not have its title yet).
WATCH_DIALOGS = """
window.kernelserverDialogs = [];
new MutationObserver(() => {
  for (const dialog of document.querySelectorAll('.jp-Dialog')) {
    if (!window.kernelserverDialogs.includes(dialog)) window.kernelserverDialogs.push(dialog);
  }
}).observe(document.body, {childList: true, subtree: true});
"""


@dataclass
class Lab:
    """A running `jupyter lab` whose kernels live in kernelserver."""

    url: str
    root: Path
    log: Path


@pytest.fixture(scope="module")
def lab(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`jupyter lab --gateway-url` on 127.0.0.1 with a fresh root, config, data and runtime dir,
    so nothing of the user's Jupyter setup is read; stopped at the end of the module."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "root"
    root.mkdir()
    # The announcements plugin asks, in a popup, whether to fetch news from the internet.
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    port = free_port()
    log = home / "jupyterlab.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", f"--gateway-url={server.url}",
             f"--GatewayClient.auth_token={server.token}", "--no-browser", f"--port={port}",
             f"--IdentityProvider.token={LAB_TOKEN}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly"],
            env=env, stdout=handle, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/api", timeout=1).ok
            except requests.RequestException:
                return proc.poll() is not None

        try:
            assert wait_until(up, WAIT, 0.2) and proc.poll() is None, log.read_text()[-4000:]
            yield Lab(url, root, log)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:  # pragma: no cover - an installed but broken browser
        pytest.fail(f"Chromium did not start: {exc.msg}")
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()


def wait_for(predicate: Callable[[], Any], what: str, state: Callable[[], Any] = lambda: "",
             timeout: float = WAIT) -> None:
    """Poll predicate (page errors count as not yet) until true; else fail saying what and state()."""
    def safe() -> bool:
        try:
            return bool(predicate())
        except WebDriverException:
            return False
    if not wait_until(safe, timeout, 0.1):
        try:
            shown = state()
        except WebDriverException as exc:
            shown = f"(state unreadable: {exc.msg})"
        pytest.fail(f"JupyterLab did not get there in {timeout:.0f}s: {what}\n{shown}")


def write_notebook(lab: Lab, name: str, *sources: str) -> str:
    """A notebook (nbformat 4.5) of code cells in lab's root, its kernel the gateway's python3;
    its file name."""
    cells = [{"cell_type": "code", "id": f"cell-{index}", "metadata": {}, "source": source,
              "outputs": [], "execution_count": None} for index, source in enumerate(sources)]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (lab.root / name).write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": cells,
                                             "metadata": {"kernelspec": kernelspec}}))
    return name


def kernel_status(driver: WebDriver) -> str:
    """The status bar's kernel item, as 'Python 3.x (kernelserver) | Idle'."""
    items = driver.find_elements(By.CSS_SELECTOR, '.jp-StatusBar-TextItem[title^="Change kernel"]')
    return items[0].text if items else ""


def dialogs(driver: WebDriver) -> list[str]:
    """The text of every dialog opened since the notebook was opened."""
    seen: list[str] = driver.execute_script(
        "return (window.kernelserverDialogs || []).map(dialog => dialog.textContent)")
    return seen


def open_notebook(driver: WebDriver, lab: Lab, name: str) -> None:
    """Open name in its own workspace, pick the kernel if JupyterLab asks, wait for it to be idle."""
    driver.get(f"{lab.url}/lab/workspaces/{name.split('.')[0]}/tree/{name}?token={LAB_TOKEN}")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"),
             f"{name} opened", lambda: driver.title)
    driver.execute_script(WATCH_DIALOGS)

    def kernel_ready() -> bool:
        for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
            if "Select Kernel" in dialog.text:
                dialog.find_element(By.CSS_SELECTOR, ".jp-Dialog-button.jp-mod-accept").click()
        return kernel_status(driver).endswith("| Idle")

    wait_for(kernel_ready, "the notebook's kernel started and idle", lambda: kernel_status(driver))
    assert "kernelserver" in kernel_status(driver)


def menu(driver: WebDriver, label: str, command: str) -> None:
    """Click the menu bar's label, then its item that runs command (JupyterLab's command id)."""
    driver.find_element(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][.//div[contains("
                        f"@class, 'lm-MenuBar-itemLabel') and normalize-space()='{label}']]").click()
    item = f'.lm-Menu-item[data-command="{command}"]'
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, item).is_displayed(), f"{label} > {command}")
    driver.find_element(By.CSS_SELECTOR, item).click()


def code_cells(driver: WebDriver) -> list[WebElement]:
    """The open notebook's code cells, in order."""
    return driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")


def outputs(driver: WebDriver) -> list[str]:
    """Each code cell's output area, as text."""
    return [cell.find_element(By.CSS_SELECTOR, ".jp-Cell-outputArea").text for cell in code_cells(driver)]


def new_cell(driver: WebDriver, code: str) -> WebElement:
    """Add a cell at the end ("Click to add a cell."), type code into its editor; the editor."""
    before = len(code_cells(driver))
    driver.find_element(By.CSS_SELECTOR, ".jp-Notebook-footer").click()
    wait_for(lambda: len(code_cells(driver)) == before + 1, "a new cell at the end")
    editor = code_cells(driver)[-1].find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    editor.send_keys(code)
    wait_for(lambda: code in editor.text, f"{code!r} typed", lambda: editor.text)
    return editor


def test_jupyterlab_runs_a_notebook_of_ipython_cells(lab: Lab, browser: WebDriver) -> None:
    name = write_notebook(lab, "ipython_cells.ipynb", "!echo hello-from-shell",
                          "%timeit -n 1 -r 1 sum(range(10))",
                          'from IPython.display import display, Markdown\ndisplay(Markdown("**bold-md**"))')
    open_notebook(browser, lab, name)
    menu(browser, "Run", "runmenu:run-all")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedMarkdown strong"),
             "the last cell's markdown rendered", lambda: outputs(browser))
    shell, timeit, markdown = outputs(browser)
    assert shell == "hello-from-shell"
    assert "per loop" in timeit and "1 run, 1 loop each" in timeit, timeit
    strong = browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedMarkdown strong")
    assert [element.text for element in strong] == ["bold-md"]
    assert markdown == "bold-md"  # rendered, not the source's asterisks
    prompts = [cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text for cell in code_cells(browser)]
    assert prompts == ["[1]:", "[2]:", "[3]:"]
    assert dialogs(browser) == []


def worker_pid(server: LiveServer, lab: Lab, name: str) -> int:
    """The pid of the kernelserver worker that runs notebook name's kernel (0 while it has none)."""
    sessions = requests.get(lab.url + "/api/sessions", headers={"Authorization": f"token {LAB_TOKEN}"},
                            timeout=10).json()
    kernel_id = next(s["kernel"]["id"] for s in sessions if s["path"] == name)
    info = requests.post(server.url + "/env/get", json={"id": kernel_id}, headers=server.headers,
                         timeout=10).json()
    return int(info.get("pid") or 0)


def test_jupyterlab_restarts_the_kernel_without_saying_it_died(server: LiveServer, lab: Lab,
                                                               browser: WebDriver) -> None:
    name = write_notebook(lab, "restart.ipynb", "before_restart = 1\nprint('ran', before_restart)")
    open_notebook(browser, lab, name)
    menu(browser, "Run", "runmenu:run-all")
    wait_for(lambda: outputs(browser) == ["ran 1"], "the first cell ran", lambda: outputs(browser))
    before = worker_pid(server, lab, name)
    menu(browser, "Kernel", "kernelmenu:restart")
    wait_for(lambda: "Restart Kernel?" in browser.find_element(By.CSS_SELECTOR, ".jp-Dialog").text,
             "JupyterLab asked to confirm the restart")
    browser.find_element(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()
    # Over when the namespace has a new worker and JupyterLab, reconnected, shows the kernel idle.
    wait_for(lambda: worker_pid(server, lab, name) not in (0, before), "the namespace has a new worker")
    wait_for(lambda: kernel_status(browser).endswith("| Idle"), "the restarted kernel idle",
             lambda: kernel_status(browser))
    died = [text for text in dialogs(browser) if "appears to have died" in text]
    assert died == [], f"a requested restart showed JupyterLab's dead-kernel dialog: {died}"
    assert [text for text in dialogs(browser) if "Do you want to restart the kernel" not in text] == []
    # The restarted kernel runs a cell, in an emptied namespace.
    editor = new_cell(browser, "print('after restart', 'before_restart' in globals())")
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    wait_for(lambda: outputs(browser)[1] == "after restart False", "a cell ran in the restarted kernel",
             lambda: outputs(browser))
    assert len(dialogs(browser)) == 1  # the confirmation, nothing since


def test_jupyterlab_shows_the_tooltip_of_len(lab: Lab, browser: WebDriver) -> None:
    name = write_notebook(lab, "tooltip.ipynb", "")
    open_notebook(browser, lab, name)
    editor = new_cell(browser, "len(")
    editor.send_keys(Keys.SHIFT, Keys.TAB)

    def tooltip() -> str:
        shown = browser.find_elements(By.CSS_SELECTOR, ".jp-Tooltip")
        return shown[0].text if shown else ""

    wait_for(lambda: "len" in tooltip() or "Return the number of items" in tooltip(),
             "Shift+Tab after `len(` showed len's tooltip", tooltip, timeout=30)
