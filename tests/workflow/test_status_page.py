"""`twinkles serve`: the read-only status page, opened in a real headless browser (Debian's chromium driven by
Playwright; no browser is downloaded), shows the job counts of the registry and refreshes itself."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from wf_common import make_repo

from twinkles.workflow import run_pipeline
from twinkles.workflow.serve import serve_in_thread
from twinkles.workflow.status import collect_status

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture
def served(tmp_path):
    repo = make_repo(tmp_path / "repo", [1, 2, 3, 4, 5], {2: "nan", 4: "nowcs"})
    run_pipeline(repo.root, "wf_check,wf_down", executor="threads", workers=2, retries=0, progress=False)
    server = serve_in_thread(repo.root, port=0, refresh=1)
    host, port = server.server_address[:2]
    yield repo, f"http://{host}:{port}/"
    server.shutdown()
    server.server_close()


def test_status_json_and_read_only(served):
    repo, url = served
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url + "status.json") as r:
        st = json.loads(r.read())
    assert st["stages"]["wf_check"]["done"] == 3 and st["stages"]["wf_check"]["failed"] == 2
    req = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url + "../registry.sqlite3")
    assert exc.value.code == 404


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install Debian's chromium "
                    "(apt-get install chromium; `make test` does it when root) to run the browser test")
def test_status_page_in_headless_chromium(served):
    from playwright.sync_api import sync_playwright

    repo, url = served
    expected = collect_status(repo)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url)
            assert "twinkles status" in page.title() or "twinkles" in page.title()

            def shown():
                cells = page.locator("td[data-stage][data-status]")
                return {(c.get_attribute("data-stage"), c.get_attribute("data-status")): int(c.inner_text())
                        for c in cells.all()}

            counts = shown()
            for stage in ("wf_check", "wf_down"):
                for status in ("done", "failed", "skipped-upstream", "pending", "running", "total"):
                    assert counts[(stage, status)] == expected["stages"][stage][status], (stage, status)
            assert counts[("wf_check", "done")] == 3 and counts[("wf_down", "skipped-upstream")] == 2
            assert counts[("all stages", "total")] == 10
            assert "non-finite" in page.locator("#failures").inner_text()
            # the page refreshes itself: a change in the registry appears without any action in the browser
            with repo.connect() as conn:
                conn.execute("UPDATE jobs SET status='pending' WHERE stage='wf_down' AND status='done'")
            page.wait_for_function(
                "() => document.querySelector('td[data-stage=\"wf_down\"][data-status=\"pending\"]')"
                ".innerText.trim() === '3'", timeout=15000)
            assert shown()[("wf_down", "done")] == 0
        finally:
            browser.close()


def test_serve_command_binds_loopback(served):
    import subprocess
    import sys

    repo, _ = served
    proc = subprocess.Popen([sys.executable, "-m", "twinkles.cli", "serve", str(repo.root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line
        url = line.split("http://", 1)[1].split()[0]
        with urllib.request.urlopen("http://" + url) as r:
            page = r.read().decode()
        assert 'http-equiv="refresh"' in page and 'data-stage="wf_check" data-status="done">3<' in page
    finally:
        proc.terminate()
        proc.wait(timeout=10)
