"""The web UI's "Extract to JSON" template in a real headless Chromium against the real server (see test_web_ui.py
for what it needs): the page asks /api/inference/extract-json and shows what the API returns for the same request."""

import requests

from _serving_helpers import DOC_A
from test_web_ui import page, server  # noqa: F401  (module-scoped fixtures: one server and browser here)

FIELDS = ["revenue", "growth"]


def test_extract_to_json_template_shows_the_api_result(server, page):  # noqa: F811
    page.goto(server)
    page.fill("#document-text", DOC_A)
    assert page.is_hidden("#json-box")
    page.select_option("#template", "json")  # shows the field list, fills the instruction, temperature 0
    assert page.is_visible("#json-box") and page.input_value("#temperature") == "0"
    instruction = page.input_value("#instruction")
    assert instruction == "Extract these fields from the document as JSON."
    page.fill("#json-fields", " revenue,growth ")
    page.fill("#max-length", "16")
    page.get_by_role("button", name="Generate Answer").click()
    page.wait_for_function("document.getElementById('tokens').textContent === '16'")

    api = requests.post(f"{server}/api/inference/extract-json", timeout=120, json={
        "document": DOC_A, "instruction": instruction, "fields": FIELDS, "max_length": 16, "temperature": 0}).json()
    # A random model's strings outrun 16 tokens: the raw text and the reason are shown, no field table.
    assert api["json"] is None
    assert page.text_content("#answer") == api["answer"] and page.text_content("#answer").startswith('{"revenue": "')
    assert page.text_content("#error") == api["json_error"]
    assert page.is_hidden("#json-fields-table")
    assert abs(float(page.text_content("#confidence")) - api["confidence"]) <= 5e-4


def test_extract_to_json_needs_fields(server, page):  # noqa: F811
    page.goto(server)
    page.fill("#document-text", DOC_A)
    page.select_option("#template", "json")
    page.fill("#json-fields", " , ")
    page.get_by_role("button", name="Generate Answer").click()
    assert page.text_content("#error") == "List the fields to extract, separated by commas."
