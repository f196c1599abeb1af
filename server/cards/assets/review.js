"use strict";
// The review card: the draft as stored in the ledger (read through the app-only tool
// review_card, never from the assistant's words), each section marked signed when the
// draft's digest (which the operator's token signs) covers it, and the exact
// `tunestep approve` command. It has no approve button: approval is a signature made in
// the operator's terminal.
const root = document.getElementById("card");

function hours(seconds) {
  if (typeof seconds !== "number") return null;
  return seconds >= 3600 ? (seconds / 3600).toFixed(2).replace(/\.?0+$/, "") + " h"
                         : Math.round(seconds / 60) + " min";
}

function renderDraft(card) {
  const d = card.draft;
  const signed = new Set(card.signed || []);
  const cfg = d.job_config || {};
  const req = d.request || {};
  const sub = d.submission;
  const est = d.estimate || {};
  const hub = cfg.hub || {};
  // The signed manifest's own timeout and flavor where the draft has them, else the
  // submission's (signed too), else the estimate's (not signed).
  const timeoutSigned = typeof d.timeout_seconds === "number" ? signed.has("timeout_seconds")
    : Boolean(sub) && signed.has("submission");
  const timeoutSeconds = typeof d.timeout_seconds === "number" ? d.timeout_seconds
    : sub ? sub.timeout_seconds : est.timeout_seconds;
  const flavor = d.flavor || (sub ? sub.flavor : (req.flavor || "local"));
  const rv = card.review || {};
  // The approval screen's reading (tools/drafts/review.py): the signed flavor's price, the higher
  // of tunestep's table and the quote, times the timeout.
  const usdPerHour = typeof rv.usd_per_hour === "number" ? rv.usd_per_hour : est.usd_per_hour;
  const priceSource = rv.price_source || est.price_source;
  const worst = typeof rv.worst_case_usd === "number" ? rv.worst_case_usd
    : (typeof usdPerHour === "number" && typeof timeoutSeconds === "number")
      ? usdPerHour * timeoutSeconds / 3600 : null;
  const parts = [];

  parts.push(el("header", {},
    el("h1", {}, "Review draft ", el("span", { "data-field": "draft_id" }, d.draft_id)),
    el("p", { class: "sub" }, "As stored in this workspace's ledger. Your token signs its digest ",
       el("code", { "data-field": "digest" }, d.digest), ".")));

  parts.push(section("job", "The job", signed.has("request") && signed.has("job_config"), pairs([
    ["kind", d.kind, "kind"],
    ["batch", cfg.batch || d.batch, "batch"],
    ["step", cfg.step || d.step, "step"],
    ["mode", cfg.mode, "mode"],
    ["backend", req.backend || d.backend, "backend"],
    ["flavor", flavor, "flavor"],
  ])));

  parts.push(section("limits", "Timeout and worst-case cost", timeoutSigned,
    pairs([
      ["timeout", timeoutSeconds === undefined ? null
        : hours(timeoutSeconds) + " (" + timeoutSeconds + " s)" + (timeoutSigned ? "" : ", from the estimate"),
       "timeout"],
      ["worst case (whole timeout billed)", worst === null ? null : "$" + worst.toFixed(2), "worst_case_usd"],
    ]),
    el("p", { class: "note" }, (sub ? "" : "A local job: no Hub bill. ") + (timeoutSigned
      ? "The timeout is signed" : "The timeout shown is the estimate's (not signed)")
      + (sub ? "; the price per hour is an estimate (not signed)." : "."))));

  parts.push(section("estimate", "Estimate", false, pairs([
    ["expected time", est.minutes === undefined ? null : fmt(est.minutes, 1) + " min", "est_minutes"],
    ["expected cost", est.usd === undefined ? null : "$" + fmt(est.usd, 2), "est_usd"],
    ["price per hour", usdPerHour === undefined ? null : "$" + fmt(usdPerHour, 2)
      + (priceSource ? " (" + priceSource + ")" : ""), "usd_per_hour"],
    ["suggested timeout", est.suggested_timeout, "suggested_timeout"],
    ["method", est.method, "est_method"],
  ])));

  const hubRows = [
    ["model repo", hub.model_id, "hub_model_id"],
    ["visibility", hub.private === undefined ? null : (hub.private ? "private" : "PUBLIC"), "hub_visibility"],
    ["push the model", hub.push === undefined ? null : (hub.push ? "yes" : "no"), "hub_push"],
  ];
  if (sub) {
    hubRows.push(["reports repo", sub.dataset_repo, "dataset_repo"]);
    hubRows.push(["image", sub.image, "image"]);
    hubRows.push(["secrets (by name)", (sub.secrets || []).join(", ") || "none", "secrets"]);
  }
  parts.push(section("hub", "Hugging Face Hub", signed.has("job_config"), pairs(hubRows)));

  const start = d.start || {};
  const resume = cfg.resume_from;
  const point = rv.resume;
  const startRows = [
    ["base model", cfg.base_model, "base_model"],
    ["resumes from", resume || "nothing: trains from the base model", "resume_from"],
  ];
  if (point) {
    startRows.push(["start", point.uri || point.name, "resume_point"]);
    startRows.push(["pinned by", point.uri ? "the Hub commit in its address"
      : point.identity ? "sha256 " + point.identity + " over its " + point.files + " signed files"
      : "nothing signed pins its content", "resume_pinned"]);
  }
  if (rv.merge) {  // a full step on a LoRA adapter: merged into its base first
    startRows.push(["merges", "LoRA adapter " + rv.merge.adapter + " into its base "
      + rv.merge.base + ", then trains in full", "merge"]);
    startRows.push(["base pinned by", rv.merge.files ? "sha256 " + rv.merge.identity
      + " over its " + rv.merge.files + " signed files"
      : "its Hub id (a base is named, not hashed)", "merge_pinned"]);
  }
  const checkpoint = (d.files || []).filter((f) => f.role === "checkpoint");
  parts.push(section("start", "Where it starts", signed.has("job_config"), pairs(startRows),
    checkpoint.length ? grid(["checkpoint file", "sha256"],
      checkpoint.map((f) => [f.path, f.sha256]), "checkpoint_files") : null,
    start.described ? el("p", { class: "note" }, "In words" + (signed.has("start") ? ": "
      : " (not signed): "), start.described) : null));

  const files = (d.files || []).filter((f) => f.role !== "checkpoint" && f.role !== "script");
  const scripts = (d.files || []).filter((f) => f.role === "script");
  parts.push(section("files", "Data and job files", signed.has("files"),
    grid(["role", "path", "rows", "sha256"],
      files.map((f) => [f.role, f.path, fmt(f.rows), f.sha256]), "files"),
    scripts.length ? el("details", {},
      el("summary", {}, scripts.length + " job script files, each pinned by its sha256"),
      grid(["file", "sha256"], scripts.map((f) => [f.path, f.sha256]), "scripts")) : null));

  const regimeSigned = signed.has("regime") && signed.has("sources");
  parts.push(section("regime", "How the rows were chosen", regimeSigned,
    pairs([["regime", d.regime, "regime"]]),
    (d.sources || []).length ? grid(["part", "source", "rows", "trained", "why"],
      d.sources.map((s) => [s.part, s.path, fmt(s.rows), fmt(s.trained), s.why]), "sources") : null,
    regimeSigned ? null
      : el("p", { class: "note" }, "The plan's data regime, as a note; what runs is the signed file list above.")));

  const gate = cfg.gate;
  parts.push(section("gate", "Promotion gate", signed.has("job_config"), gate
    ? pairs(Object.keys(gate).sort().map((k) => [k, String(gate[k]), "gate_" + k]))
    : el("p", { "data-field": "gate" }, "No gate: the new version becomes latest whatever it scores.")));

  const hp = cfg.hyperparameters || {};
  // Numbers as JavaScript writes them (shortest exact form): 0.003, not 0.003000.
  const hpRows = Object.keys(hp).sort().map((k) => [k, String(hp[k]), "hp_" + k]);
  if (cfg.lora) Object.keys(cfg.lora).sort().forEach((k) => hpRows.push(["lora " + k, JSON.stringify(cfg.lora[k]), "lora_" + k]));
  parts.push(section("hyperparameters", "Hyperparameters", signed.has("job_config"), pairs(hpRows)));

  if ((d.warnings || []).length) {
    parts.push(section("warnings", "Warnings", false,
      el("ul", { "data-field": "warnings" }, d.warnings.map((w) => el("li", {}, w)))));
  }

  parts.push(el("section", { "data-section": "approve" },
    el("h2", {}, "Approve in your terminal"),
    commandBox("approve-command", d.approve_command,
      "This card cannot approve. Run this in your own terminal; it shows the same draft, "
      + "asks for your key's passphrase and prints a token to paste back into the chat.")));

  root.replaceChildren(...parts);
  document.body.dataset.state = "rendered";
  Bridge.reportSize();
}

Bridge.on("ui/notifications/tool-result", async (result) => {
  const draftId = result.structuredContent && result.structuredContent.draft_id;
  if (result.isError || !draftId) {
    fail(root, "No draft to review: " + (resultText(result) || "the tool returned no draft_id"));
    return;
  }
  try {
    renderDraft(await Bridge.callTool("review_card", { draft_id: draftId }));
  } catch (err) {
    fail(root, "Could not read the stored draft: " + err.message);
  }
});

Bridge.connect("tunestep-review-card").catch((err) => fail(root, "Host did not answer: " + err.message));
