"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium (through
chromium-driver; nothing is downloaded), against a real worker process on sqlite://.

Screenshots go to ``build/dashboard-screenshots/`` (or ``$MACHINERY_DASHBOARD_SCREENSHOTS``).
``scripts/install-chromium`` installs the browser; without it these tests fail, saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Env, running

from machinery import Chain, Chord, Group, Signature

ROOT = Path(__file__).resolve().parents[3]
SHOTS = Path(os.environ.get("MACHINERY_DASHBOARD_SCREENSHOTS", ROOT / "build" / "dashboard-screenshots"))
CHROMIUM = os.environ.get("MACHINERY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MACHINERY_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"no Chromium at {CHROMIUM} or no chromedriver at {CHROMEDRIVER}: run scripts/install-chromium")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800"):
        opts.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    with running(tmp_path, db, db) as e:
        yield e


def until(driver: Any, cond: Any, timeout: float = 30) -> Any:
    """Wait for ``cond``; live pages redraw parts of themselves, so stale elements are retried."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(cond)


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_chord_with_a_failed_member_is_a_graph_with_that_node_red(browser: Any, env: Env) -> None:
    members = [Signature("add", args=[i, 10]) for i in range(4)] + [Signature("explode", args=["no fuel"])]
    chord = Chord(Group(*members), Signature("total"))
    env.server.send_chord(chord)
    bad = members[-1].uuid
    browser.get(f"{env.url}/workflow/{members[0].uuid}")
    failed = f'.node[data-uuid="{bad}"][data-state="FAILURE"]'
    node = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, failed))[0]
    assert node.find_element(By.TAG_NAME, "rect").get_attribute("fill") == "#d93025"
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '.node[data-state="SUCCESS"]')) == 4)
    cb = browser.find_element(By.CSS_SELECTOR, f'.node[data-uuid="{chord.callback.uuid}"]')
    assert cb.get_attribute("data-state") == "PENDING"
    assert len(browser.find_elements(By.CSS_SELECTOR, "path.edge.chord")) == 5
    assert browser.find_element(By.ID, "graph-summary").text == "chord of 6 tasks"
    node.click()
    pre = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#node-detail pre.traceback"))[0]
    assert "ValueError: member exploded: no fuel" in pre.text
    assert "member exploded" in browser.find_element(By.CSS_SELECTOR, "#node-detail pre.error").text
    shot(browser, "chord-failed-member")
    # the node's link leads to the task page, which has the traceback too
    browser.find_element(By.ID, "node-link").click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "pre.traceback"))
    assert "explode" in browser.find_element(By.CLASS_NAME, "task-name").text


def test_chain_graph_updates_live(browser: Any, env: Env) -> None:
    steps = [Signature("slow_add", args=[1, 1]), Signature("slow_add", args=[2]), Signature("slow_add", args=[3])]
    env.server.send_chain(Chain(*steps))
    browser.get(f"{env.url}/workflow/{steps[0].uuid}")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'.node[data-uuid="{steps[2].uuid}"]'))
    assert len(browser.find_elements(By.CSS_SELECTOR, "path.edge.next")) == 2
    first = browser.find_element(By.CSS_SELECTOR, f'.node[data-uuid="{steps[2].uuid}"]').get_attribute("data-state")
    assert first != "SUCCESS"  # the last step has not run yet when the page loads
    # no reload: the stream redraws the graph as the steps finish
    done = f'.node[data-uuid="{steps[2].uuid}"][data-state="SUCCESS"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, done))
    assert len(browser.find_elements(By.CSS_SELECTOR, '.node[data-state="SUCCESS"]')) == 3
    shot(browser, "chain-live")


def test_revoking_a_delayed_task_from_the_page_stops_it(browser: Any, env: Env) -> None:
    flag = env.tmp / "touched"
    sig = Signature("touch", args=[str(flag)]).countdown(4)
    env.server.send_task(sig)
    browser.get(f"{env.url}/task/{sig.uuid}")
    browser.find_element(By.ID, "revoke-task").click()
    flash = until(browser, lambda d: d.find_elements(By.ID, "flash"))[0]
    assert "revoked 1 task" in flash.text
    deadline = time.monotonic() + 30
    while (st := env.server.get_state(sig.uuid)) is None or not st.is_completed:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st.state == "FAILURE" and st.error == "revoked"
    assert not flag.exists()
    browser.get(f"{env.url}/task/{sig.uuid}")
    assert browser.find_element(By.CSS_SELECTOR, ".state").text == "REVOKED"
    shot(browser, "task-revoked")


def test_dead_letter_replays(browser: Any, env: Env) -> None:
    flag = env.tmp / "gateway-up"
    sig = Signature("charge", args=[str(flag)], stop_task_deletion_on_error=True)
    env.server.send_task(sig)
    browser.get(f"{env.url}/dead")
    until(browser, lambda d: sig.uuid in d.find_element(By.ID, "live").text)  # the live refresh shows it
    shot(browser, "dead-letters")
    flag.write_text("up")
    browser.find_element(By.CSS_SELECTOR, "button.replay").click()
    flash = until(browser, lambda d: d.find_elements(By.ID, "flash"))[0]
    assert f"as task {sig.uuid}" in flash.text
    assert env.server.async_result(sig.uuid).get(timeout=30) == "charged"
    browser.get(f"{env.url}/dead")
    assert "No dead letters." in browser.find_element(By.ID, "live").text


def test_overview_and_tasks(browser: Any, env: Env) -> None:
    results = [env.server.send_task(Signature("add", args=[i, i])) for i in range(20)]
    results.append(env.server.send_task(Signature("explode", args=["x"])))
    for r in results:
        env.server.backend.wait_for(r.task_uuid, 30)
    time.sleep(0.6)  # the recorder writes every 0.25 s
    browser.get(env.url + "/")
    until(browser, lambda d: "dash-worker" in d.find_element(By.CSS_SELECTOR, "table.workers").text)
    until(browser, lambda d: "machinery_tasks" in d.find_element(By.CSS_SELECTOR, "table.queues").text)
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart rect"))
    shot(browser, "overview")
    browser.get(env.url + "/tasks")
    browser.find_element(By.CSS_SELECTOR, "select[name=state] option[value=FAILURE]").click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    until(browser, lambda d: "state=FAILURE" in d.current_url)
    rows = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr"))
    assert len(rows) == 1 and "explode" in rows[0].text
    box = browser.find_element(By.CSS_SELECTOR, "header input[name=q]")
    box.send_keys(results[3].task_uuid + "\n")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.args"))
    assert "int64" in browser.find_element(By.CSS_SELECTOR, "table.args").text
    shot(browser, "task-detail")
