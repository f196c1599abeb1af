"use strict";
// The results card: a job_status result. While the job runs: its progress and when to
// ask again. A finished training step: the gate's decision and reason, the hold-out
// metrics before and after with 95 % intervals, the progression of every step as a tree
// (latest's line is the trunk; a step held back or rolled back is a branch), and the
// `tunestep promote` command when the gate held this version back. Read through the
// app-only tool results_card (the ledger), never from the assistant's words.
const root = document.getElementById("card");

function interval(m) {
  if (!m || m.value === null || m.value === undefined) return "\u2014";
  const ci = (m.low !== null && m.low !== undefined && m.high !== null && m.high !== undefined)
    ? " [" + fmt(m.low) + ", " + fmt(m.high) + "]" : "";
  return fmt(m.value) + ci;
}

function renderRunning(status) {
  const p = status.progress || {};
  const rows = [
    ["status", status.status, "status"],
    ["stage", p.stage || "no event from the job yet", "stage"],
    ["epoch", p.epoch === null || p.epoch === undefined ? null
      : fmt(p.epoch, 2) + (p.epochs ? " of " + fmt(p.epochs, 2) : ""), "epoch"],
    ["hold-out rows evaluated", p.eval_rows_total ? p.eval_rows_done + " (passes of "
      + p.eval_rows_total + " rows)" : p.eval_rows_done, "eval_rows_done"],
    ["ask again in", status.ask_again_after_s ? status.ask_again_after_s + " s" : null, "ask_again"],
  ];
  root.replaceChildren(
    el("header", {}, el("h1", {}, "Job ", el("span", { "data-field": "job_id" }, status.job_id))),
    el("section", { "data-section": "progress" }, pairs(rows),
       p.last_line ? el("pre", { class: "last-line" }, p.last_line) : null));
  document.body.dataset.state = "rendered";
  Bridge.reportSize();
}

function renderEnded(status) {
  const why = (status.result || {}).error || (status.result || {}).note || "";
  root.replaceChildren(
    el("header", {}, el("h1", {}, "Job ", el("span", { "data-field": "job_id" }, status.job_id))),
    pairs([["status", status.status, "status"], ["exit code", status.exit_code, "exit_code"],
           ["why", why, "why"]]));
  document.body.dataset.state = "rendered";
  Bridge.reportSize();
}

function tree(nodes) {
  // Children under the version they trained from; a parent no step made is a root.
  const versions = new Set(nodes.map((n) => n.version));
  const children = new Map();
  const roots = [];
  nodes.forEach((n) => {
    if (n.parent && versions.has(n.parent)) {
      if (!children.has(n.parent)) children.set(n.parent, []);
      children.get(n.parent).push(n);
    } else roots.push(n);
  });
  const list = el("ul", { class: "tree", "data-field": "progression" });
  const add = (node, depth, parent) => {
    const marks = [];
    if (node.latest) marks.push(el("span", { class: "badge signed" }, "latest"));
    if (!node.on_line) marks.push(el("span", { class: "badge branch" },
      node.gate_promoted === false ? "held back by its gate" : "not in latest's line (rolled back)"));
    const metric = node.gate_metric ? node.gate_metric + " " + fmt(node.before) + " \u2192 "
      + fmt(node.after) : "";
    list.append(el("li", { class: node.on_line ? "trunk" : "branch", "data-version": node.version,
                           style: "margin-left:" + (depth * 1.5) + "em" },
      el("span", { class: "dot" }, node.on_line ? "\u25cf" : "\u25cb"), " ",
      el("strong", {}, node.version), " ",
      el("span", { class: "sub" }, "step " + node.step + ", from " + (parent || node.parent || "the base model")),
      " ", metric ? el("span", {}, metric) : null, " ", marks));
    (children.get(node.version) || []).forEach((c) => add(c, depth + 1, node.version));
  };
  roots.forEach((r) => add(r, 0, null));
  return list;
}

function renderOutcome(o) {
  const decision = o.promoted === null || o.promoted === undefined ? "no decision recorded"
    : (o.promoted ? "promoted: the new version became latest" : "held back: latest did not move");
  const parts = [
    el("header", {},
      el("h1", {}, "Step ", el("span", { "data-field": "step" }, o.step), " \u00b7 ",
         el("span", { "data-field": "batch" }, o.batch)),
      el("p", { class: "sub" }, "version ", el("code", { "data-field": "version" }, o.version),
         ", job ", el("code", {}, o.job_id), ", ", o.status)),
    el("section", { "data-section": "gate" }, el("h2", {}, "The gate's decision"),
      el("p", { class: o.promoted ? "ok" : "held", "data-field": "decision" }, decision),
      el("p", { "data-field": "reason" }, o.reason),
      o.gate ? pairs(Object.keys(o.gate).sort().map((k) => [k, String(o.gate[k]), "gate_" + k]))
             : el("p", {}, "No gate configured.")),
    el("section", { "data-section": "metrics" },
      el("h2", {}, "Hold-out metrics (95 % intervals)"),
      el("p", { class: "sub" }, (o.graded_rows ?? "?") + " of " + (o.rows ?? "?") + " hold-out rows graded"),
      o.holdout ? el("p", { class: "sub", "data-field": "holdout" }, "hold-out ",
                     el("code", {}, o.holdout.short), " (" + o.holdout.pinned_by + "): ",
                     el("code", {}, o.holdout.path)) : null,
      grid(["metric", "before", "after", "change (paired)", "p"],
        o.metrics.map((m) => [m.name, interval(m.before), interval(m.after), interval(m.change),
                              fmt(m.p_value, 3)]), "metrics")),
    el("section", { "data-section": "progression" }, el("h2", {}, "Progression"),
      el("p", { class: "sub" }, "\u25cf latest's line (" + shown(o.latest || "none") + ", moved by "
        + shown(o.moved_by || "nobody") + "); \u25cb a branch: held back or rolled back"),
      tree(o.progression)),
  ];
  if (o.promote_command) {
    parts.push(el("section", { "data-section": "promote" }, el("h2", {}, "Promote it anyway?"),
      commandBox("promote-command", o.promote_command,
        "The gate held this version back. If you want it as latest, run this in your own "
        + "terminal: it shows the version and asks for your signature.")));
  }
  root.replaceChildren(...parts);
  document.body.dataset.state = "rendered";
  Bridge.reportSize();
}

Bridge.on("ui/notifications/tool-result", async (result) => {
  const status = result.structuredContent;
  if (result.isError || !status || !status.job_id) {
    fail(root, "No job: " + (resultText(result) || "the tool returned no job_id"));
    return;
  }
  if (!status.terminal) { renderRunning(status); return; }
  if (status.status !== "succeeded") { renderEnded(status); return; }
  try {
    renderOutcome(await Bridge.callTool("results_card", { job_id: status.job_id }));
  } catch (err) {
    renderEnded(status);  // an inspection, or a step not recorded: the status says it
  }
});

Bridge.connect("tunestep-results-card").catch((err) => fail(root, "Host did not answer: " + err.message));
