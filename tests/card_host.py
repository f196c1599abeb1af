"""A minimal MCP Apps host in headless Chromium, for the card tests.

The host page does what an Apps host does for one tool call: it puts the card's HTML (as
``resources/read`` served it) in a sandboxed iframe, answers the card's ``ui/initialize``,
delivers the tool's CallToolResult as ``ui/notifications/tool-result`` once the card says
``ui/notifications/initialized``, and answers the card's ``tools/call`` requests with
results the real server gave for exactly those calls (anything else is an error). The
card runs under the spec's default CSP (no network, inline script and style only).

Test-only concession: the frame also gets ``allow-same-origin`` so the host page can copy
the card's DOM into its own (``--dump-dom`` prints the top document only); the cards never
rely on it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

DEFAULT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src data:; connect-src 'none'")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}

HOST = """<!doctype html>
<html><head><meta charset="utf-8"><title>test host</title></head>
<body style="margin:0">
<iframe id="frame" sandbox="allow-scripts allow-same-origin" allow="clipboard-write"
        style="border:0;width:100%;height:400px"></iframe>
<pre id="calls" hidden></pre><pre id="dom" hidden></pre>
<script>
const CARD = __CARD__;
const TOOL_RESULT = __RESULT__;
const ANSWERS = __ANSWERS__;
const calls = [];
const frame = document.getElementById("frame");
function send(message) { frame.contentWindow.postMessage(message, "*"); }
function dump() {
  document.getElementById("calls").textContent = JSON.stringify(calls);
  document.getElementById("dom").textContent = frame.contentDocument.documentElement.outerHTML;
}
window.addEventListener("message", (event) => {
  if (event.source !== frame.contentWindow) return;
  const msg = event.data;
  if (!msg || msg.jsonrpc !== "2.0") return;
  if (msg.method === "ui/initialize") {
    send({ jsonrpc: "2.0", id: msg.id, result: {
      protocolVersion: msg.params.protocolVersion,
      hostInfo: { name: "tunestep-test-host", version: "1" },
      hostCapabilities: { serverTools: {} },
      hostContext: { theme: "light", displayMode: "inline" } } });
  } else if (msg.method === "ui/notifications/initialized") {
    send({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: TOOL_RESULT });
  } else if (msg.method === "tools/call") {
    calls.push(msg.params);
    const key = JSON.stringify([msg.params.name, msg.params.arguments]);
    if (key in ANSWERS) send({ jsonrpc: "2.0", id: msg.id, result: ANSWERS[key] });
    else send({ jsonrpc: "2.0", id: msg.id,
                error: { code: -32602, message: "unexpected " + key } });
  } else if (msg.method === "ui/notifications/size-changed") {
    frame.style.height = msg.params.height + "px";
  }
  dump();
});
frame.srcdoc = CARD;
</script></body></html>
"""


def chromium() -> str:
    """Debian's chromium; the test is skipped, saying why, when it is absent (.ci/run
    installs it when it can)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed: apt-get install -y chromium renders the cards")
    return found


def _script_json(value) -> str:
    # Inside <script>: "</" would end the element, so it is written as "<\\/".
    return json.dumps(value).replace("</", "<\\/")


def host_page(folder: Path, card_html: str, tool_result: dict, answers: dict) -> Path:
    """The host page for one card; ``answers`` maps (tool, arguments) to a wire result."""
    card = card_html.replace("<head>", f'<head><meta http-equiv="Content-Security-Policy" '
                                       f'content="{DEFAULT_CSP}">', 1)
    keyed = {json.dumps([name, args], separators=(",", ":")): result
             for (name, args), result in ((json.loads(k), v) for k, v in answers.items())}
    page = (HOST.replace("__CARD__", _script_json(card))
            .replace("__RESULT__", _script_json(tool_result))
            .replace("__ANSWERS__", _script_json(keyed)))
    path = folder / "host.html"
    path.write_text(page, encoding="utf-8")
    return path


def answer_key(name: str, arguments: dict) -> str:
    return json.dumps([name, arguments])


def _run(page: Path, *args: str) -> str:
    profile = page.parent / "chromium-profile"
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--virtual-time-budget=15000", *args, page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Rendered:
    """The card's DOM as the host saw it, and the tool calls the card made."""

    def __init__(self, dumped: str) -> None:
        calls = re.search(r'<pre id="calls" hidden="">(.*?)</pre>', dumped, re.S)
        dom = re.search(r'<pre id="dom" hidden="">(.*?)</pre>', dumped, re.S)
        assert calls and dom, "the host page never heard from the card"
        self.calls = json.loads(html.unescape(calls.group(1)) or "[]")
        self.html = html.unescape(dom.group(1))
        parser = _Fields()
        parser.feed(self.html)
        self.fields, self.tags, self.state = parser.fields, parser.tags, parser.state

    def field(self, name: str) -> str:
        assert name in self.fields, f"no data-field {name!r}; have {sorted(self.fields)}"
        return self.fields[name]


class _Fields(HTMLParser):
    """Text of every element with a data-field, data-version or id (a data-section is
    ``section:<name>``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str | None] = []
        self.fields: dict[str, str] = {}
        self.tags: list[str] = []
        self.state: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        named = dict(attrs)
        if tag == "body":
            self.state = named.get("data-state")
        if tag in VOID:
            return
        key = (named.get("data-field") or named.get("data-version") or named.get("id")
               or (f"section:{named['data-section']}" if "data-section" in named else None))
        if key is not None:
            self.fields.setdefault(key, "")
        self.stack.append(key)

    def handle_endtag(self, tag):
        if tag not in VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for key in {k for k in self.stack if k is not None}:
            self.fields[key] += data


def render(folder: Path, card_html: str, tool_result: dict, answers: dict) -> Rendered:
    return Rendered(_run(host_page(folder, card_html, tool_result, answers), "--dump-dom"))


def screenshot(folder: Path, card_html: str, tool_result: dict, answers: dict,
               out: Path, size: str = "900,2200") -> Path:
    page = host_page(folder, card_html, tool_result, answers)
    _run(page, f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars")
    assert out.is_file() and out.stat().st_size > 10_000, "no screenshot written"
    return out
