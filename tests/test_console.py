"""The web console in a real headless Chromium (Selenium + Debian's chromium and chromedriver).

The server is a real `kernelserver serve` that generates its token; the browser opens the URL
the server printed, as a user would.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, start_server, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.select import Select
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

if webdriver is None or not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("needs selenium and a Chromium with its chromedriver "
                "(apt-get install chromium chromium-driver; .ci/run installs them)",
                allow_module_level=True)

# Chromium's own background traffic (updates, sync, safe browsing) stays off: loopback only.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--no-first-run", "--disable-default-apps", "--window-size=1280,860"]
WAIT = 20.0
CONTROLS = ("ns", "run", "interrupt", "restart")  # the header's, for a signed-in page only


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server that made its own token, as `kernelserver serve` run by hand does, with two
    kernels besides its own: the same Python by another name, and one whose Python is missing."""
    tmp = tmp_path_factory.mktemp("console")
    kernels = f"second={sys.executable},broken={tmp / 'no-such-python'}"
    live = start_server(tmp, token="", env={"KERNELSERVER_KERNELS": kernels})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def printed_url(server: LiveServer) -> str:
    """The console URL the server printed at start."""
    found = re.search(r"^console: (\S+)$", server.output(), re.M)
    assert found, server.output()
    return found.group(1)


@pytest.fixture(scope="module")
def api(server: LiveServer, printed_url: str) -> Iterator[requests.Session]:
    """The server's API with the token it printed, to check what the console did."""
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + printed_url.split("#token=")[1]
    yield session
    session.close()


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


@pytest.fixture
def page(browser: WebDriver, printed_url: str) -> WebDriver:
    """The console, logged in through the printed URL, on namespace default."""
    browser.get(printed_url.split("#")[0])
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get(printed_url)
    wait_for(lambda: browser.find_element(By.ID, "app").is_displayed())
    return browser


def wait_for(predicate: Any, timeout: float = WAIT) -> None:
    assert wait_until(lambda: _safe(predicate), timeout, 0.05), "the page did not get there in time"


def _safe(predicate: Any) -> bool:
    try:
        return bool(predicate())
    except WebDriverException:
        return False


def run_cell(driver: WebDriver, code: str) -> WebElement:
    """Type code into the editor as a user would, Shift+Enter, and give back the new cell."""
    before = len(driver.find_elements(By.CSS_SELECTOR, "#cells .cell"))
    editor = driver.find_element(By.ID, "editor")
    editor.click()
    # Lines one by one: the editor indents after a colon itself, as a code editor does.
    lines = code.split("\n")
    for index, line in enumerate(lines):
        editor.send_keys(line.lstrip() if index else line)
        if index < len(lines) - 1:
            editor.send_keys(Keys.ENTER)
            given = indent(line) + (4 if line.rstrip().endswith(":") else 0)
            wanted = indent(lines[index + 1])
            editor.send_keys(Keys.BACKSPACE * (given - wanted) if given > wanted
                             else " " * (wanted - given))
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#cells .cell")) > before)
    return driver.find_elements(By.CSS_SELECTOR, "#cells .cell")[-1]


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def finished(cell: WebElement) -> bool:
    return cell.get_attribute("data-status") is not None


def prompt(cell: WebElement) -> str:
    return cell.find_element(By.CLASS_NAME, "prompt").text


def test_the_printed_url_opens_a_working_console(browser: WebDriver, printed_url: str,
                                                 server: LiveServer) -> None:
    assert printed_url.startswith(server.url + "/#token=")
    browser.get(printed_url)
    wait_for(lambda: browser.find_element(By.ID, "app").is_displayed())
    # The token left the address bar for this tab's storage; the editor has the keyboard.
    assert "token" not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('kernelserver.token')") \
        == printed_url.split("#token=")[1]
    assert browser.switch_to.active_element.get_attribute("id") == "editor"
    assert all(browser.find_element(By.ID, name).is_displayed() for name in CONTROLS)
    cell = run_cell(browser, "print('hello from the console')\n6 * 7")
    wait_for(lambda: finished(cell))
    assert "hello from the console" in cell.find_element(By.CSS_SELECTOR, ".out pre.stdout").text
    assert cell.find_element(By.CSS_SELECTOR, ".out .result pre").text == "42"
    assert re.fullmatch(r"\[\d+\]", prompt(cell))
    assert cell.get_attribute("data-status") == "ok"


