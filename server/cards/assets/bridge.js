"use strict";
// The app side of MCP Apps (SEP-1865): JSON-RPC 2.0 over postMessage with the host.
// The card sends ui/initialize, then ui/notifications/initialized; the host delivers
// ui/notifications/tool-result (the CallToolResult of the tool the card belongs to) and
// answers tools/call, which it forwards to the tunestep server. Plain script, no build
// step, no network: the card's CSP allows nothing else.
const PROTOCOL_VERSION = "2026-01-26";

const Bridge = (() => {
  let nextId = 1;
  const pending = new Map();
  const listeners = {};
  const post = (message) => window.parent.postMessage(message, "*");

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent) return;  // only the host speaks to the card
    const msg = event.data;
    if (!msg || msg.jsonrpc !== "2.0") return;
    if (msg.method === undefined) {  // a response to one of our requests
      const waiter = pending.get(msg.id);
      if (!waiter) return;
      pending.delete(msg.id);
      if (msg.error) waiter.reject(new Error(String(msg.error.message || "host error")));
      else waiter.resolve(msg.result || {});
      return;
    }
    if (msg.id !== undefined) {  // a request from the host
      if (msg.method === "ui/resource-teardown") post({ jsonrpc: "2.0", id: msg.id, result: {} });
      else post({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: "method not found" } });
      return;
    }
    (listeners[msg.method] || []).forEach((fn) => fn(msg.params || {}));
  });

  function request(method, params) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      post({ jsonrpc: "2.0", id, method, params });
    });
  }

  return {
    on(method, fn) { (listeners[method] = listeners[method] || []).push(fn); },
    async connect(name) {
      const init = await request("ui/initialize", {
        protocolVersion: PROTOCOL_VERSION,
        appInfo: { name, version: "1" },
        appCapabilities: {},
      });
      post({ jsonrpc: "2.0", method: "ui/notifications/initialized", params: {} });
      return init;
    },
    // A server tool through the host; its structuredContent, or an Error with its text.
    async callTool(name, args) {
      const result = await request("tools/call", { name, arguments: args });
      if (result.isError) throw new Error(resultText(result));
      return result.structuredContent || {};
    },
    reportSize() {
      const root = document.documentElement;
      post({ jsonrpc: "2.0", method: "ui/notifications/size-changed",
             params: { width: root.scrollWidth, height: root.scrollHeight } });
    },
  };
})();

function resultText(result) {
  return (result.content || []).filter((c) => c && c.type === "text").map((c) => c.text).join("\n");
}

// What a workspace string shows: control, bidi and zero-width characters as visible
// escapes (the terminal screens' rule, server/render.py safe_text); always text, never markup.
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
function shown(value) {
  if (value === null || value === undefined || value === "") return "\u2014";
  return String(value).replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
                        : "\\u" + code.toString(16).padStart(4, "0");
  });
}

// An element whose children are nodes or text (a string becomes a text node: never parsed).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
  }
  return node;
}

function badge(signed) {
  return signed ? el("span", { class: "badge signed" }, "signed")
                : el("span", { class: "badge unsigned" }, "not signed: estimate / note");
}

function section(id, title, signed, ...body) {
  return el("section", { "data-section": id }, el("h2", {}, title, " ", badge(signed)), ...body);
}

// A two-column table of [label, value, field] rows; the field names the cell for tests
// and for people reading the DOM.
function pairs(rows) {
  return el("table", { class: "pairs" }, rows.map(([label, value, field]) =>
    el("tr", { "data-field": field || label }, el("th", {}, label), el("td", {}, value))));
}

function grid(headers, rows, field) {
  return el("table", { class: "grid", "data-field": field },
    el("tr", {}, headers.map((h) => el("th", {}, h))),
    rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c)))));
}

function commandBox(id, command, hint) {
  const pre = el("pre", { id, class: "command" }, command);
  const button = el("button", { type: "button", id: id + "-copy" }, "Copy");
  const said = el("span", { class: "copied", role: "status" });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(command);
      said.textContent = "copied";
    } catch (err) {  // no clipboard permission: select it for Ctrl+C instead
      const range = document.createRange();
      range.selectNodeContents(pre);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      said.textContent = "selected: press Ctrl+C";
    }
  });
  return el("div", { class: "command-box" }, el("p", { class: "hint" }, hint), pre,
            el("div", {}, button, " ", said));
}

function fail(root, message) {
  root.replaceChildren(el("p", { class: "error", id: "card-error" }, message));
  document.body.dataset.state = "error";
  Bridge.reportSize();
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "\u2014";
  if (typeof value === "number") return Number.isInteger(value) ? String(value)
                                                                  : value.toFixed(digits || 4);
  return value;
}
