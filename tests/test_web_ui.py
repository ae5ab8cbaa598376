"""The web UI in a real headless Chromium (Debian's package, driven by Playwright) against the real server.

Needs: apt-get install -y --no-install-recommends chromium chromium-driver ; pip install playwright
(never `playwright install`: the browser comes from Debian). Missing pieces fail the test, they never skip it.
"""

import re
import shutil

import pytest
import requests

from _serving_helpers import DOC_A, DOC_B, make_serving_checkpoint, start_server, stop_server

INSTALL = ("install the browser with `apt-get install -y --no-install-recommends chromium chromium-driver` and the "
           "driver with `pip install playwright` (do not run `playwright install`)")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = make_serving_checkpoint(tmp_path_factory.mktemp("ui") / "tiny")
    proc, base = start_server(checkpoint)
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(f"Chromium is not installed: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed: {INSTALL}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def api_answer(server, document, instruction, max_length):
    payload = {"document": document, "instruction": instruction, "max_length": max_length, "temperature": 0}
    return requests.post(f"{server}/api/inference/instruct", json=payload, timeout=120).json()["answer"]


def test_paste_text_and_generate(server, page):
    page.goto(server)
    page.get_by_role("tab", name="Instruction Prompting").click()
    page.fill("#document-text", DOC_A)
    assert page.input_value("#temperature") == "0"  # greedy by default, like the API and the CLI
    page.select_option("#template", "qa")  # fills the instruction, leaves the temperature
    assert page.input_value("#instruction") == "What are the key findings?"
    assert page.input_value("#temperature") == "0"
    page.fill("#max-length", "12")
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_function("/^[01]\\.\\d{3}$/.test(document.getElementById('confidence').textContent)")
    confidence = float(page.text_content("#confidence"))
    assert 0 < confidence <= 1
    assert re.fullmatch(r"\d+ ms", page.text_content("#time")) and page.text_content("#tokens") == "12"
    assert page.text_content("#answer") == api_answer(server, DOC_A, "What are the key findings?", 12)
    page.wait_for_selector("#pages img.page")
    assert page.locator("#pages img.page").count() >= 1
    assert page.is_hidden("#error") and page.is_hidden("#notice")


def test_a_truncated_document_shows_a_notice(server, page):
    long_text = "word " * 3000
    total = requests.post(f"{server}/api/inference/pages", json={"document": long_text}, timeout=120).json()
    assert total["truncated"] and total["page_count"] == 4 and total["pages_total"] is None  # layout stopped at 5
    page.goto(server)
    page.fill("#document-text", long_text)
    page.fill("#instruction", "What is this about?")
    page.fill("#max-length", "2")
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_function("document.getElementById('tokens').textContent === '2'")
    assert page.is_visible("#notice")
    assert page.text_content("#notice") == ("Only the first 4 pages were read (the model's page limit); the rest was "
                                            "ignored.")
    assert page.text_content("#answer") == api_answer(server, long_text, "What is this about?", 2)
    page.fill("#document-text", DOC_A)  # a short document: the notice goes away
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_function("document.getElementById('notice').hidden === true")


def test_upload_file_and_generate(server, page, tmp_path):
    path = tmp_path / "report.md"
    path.write_text(DOC_B)
    page.goto(server)
    page.check("input[name=source][value=file]")
    page.set_input_files("#document-file", str(path))
    page.fill("#instruction", "Summarize focusing only on diagnostics")
    page.fill("#temperature", "0")
    page.fill("#max-length", "8")
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_function("document.getElementById('tokens').textContent === '8'")
    assert page.text_content("#answer") == api_answer(server, DOC_B, "Summarize focusing only on diagnostics", 8)


def test_errors_are_shown(server, page):
    page.goto(server)
    page.fill("#document-text", DOC_A)
    page.fill("#instruction", "")
    page.get_by_role("button", name="Generate Answer").click()
    assert page.text_content("#error") == "Enter a question or instruction."
    page.fill("#instruction", "What was the revenue?")
    page.fill("#max-length", "5000")  # above the server's limit: the server's 422 message is shown
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_function("document.getElementById('error').textContent.includes('max_length')")
    assert "less than or equal to 1024" in page.text_content("#error")