def test_the_page_is_locked_down(server: LiveServer) -> None:
    answer = requests.get(server.url + "/", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp
    assert not any(h.lower().startswith("access-control") for h in answer.headers)
    # The page holds no data: no token, no namespace, nothing but the app.
    assert server.token == "" and "token=" not in answer.text.split("placeholder")[0]
    # Everything it calls still needs the token.
    assert requests.get(server.url + "/env/list", timeout=10).status_code == 401
    # POST / is still the execute route.
    assert requests.post(server.url + "/", data={"code": "1+1"}, timeout=10).status_code == 401


def test_a_plot_appears_as_an_image(page: WebDriver) -> None:
    cell = run_cell(page, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])")
    wait_for(lambda: finished(cell))
    image = cell.find_element(By.CSS_SELECTOR, ".out .display img")
    assert image.get_attribute("src").startswith("data:image/png;base64,iVBOR")
    wait_for(lambda: page.execute_script("return arguments[0].naturalWidth", image) > 100)


def test_output_arrives_live(page: WebDriver) -> None:
    cell = run_cell(page, "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n"
                          "    time.sleep(1)")
    seen: dict[str, float] = {}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not finished(cell):
        text = cell.find_element(By.CLASS_NAME, "out").text
        for tick in ("tick 0", "tick 3"):
            if tick in text and tick not in seen:
                seen[tick] = time.monotonic()
                if tick == "tick 0":
                    assert prompt(cell) == "[*]"  # still running when the first line shows
        time.sleep(0.05)  # the step of a deadline-bound watch that times when each line shows
    assert finished(cell) and set(seen) == {"tick 0", "tick 3"}, cell.text
    assert seen["tick 3"] - seen["tick 0"] > 2.0, seen


def test_a_progress_bar_is_one_line_that_moves(page: WebDriver) -> None:
    cell = run_cell(page, "from tqdm import tqdm\nimport time\nfor i in tqdm(range(5), ascii=True):\n"
                          "    time.sleep(0.3)")
    wait_for(lambda: finished(cell))
    text = cell.find_element(By.CSS_SELECTOR, ".out pre.stderr").text
    bars = [line for line in text.splitlines() if "%|" in line]
    assert len(bars) == 1 and "100%" in bars[0], text


def test_an_error_shows_its_name_and_traceback(page: WebDriver) -> None:
    cell = run_cell(page, "def f():\n    return 1 / 0\nf()")
    wait_for(lambda: finished(cell))
    assert cell.get_attribute("data-status") == "error"
    error = cell.find_element(By.CSS_SELECTOR, ".out pre.error")
    assert error.get_attribute("data-ename") == "ZeroDivisionError"
    assert "Traceback" in error.text and "ZeroDivisionError: division by zero" in error.text
    assert "return 1 / 0" in error.text


