// DeepSynth web UI: no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);

// Instruction templates. They leave the temperature alone: like the API and the CLI, the UI is greedy (0) unless
// the user asks for sampling (the guide suggests 0.3 for Q&A, 0.7 for summaries).
const TEMPLATES = {
  qa: { text: "What are the key findings?" },
  summary: { text: "Summarize focusing only on revenue trends" },
  extraction: { text: "Extract all revenue numbers and growth rates" },
  json: { text: "Extract these fields from the document as JSON." },
};

// ---- tabs -------------------------------------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((tab) => {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === tab.dataset.panel));
  });
});

// ---- inputs -----------------------------------------------------------------------------------------------------
const source = () => document.querySelector('input[name="source"]:checked').value;
document.querySelectorAll('input[name="source"]').forEach((radio) => {
  radio.addEventListener("change", () => {
    $("document-text").hidden = source() !== "text";
    $("file-box").hidden = source() !== "file";
  });
});

$("template").addEventListener("change", () => {
  $("json-box").hidden = $("template").value !== "json";
  const template = TEMPLATES[$("template").value];
  if (template) $("instruction").value = template.text;
});

$("api-key").value = localStorage.getItem("deepsynth-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("deepsynth-api-key", $("api-key").value));

function headers(extra) {
  const h = Object.assign({}, extra);
  if ($("api-key").value) h["X-API-Key"] = $("api-key").value;
  return h;
}

// The request for an endpoint family ("stream" or "pages"): JSON for pasted text, multipart for a file.
function buildRequest(kind) {
  if (source() === "file") {
    const file = $("document-file").files[0];
    if (!file) throw new Error("Choose a file to upload.");
    const form = new FormData();
    form.append("file", file);
    if (kind === "stream") {
      form.append("instruction", $("instruction").value);
      form.append("max_length", $("max-length").value);
      form.append("temperature", $("temperature").value);
    }
    return { url: `/api/inference/${kind === "stream" ? "upload/stream" : "pages/upload"}`,
             init: { method: "POST", body: form, headers: headers() } };
  }
  const text = $("document-text").value;
  if (!text.trim()) throw new Error("Paste a document first.");
  const body = { document: text };
  if (kind === "stream") {
    Object.assign(body, {
      instruction: $("instruction").value,
      max_length: parseInt($("max-length").value, 10),
      temperature: parseFloat($("temperature").value),
    });
  }
  return { url: `/api/inference/${kind}`,
           init: { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }) } };
}

// ---- output -----------------------------------------------------------------------------------------------------
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorMessage(response) {
  try {
    const data = await response.json();
    if (Array.isArray(data.detail)) {
      return data.detail.map((e) => {
        const where = e.loc.filter((p) => p !== "body").join(".");
        return where ? `${where}: ${e.msg}` : e.msg;
      }).join("; ");
    }
    return data.detail || response.statusText;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

// A document longer than the page limit is read up to its first pages: say so, never silently.
function showTruncation(used, total, truncated) {
  $("notice").textContent = truncated
    ? `Only the first ${used}${total == null ? "" : ` of ${total}`} pages were read (the model's page limit); the rest was ignored.`
    : "";
  $("notice").hidden = !truncated;
}

function showResult(result) {
  showTruncation(result.pages_used, result.pages_total, result.truncated);
  $("confidence").textContent = result.confidence.toFixed(3);
  $("time").textContent = `${result.inference_time_ms} ms`;
  $("tokens").textContent = String(result.tokens_generated);
}

// Server-sent events over a POST response: "event: NAME\ndata: JSON\n\n" blocks.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      onEvent(event, JSON.parse(data));
    }
  }
}

async function generate() {
  showError("");
  showTruncation(0, 0, false);
  let request;
  if (!$("instruction").value.trim()) return showError("Enter a question or instruction.");
  try {
    request = buildRequest("stream");
  } catch (e) {
    return showError(e.message);
  }
  $("generate").disabled = true;
  $("answer").textContent = "";
  ["confidence", "time", "tokens"].forEach((id) => ($(id).textContent = "…"));
  previewPages();
  try {
    const response = await fetch(request.url, request.init);
    if (!response.ok) throw new Error(await errorMessage(response));
    await readEvents(response, (event, data) => {
      if (event === "token") $("answer").textContent += data.text;
      else if (event === "done") showResult(data);
      else if (event === "error") throw new Error(data.detail);
    });
  } catch (e) {
    showError(e.message);
    ["confidence", "time", "tokens"].forEach((id) => ($(id).textContent = "–"));
  } finally {
    $("generate").disabled = false;
  }
}

