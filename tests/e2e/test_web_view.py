"""The journal view in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium: no
browser download), against a real daemon process driven through hyopsctl: the demo's walk in a browser."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from hybridops_daemon.journal.store import Journal
from tests.e2e.harness import PRIMARY_DOWN, DaemonProcess, Primary, free_port, profile, wait_for
from tests.unit.test_web_view import HOSTILE, hostile_run

pytestmark = pytest.mark.e2e

TOKEN = "view-token-e2e"
STEPS = ["capacity", "database", "floating-ip", "dns", "ipam"]  # the harness profile's cutover chain


def chromium(*arguments: str) -> WebDriver:
    """Debian's headless Chromium under Selenium, its console logged (scripts/screenshots.py takes it too); the caller
    quits it."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", *arguments):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def with_token(driver: WebDriver) -> None:
    """What a reverse proxy in front of the view would add to every request, page loads and refreshes alike."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {TOKEN}"}})


def start_daemon(tmp_path: Path, primary: Primary, daemons: list[DaemonProcess], seed: bool = False) -> tuple[DaemonProcess, str]:
    daemon = DaemonProcess(
        tmp_path,
        primary.port,
        {"prod": profile("prod", rules=[PRIMARY_DOWN]), "drill": profile("drill")},
        {},
        env={"HYOPS_WEB_TOKEN": TOKEN},
    )
    config = yaml.safe_load(daemon.config.read_text())
    config["web"] = {"port": free_port(), "token": {"env": "HYOPS_WEB_TOKEN"}}
    daemon.config.write_text(yaml.safe_dump(config))
    if seed:  # a journal someone else wrote into: a run of a lane this daemon does not run, HTML in its names
        with Journal.open(daemon.state / "journal.db") as journal:
            hostile_run(journal, "old-1", "old", at=time.time() - 60)
    daemons.append(daemon)
    daemon.start()
    url = daemon.ctl_json("status")["web"]
    assert url == f"http://127.0.0.1:{config['web']['port']}/"
    assert f"journal view: {url}" in daemon.ctl("status").stdout
    assert "journal view listening" in daemon.log_path.read_text()
    return daemon, url


def fetch(url: str, token: str | None = TOKEN, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def texts(driver: WebDriver, css: str) -> list[str]:
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, css)]


def no_csp_violations(driver: WebDriver) -> None:
    """Our own pages need nothing the policy forbids: a violation logged means a page broke its own CSP."""
    logged = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert not logged, logged


def test_walkthrough_drill_run_page_evidence_and_export(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess], browser: WebDriver
) -> None:
    daemon, url = start_daemon(tmp_path, primary, daemons)
    with_token(browser)
    browser.get(url)
    assert sorted(texts(browser, "#lanes tbody tr[data-lane] td:first-child")) == ["drill", "prod"]

    run_id = daemon.ctl_json("drill", "--lane", "drill")["decision"]["run_id"]
    # no reload: the overview's live refresh brings the run in
    link = f'#runs tr[data-run="{run_id}"] a'
    WebDriverWait(browser, 6, 0.2).until(lambda b: b.find_elements(By.CSS_SELECTOR, link))
    browser.find_element(By.CSS_SELECTOR, link).click()
    WebDriverWait(browser, 10, 0.2).until(lambda b: b.find_element(By.ID, "run-status").text == "succeeded")
    assert texts(browser, "#steps tbody td.name") == STEPS
    durations = texts(browser, "#steps tbody td.duration")
    assert all(re.fullmatch(r"\d+ ms|[\d.]+ s", d) for d in durations), durations
    assert set(texts(browser, "#steps tbody td.status")) == {"applied"}
    assert browser.find_element(By.ID, "trigger").text == "operator"
    assert browser.find_element(By.ID, "profile").text == "drill v1"

    primary.stop()  # the automatic cutover: a decision with rule evidence
    daemon.wait_status("prod", "ON_STANDBY", timeout=30)
    cutover = daemon.ctl_json("journal", "list", "--lane", "prod")[0]["run_id"]
    browser.get(f"{url}runs/{cutover}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#evidence tbody tr")
    shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    record = next(r for r in daemon.ctl_json("journal", "show", cutover) if r["kind"] == "decision")
    fields = ("rule", "signal", "edge", "value", "age_s", "unknown", "breaching", "consecutive", "breaching_for_s", "tripped")
    assert shown == [[str(item[key]) for key in fields] for item in record["body"]["evidence"]]
    assert any(row[-1] == "True" for row in shown), "no tripped rule among the evidence"
    assert record["body"]["reason"] in browser.find_element(By.ID, "decision-reason").text
    assert browser.find_elements(By.CSS_SELECTOR, "#chart polyline"), "no signal chart for an automatic cutover"

    status, body = fetch(f"{url}runs/{cutover}/export.zip")
    assert status == 200
    done = daemon.ctl("journal", "export", cutover, "--dir", str(tmp_path / "audit"))
    assert done.returncode == 0, done.stderr
    archive = zipfile.ZipFile(io.BytesIO(body))
    for path in sorted((tmp_path / "audit").iterdir()):
        assert json.loads(archive.read(f"{cutover}/{path.name}")) == json.loads(path.read_text()), path.name

    browser.get(f"{url}journal")
    assert browser.find_element(By.ID, "verify").text.startswith("journal OK")
    no_csp_violations(browser)


def decision_rows(driver: WebDriver) -> list[dict[str, str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#decisions tbody tr[data-seq]")
    cells = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    return [{"seq": c[0], "lane": c[2], "kind": c[3], "trigger": c[4]} for c in cells]


def test_timeline_filters_and_pages(tmp_path: Path, primary: Primary, daemons: list[DaemonProcess], browser: WebDriver) -> None:
    daemon, url = start_daemon(tmp_path, primary, daemons)
    daemon.ctl_json("drill", "--lane", "drill")
    daemon.wait_status("drill", "ON_STANDBY")
    assert daemon.ctl("cutover", "--lane", "drill").returncode != 0  # refused: a decision of kind refuse
    primary.stop()
    daemon.wait_status("prod", "ON_STANDBY", timeout=30)
    with_token(browser)

    browser.get(f"{url}timeline?limit=200")
    everything = decision_rows(browser)
    assert {row["lane"] for row in everything} == {"prod", "drill"}
    assert {"operator", "automatic"} <= {row["trigger"] for row in everything}

    Select(browser.find_element(By.NAME, "lane")).select_by_visible_text("drill")  # the form, as a user filters
    Select(browser.find_element(By.NAME, "trigger")).select_by_visible_text("operator")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    WebDriverWait(browser, 5).until(lambda b: "lane=drill" in b.current_url)
    drill_rows = decision_rows(browser)
    assert drill_rows and all(r["lane"] == "drill" and r["trigger"] == "operator" for r in drill_rows)
    assert drill_rows == [r for r in everything if r["lane"] == "drill" and r["trigger"] == "operator"]

    browser.get(f"{url}timeline?kind=cutover&trigger=automatic")
    assert [r["lane"] for r in decision_rows(browser)] == ["prod"]

    browser.get(f"{url}timeline?limit=2")  # paging: the older links walk the whole timeline, two at a time
    paged: list[dict[str, str]] = []
    while True:
        page = decision_rows(browser)
        assert 1 <= len(page) <= 2
        paged += page
        older = browser.find_elements(By.ID, "older")
        if not older:
            break
        older[0].click()
    assert paged == everything and len(everything) > 2

    browser.get(f"{url}timeline?since=2999-01-01T00:00")
    assert decision_rows(browser) == [] and "no decision matches" in browser.page_source
    browser.get(f"{url}timeline?limit=5000")
    assert "limit: a whole number" in browser.find_element(By.TAG_NAME, "body").text
    no_csp_violations(browser)


def journal_head(daemon: DaemonProcess) -> int:
    with sqlite3.connect(f"file:{daemon.state / 'journal.db'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT MAX(seq) FROM records").fetchone()[0])


def kinds_after(daemon: DaemonProcess, seq: int) -> set[str]:
    with sqlite3.connect(f"file:{daemon.state / 'journal.db'}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT kind FROM records WHERE seq > ?", (seq,))}


def test_injected_html_stays_text_token_is_required_and_no_page_writes(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess], browser: WebDriver
) -> None:
    daemon, url = start_daemon(tmp_path, primary, daemons, seed=True)
    daemon.wait_status("prod", "PRIMARY")
    browser.get(url)  # no token yet
    assert "a bearer token is required" in browser.find_element(By.TAG_NAME, "body").text
    for path in ("", "timeline", "runs/old-1", "runs/old-1/export.zip", "journal", "static/refresh.js"):
        assert fetch(url + path, token=None)[0] == 401, path
        assert fetch(url + path, token="wrong")[0] == 401, path
        for method in ("POST", "PUT", "DELETE"):
            assert fetch(url + path, method=method)[0] == 405, (path, method)

    with_token(browser)
    before = journal_head(daemon)
    for path in ("", "timeline", "timeline?lane=old", "runs/old-1", "journal", "runs/old-1/export.zip"):
        browser.get(url + path)
    browser.get(f"{url}runs/old-1")
    assert texts(browser, "#steps tbody td.name")[0] == HOSTILE  # shown as text, not parsed as markup
    assert browser.find_element(By.ID, "actor").text == HOSTILE
    assert HOSTILE in browser.find_element(By.CSS_SELECTOR, "details.step pre.log").get_attribute("textContent")
    injected = "return window.pwned === undefined && document.querySelectorAll('main script, main img').length === 0"
    assert browser.execute_script(injected)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)
    browser.get(url)
    wait_for("a live refresh to pass", lambda: time.sleep(2.5) or True, timeout=5)
    assert browser.execute_script("return window.pwned === undefined")
    # The daemon keeps journaling on its own (its preflights' readiness); nothing a request could have caused.
    assert kinds_after(daemon, before) <= {"readiness"}, kinds_after(daemon, before)
    no_csp_violations(browser)
