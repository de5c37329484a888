"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium (through
chromium-driver; nothing is downloaded), against a real worker process on sqlite://.

Screenshots go to ``build/dashboard-screenshots/`` (or ``$MACHINERY_DASHBOARD_SCREENSHOTS``).
``scripts/install-chromium`` installs the browser; without it these tests fail, saying so.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
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


REDIS_E2E = os.environ.get("MACHINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "redis":
        pytest.importorskip("machinery_redis", reason="needs machinery-redis (pip install -e plugins/machinery-redis)")
        url, queue = REDIS_E2E, f"dash_{uuid.uuid4().hex[:8]}"
    else:
        url, queue = f"sqlite:///{tmp_path / 'm.db'}", "machinery_tasks"
    with running(tmp_path, url, url, queue=queue) as e:
        e.tmp = tmp_path
        yield e


def until(driver: Any, cond: Any, timeout: float = 30) -> Any:
    """Wait for ``cond``; live pages redraw parts of themselves, so stale elements are retried."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(cond)


def click(driver: Any, by: str, selector: str) -> None:
    """Find and click in one step, again if the element went stale: a live region may redraw
    between the find and the click (the dead-letter list refreshes itself, the graph redraws)."""
    until(driver, lambda d: d.find_element(by, selector).click() or True)


def shot(driver: Any, env: Env, name: str) -> None:
    scheme = env.server.broker_url.split(":", 1)[0]
    driver.save_screenshot(str(SHOTS / f"{name}-{scheme}.png"))


def test_chord_with_a_failed_member_is_a_graph_with_that_node_red(browser: Any, env: Env) -> None:
    members = [Signature("add", args=[i, 10]) for i in range(4)] + [Signature("explode", args=["no fuel"])]
    chord = Chord(Group(*members), Signature("total"))
    env.server.send_chord(chord)
    bad = members[-1].uuid
    browser.get(f"{env.url}/workflow/{members[0].uuid}")
    failed = f'.node[data-uuid="{bad}"][data-state="FAILURE"]'
    # the graph is redrawn while a node is unfinished (the callback never runs), so every read
    # is one query inside until(), which retries a stale element
    red = f'{failed} rect[fill="#d93025"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, red))
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '.node[data-state="SUCCESS"]')) == 4)
    pending = f'.node[data-uuid="{chord.callback.uuid}"][data-state="PENDING"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, pending))
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.edge.chord")) == 5)
    until(browser, lambda d: d.find_element(By.ID, "graph-summary").text == "chord of 6 tasks")
    click(browser, By.CSS_SELECTOR, failed)
    until(browser, lambda d: "ValueError: member exploded: no fuel" in d.find_element(
        By.CSS_SELECTOR, "#node-detail pre.traceback").text)
    until(browser, lambda d: "member exploded" in d.find_element(By.CSS_SELECTOR, "#node-detail pre.error").text)
    shot(browser, env, "chord-failed-member")
    # the node's link leads to the task page, which has the traceback too
    click(browser, By.ID, "node-link")
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
    shot(browser, env, "chain-live")


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
    shot(browser, env, "task-revoked")


def test_dead_letter_replays(browser: Any, env: Env) -> None:
    flag = env.tmp / "gateway-up"
    sig = Signature("charge", args=[str(flag)], stop_task_deletion_on_error=True)
    env.server.send_task(sig)
    browser.get(f"{env.url}/dead")
    until(browser, lambda d: sig.uuid in d.find_element(By.ID, "live").text)  # the live refresh shows it
    shot(browser, env, "dead-letters")
    flag.write_text("up")
    click(browser, By.CSS_SELECTOR, "button.replay")  # inside the live region, which refreshes itself
    flash = until(browser, lambda d: d.find_elements(By.ID, "flash"))[0]
    assert f"as task {sig.uuid}" in flash.text
    assert env.server.async_result(sig.uuid).get(timeout=30) == "charged"
    browser.get(f"{env.url}/dead")
    until(browser, lambda d: "No dead letters." in d.find_element(By.ID, "live").text)


def test_overview_and_tasks(browser: Any, env: Env) -> None:
    results = [env.server.send_task(Signature("add", args=[i, i])) for i in range(20)]
    results.append(env.server.send_task(Signature("explode", args=["x"])))
    for r in results:
        env.server.backend.wait_for(r.task_uuid, 30)
    time.sleep(0.6)  # the recorder writes every 0.25 s
    browser.get(env.url + "/")
    until(browser, lambda d: "dash-worker" in d.find_element(By.CSS_SELECTOR, "table.workers").text)
    queue = env.server.config.default_queue
    until(browser, lambda d: queue in d.find_element(By.CSS_SELECTOR, "table.queues").text)
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart rect"))
    shot(browser, env, "overview")
    browser.get(env.url + "/tasks")
    browser.find_element(By.CSS_SELECTOR, "select[name=state] option[value=FAILURE]").click()
    # the Redis log is shared by the whole test run (a new index reads it from the start): this queue's tasks only
    browser.find_element(By.CSS_SELECTOR, "form.filters input[name=queue]").send_keys(queue)
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    until(browser, lambda d: "state=FAILURE" in d.current_url)
    def one_failure(d: Any) -> bool:  # read in one go: the live region may be redrawn meanwhile
        rows = d.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
        return len(rows) == 1 and "explode" in rows[0].text

    until(browser, one_failure, timeout=10)
    box = browser.find_element(By.CSS_SELECTOR, "header input[name=q]")
    box.send_keys(results[3].task_uuid + "\n")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.args"))
    assert "int64" in browser.find_element(By.CSS_SELECTOR, "table.args").text
    shot(browser, env, "task-detail")