def test_interrupt_stops_a_running_cell(page: WebDriver) -> None:
    cell = run_cell(page, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    wait_for(lambda: "sleeping" in cell.find_element(By.CLASS_NAME, "out").text)
    began = time.monotonic()
    page.find_element(By.CSS_SELECTOR, "button[title='Interrupt']").click()
    wait_for(lambda: finished(cell), timeout=15)
    assert time.monotonic() - began < 15
    assert cell.get_attribute("data-status") == "interrupted"
    assert "KeyboardInterrupt" in cell.find_element(By.CSS_SELECTOR, ".out pre.error").text
    assert "sleeping" in cell.find_element(By.CSS_SELECTOR, ".out pre.stdout").text


def test_html_output_stays_in_a_sandboxed_frame(page: WebDriver) -> None:
    code = ("import pandas as pd\n"
            "class Evil:\n"
            "    def _repr_html_(self):\n"
            "        return '<b id=evil>bold</b><img src=x onerror=\"parent.document.title=1\">'\n"
            "display(Evil())\n"
            "pd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    cell = run_cell(page, code)
    wait_for(lambda: finished(cell))
    frames = cell.find_elements(By.CSS_SELECTOR, "iframe.html-output")
    assert len(frames) == 2
    # Scripts, for the console's frame.js (the inherited CSP refuses the output's own), but no
    # origin: never allow-same-origin next to allow-scripts.
    assert all(frame.get_attribute("sandbox") == "allow-scripts" for frame in frames)
    assert "<table" in frames[1].get_attribute("srcdoc")
    # A 2-row DataFrame's frame is as tall as the table, not a fixed 16rem (frame.js reports it).
    wait_for(lambda: 40 < frames[1].size["height"] < 120)
    try:
        page.switch_to.frame(frames[1])
        assert page.execute_script("return origin") == "null"
        assert page.execute_script(
            "return getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"
        assert page.execute_script("return document.documentElement.scrollHeight <= innerHeight")
        page.switch_to.default_content()
        page.switch_to.frame(frames[0])
        # Loaded: the broken image has failed, so its onerror had its chance to run.
        wait_for(lambda: page.execute_script("return document.readyState") == "complete")
    finally:
        page.switch_to.default_content()
    assert page.title == "kernelserver"
    assert not page.find_elements(By.ID, "evil")  # never part of the page itself


def test_markdown_is_rendered_and_html_in_it_stays_text(page: WebDriver) -> None:
    cell = run_cell(page, "from IPython.display import display, Markdown\n"
                          "display(Markdown(\"**bold** and <b>raw</b>\"))\n"
                          "display(Markdown('[docs](https://example.com/) [trap](javascript:alert(1))'))")
    wait_for(lambda: finished(cell))
    assert cell.get_attribute("data-status") == "ok"
    shown = cell.find_elements(By.CSS_SELECTOR, ".out .display .markdown")
    assert len(shown) == 2 and "Markdown object" not in cell.text  # not the text/plain fallback
    assert [strong.text for strong in shown[0].find_elements(By.TAG_NAME, "strong")] == ["bold"]
    assert shown[0].text == "bold and <b>raw</b>"  # the tags as written, no element of them
    assert not shown[0].find_elements(By.TAG_NAME, "b")
    # A web link opens in a new tab; a javascript: one is no link at all.
    links = shown[1].find_elements(By.TAG_NAME, "a")
    assert [(a.text, a.get_attribute("href"), a.get_attribute("target")) for a in links] \
        == [("docs", "https://example.com/", "_blank")]
    assert "trap" in shown[1].text


def test_a_display_is_updated_in_place(page: WebDriver) -> None:
    cell = run_cell(page, "import time\nh = display('one', display_id=True)\ntime.sleep(0.5)\n"
                          "h.update('two')")
    wait_for(lambda: finished(cell))
    assert [shown.text for shown in cell.find_elements(By.CSS_SELECTOR, ".out .display")] == ["'two'"]
    # A later cell updates it where it is, and shows nothing of its own.
    later = run_cell(page, "h.update('three')")
    wait_for(lambda: finished(later))
    wait_for(lambda: cell.find_element(By.CSS_SELECTOR, ".out .display").text == "'three'")
    assert len(cell.find_elements(By.CSS_SELECTOR, ".out .display")) == 1
    assert later.get_attribute("data-status") == "ok"
    assert later.find_element(By.CLASS_NAME, "out").text == ""


@pytest.mark.parametrize(("code", "shown"), [
    ("print('a')\nfrom IPython.display import clear_output\nclear_output()\nprint('b')", "b"),
    ("from IPython.display import clear_output\ndisplay('old')\nfor i in range(3):\n"
     "    clear_output(wait=True)\n    print('step', i)", "step 2"),
    ("from IPython.display import clear_output\nprint('kept')\nclear_output(wait=True)", "kept"),
], ids=["at-once", "wait-for-the-next-output", "wait-with-nothing-after"])
def test_clear_output_empties_the_cell(page: WebDriver, code: str, shown: str) -> None:
    cell = run_cell(page, code)
    wait_for(lambda: finished(cell))
    assert cell.get_attribute("data-status") == "ok"
    assert cell.find_element(By.CLASS_NAME, "out").text == shown


def test_namespaces_and_history(page: WebDriver) -> None:
    name = "exp-console-namespace"
    page.find_element(By.ID, "new-id").send_keys(name, Keys.ENTER)
    wait_for(lambda: page.find_element(By.ID, "ns").get_attribute("value") == name)
    row = f"#namespaces tr[data-id='{name}']"
    wait_for(lambda: page.find_element(By.CSS_SELECTOR, row + " .state").text == "idle")
    # Made in the server's own Python, the picker's default, and the console says so.
    assert page.find_element(By.CSS_SELECTOR, row + " td.kernel").text == "python3"
    assert page.find_element(By.ID, "kernel").text == "python3"
    first = run_cell(page, "x = 20\nprint('first cell')")
    wait_for(lambda: finished(first))
    second = run_cell(page, "x + 1")
    wait_for(lambda: finished(second))
    assert second.find_element(By.CSS_SELECTOR, ".result pre").text == "21"
    assert page.find_element(By.CSS_SELECTOR, row + " td.memory").text.endswith("MiB")
    # At 1280 px the sidebar keeps each namespace on one line: id, state, memory, Delete.
    assert page.execute_script("return innerWidth") == 1280
    assert page.execute_script(
        "return [...document.querySelectorAll('#namespaces tr')].every((row) =>"
        " row.getBoundingClientRect().height < 2 * parseFloat(getComputedStyle(row).lineHeight))")
    # History, newest first: show an old cell's output again, or copy its code to the editor.
    wait_for(lambda: len(page.find_elements(By.CSS_SELECTOR, "#history li")) == 2)
    entries = page.find_elements(By.CSS_SELECTOR, "#history li")
    assert entries[1].text.startswith("[1] x = 20")
    entries[1].find_element(By.CLASS_NAME, "show").click()
    wait_for(lambda: "first cell" in page.find_elements(By.CSS_SELECTOR, "#cells .cell")[-1].text)
    assert "from history" in page.find_elements(By.CSS_SELECTOR, "#cells .cell")[-1].text
    entries[1].find_element(By.CLASS_NAME, "copy").click()
    assert page.find_element(By.ID, "editor").get_attribute("value") == "x = 20\nprint('first cell')"
    page.find_element(By.ID, "editor").clear()
    # Restart empties it; delete (two clicks) removes it.
    restart = page.find_element(By.ID, "restart")
    restart.click()
    restart.click()
    failed = run_cell(page, "x")
    wait_for(lambda: finished(failed))
    assert "NameError" in failed.text
    # The 2-second poll answers while Delete waits for its "Sure?": the list is updated in place,
    # so the very same button still asks and takes the second click.
    table = page.find_element(By.ID, "namespaces")
    delete = page.find_element(By.CSS_SELECTOR, row + " button.delete")
    delete.click()
    assert delete.text == "Sure?"
    shown = int(table.get_attribute("data-refreshes"))
    wait_for(lambda: int(table.get_attribute("data-refreshes")) > shown, timeout=3.5)
    assert delete.text == "Sure?"
    delete.click()
    wait_for(lambda: not page.find_elements(By.CSS_SELECTOR, row))
    wait_for(lambda: page.find_element(By.ID, "ns").get_attribute("value") == "default")


def kernel_picker(page: WebDriver) -> Select:
    """The create form's kernel <select>, once the server's list of kernels filled it."""
    wait_for(lambda: page.find_element(By.ID, "new-kernel").get_attribute("data-loaded"))
    return Select(page.find_element(By.ID, "new-kernel"))


def test_a_namespace_runs_in_the_kernel_picked(page: WebDriver, api: requests.Session,
                                               server: LiveServer) -> None:
    picker = kernel_picker(page)
    # Its own, the setting's, then the installed Jupyter kernels (bash_kernel; IRkernel in CI).
    assert [option.get_attribute("value") for option in picker.options][:4] \
        == ["python3", "second", "broken", "bash"]
    assert picker.first_selected_option.get_attribute("value") == "python3"
    version = ".".join(map(str, sys.version_info[:3]))
    assert picker.options[1].text == f"second (Python {version})"
    assert "cannot start" in picker.options[2].text
    name = "exp-console-second"
    picker.select_by_value("second")
    page.find_element(By.ID, "new-id").send_keys(name, Keys.ENTER)
    wait_for(lambda: page.find_element(By.ID, "ns").get_attribute("value") == name)
    try:
        answer = api.post(server.url + "/env/get", json={"id": name}, timeout=10)
        assert answer.status_code == 200 and answer.json()["kernel"] == "second"
        # The console shows it in its list and in the header, beside the namespace's state.
        row = f"#namespaces tr[data-id='{name}']"
        wait_for(lambda: page.find_element(By.CSS_SELECTOR, row + " td.kernel").text == "second")
        wait_for(lambda: page.find_element(By.ID, "kernel").text == "second")
        assert sys.executable in page.find_element(By.ID, "kernel").get_attribute("title")
        assert page.find_element(By.ID, "create-error").text == ""
        cell = run_cell(page, "import sys\nprint(sys.version_info[:2])\n6 * 7")
        wait_for(lambda: finished(cell))
        assert cell.get_attribute("data-status") == "ok"
        assert cell.find_element(By.CSS_SELECTOR, ".out .result pre").text == "42"
        assert cell.find_element(By.CSS_SELECTOR, ".out pre.stdout").text \
            == str(tuple(sys.version_info[:2]))
        # The same id again with python3 picked: it exists and keeps its kernel, and says so.
        picker.select_by_value("python3")
        page.find_element(By.ID, "new-id").send_keys(name, Keys.ENTER)
        wait_for(lambda: "runs in second" in page.find_element(By.ID, "create-error").text)
        assert api.post(server.url + "/env/get", json={"id": name}, timeout=10).json()["kernel"] \
            == "second"
    finally:
        api.post(server.url + "/env/delete", json={"id": name}, timeout=30)


def test_a_jupyter_kernel_of_another_language_runs_cells(page: WebDriver, api: requests.Session,
                                                          server: LiveServer) -> None:
    picker = kernel_picker(page)
    bash = next(option for option in picker.options if option.get_attribute("value") == "bash")
    assert bash.text == "bash (bash)" and "a bash Jupyter kernel" in bash.get_attribute("title")
    name = "exp-console-bash"
    picker.select_by_value("bash")
    page.find_element(By.ID, "new-id").send_keys(name, Keys.ENTER)
    wait_for(lambda: page.find_element(By.ID, "ns").get_attribute("value") == name)
    try:
        wait_for(lambda: page.find_element(By.ID, "kernel").text == "bash")
        cell = run_cell(page, "x=41; echo $((x + 1))")
        wait_for(lambda: finished(cell))
        assert cell.get_attribute("data-status") == "ok"
        assert cell.find_element(By.CSS_SELECTOR, ".out pre.stdout").text == "42"
        cell = run_cell(page, "false")
        wait_for(lambda: finished(cell))
        assert cell.get_attribute("data-status") == "error"
    finally:
        api.post(server.url + "/env/delete", json={"id": name}, timeout=30)


def test_a_kernel_that_cannot_start_says_why_by_the_form(page: WebDriver, api: requests.Session,
                                                        server: LiveServer) -> None:
    name = "exp-console-broken"
    kernel_picker(page).select_by_value("broken")
    page.find_element(By.ID, "new-id").send_keys(name, Keys.ENTER)
    error = page.find_element(By.ID, "create-error")
    wait_for(lambda: error.text)
    # The server's 503 in its own words, next to the form that asked, as text.
    assert error.text.startswith(f"{name}: could not start a worker")
    assert "no-such-python" in error.text and error.is_displayed()
    assert not error.find_elements(By.XPATH, "./*")
    assert page.find_element(By.ID, "ns").get_attribute("value") == "default"
    assert page.find_element(By.ID, "new-id").get_attribute("value") == name  # to fix and retry
    listed = api.get(server.url + "/env/list", timeout=10).json()["envs"]
    assert name not in [env["id"] for env in listed]
    assert not page.find_elements(By.CSS_SELECTOR, f"#namespaces tr[data-id='{name}']")


def test_without_a_token_it_asks_and_a_wrong_one_says_so(browser: WebDriver, printed_url: str,
                                                         server: LiveServer) -> None:
    browser.get(server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get(server.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed())
    assert not browser.find_element(By.ID, "app").is_displayed()
    # Nothing to run, interrupt or choose before the server took a token.
    assert not any(browser.find_element(By.ID, name).is_displayed() for name in CONTROLS)
    assert "needs its token" in browser.find_element(By.ID, "login-error").text
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token", Keys.ENTER)
    wait_for(lambda: "wrong token" in browser.find_element(By.ID, "login-error").text)
    error = browser.find_element(By.ID, "login-error")
    assert "`" not in error.text  # commands as <code>, not as markdown
    assert [code.text for code in error.find_elements(By.TAG_NAME, "code")] \
        == ["serve", "kernelserver token"]
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert not any(browser.find_element(By.ID, name).is_displayed() for name in CONTROLS)
    # A wrong token in the fragment leaves the address bar too: pasted into the open page (only
    # the fragment changes: no reload) ...
    browser.execute_script("document.getElementById('login-error').textContent = ''")
    browser.get(server.url + "/#token=not-it-either")
    wait_for(lambda: "wrong token" in browser.find_element(By.ID, "login-error").text)
    assert browser.current_url == server.url + "/"
    # ... and on a fresh load.
    browser.get("about:blank")
    browser.get(server.url + "/#token=not-it-either")
    wait_for(lambda: "wrong token" in browser.find_element(By.ID, "login-error").text)
    assert browser.current_url == server.url + "/"
    field = browser.find_element(By.ID, "token")
    field.send_keys(printed_url.split("#token=")[1], Keys.ENTER)
    wait_for(lambda: browser.find_element(By.ID, "app").is_displayed())
    assert all(browser.find_element(By.ID, name).is_displayed() for name in CONTROLS)
    cell = run_cell(browser, "'pasted'")
    wait_for(lambda: finished(cell))
    assert cell.find_element(By.CSS_SELECTOR, ".result pre").text == "'pasted'"


def test_screenshot_mid_run(page: WebDriver, tmp_path: Path) -> None:
    """The README's picture: a plot and a live loop, taken while the loop runs."""
    plot = run_cell(page, "import numpy as np, matplotlib.pyplot as plt\n"
                          "plt.figure(figsize=(6, 2.4))\n"
                          "x = np.linspace(0, 6, 200)\n"
                          "plt.plot(x, np.sin(x)); plt.title('sin'); plt.show()")
    wait_for(lambda: finished(plot))
    loop = run_cell(page, "import time\nfor step in range(6):\n"
                          "    print(f'step {step}: loss {1 / (step + 1):.3f}', flush=True)\n"
                          "    time.sleep(0.5)")
    wait_for(lambda: "step 2" in loop.text)
    assert not finished(loop)
    path = tmp_path / "console.png"
    assert page.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    target = os.environ.get("KERNELSERVER_SCREENSHOT")  # docs/console.png when refreshing the README
    if target:
        shutil.copyfile(path, target)
    wait_for(lambda: finished(loop))


def test_the_browser_never_asks_for_a_favicon(page: WebDriver, server: LiveServer) -> None:
    """The page brings its icon (a data: URL), so no load of it, here or in any test before,
    asked for /favicon.ico, which needs the token like every path outside the console's."""
    icon = page.find_element(By.CSS_SELECTOR, "link[rel~='icon']")
    assert icon.get_attribute("href").startswith("data:image/svg+xml,")
    assert " /favicon.ico " not in server.output()