async function previewPages() {
  let request;
  try {
    request = buildRequest("pages");
  } catch (e) {
    return showError(e.message);
  }
  $("pages").textContent = "";
  const response = await fetch(request.url, request.init);
  if (!response.ok) return showError(await errorMessage(response));
  const data = await response.json();
  if (data.truncated) showTruncation(data.page_count, data.pages_total, true);
  for (const page of data.pages) {
    const img = document.createElement("img");
    img.src = page.png;
    img.alt = `page ${page.index + 1} of ${data.page_count}`;
    img.className = "page";
    $("pages").appendChild(img);
  }
}

// ---- Extract to JSON: POST /api/inference/extract-json (or upload/extract-json), one constrained answer -----------
function jsonFields() {
  const fields = $("json-fields").value.split(",").map((f) => f.trim()).filter((f) => f);
  if (!fields.length) throw new Error("List the fields to extract, separated by commas.");
  return fields;
}

function buildJsonRequest() {
  const fields = jsonFields();
  if (source() === "file") {
    const file = $("document-file").files[0];
    if (!file) throw new Error("Choose a file to upload.");
    const form = new FormData();
    form.append("file", file);
    form.append("instruction", $("instruction").value);
    form.append("fields", fields.join(","));
    form.append("max_length", $("max-length").value);
    form.append("temperature", $("temperature").value);
    return { url: "/api/inference/upload/extract-json", init: { method: "POST", body: form, headers: headers() } };
  }
  const text = $("document-text").value;
  if (!text.trim()) throw new Error("Paste a document first.");
  const body = { document: text, instruction: $("instruction").value, fields,
                 max_length: parseInt($("max-length").value, 10), temperature: parseFloat($("temperature").value) };
  return { url: "/api/inference/extract-json",
           init: { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }) } };
}

function showFields(result) {
  const body = $("json-fields-table").querySelector("tbody");
  body.textContent = "";
  for (const [name, value] of Object.entries(result.json || {})) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = typeof value === "string" ? value : JSON.stringify(value);
    const confidence = result.field_confidence[name];
    row.insertCell().textContent = confidence == null ? "–" : confidence.toFixed(3);
  }
  $("json-fields-table").hidden = result.json === null;
}

async function extractJson() {
  showError("");
  $("json-fields-table").hidden = true;
  if (!$("instruction").value.trim()) return showError("Enter a question or instruction.");
  let request;
  try {
    request = buildJsonRequest();
  } catch (e) {
    return showError(e.message);
  }
  $("generate").disabled = true;
  $("answer").textContent = "";
  previewPages();
  try {
    const response = await fetch(request.url, request.init);
    if (!response.ok) throw new Error(await errorMessage(response));
    const result = await response.json();
    $("answer").textContent = result.json === null ? result.answer : JSON.stringify(result.json, null, 2);
    if (result.json_error) showError(result.json_error);
    showResult(result);
    showFields(result);
  } catch (e) {
    showError(e.message);
  } finally {
    $("generate").disabled = false;
  }
}

$("generate").addEventListener("click", () => ($("template").value === "json" ? extractJson() : generate()));
$("preview").addEventListener("click", () => { showError(""); previewPages(); });

// ---- header and API tab ----------------------------------------------------------------------------------------
fetch("/api/health").then((r) => r.json()).then((h) => {
  $("model-info").textContent = `model: ${h.model} · ${h.device} · up to ${h.limits.max_pages} pages`;
}).catch(() => {});
$("curl-example").textContent = `curl -X POST ${location.origin}/api/inference/instruct \\
  -H "Content-Type: application/json" \\
  -d '{"document": "AI has transformed healthcare...", "instruction": "What are the benefits?", "max_length": 256}'`;
