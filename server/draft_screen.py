"""The draft screen: what `tunestep draft` shows, and what `tunestep approve` shows to sign.

It renders the draft as stored, field by field from the signed manifest
(``tools/drafts/review.py`` reads them): where the job runs, its timeout and the worst case that
timeout can cost, the image, command and secrets, the model repo and whether it is
private and pushed, the Trackio destination, the gate, the hyperparameters, every input
with its rows and sha256, the resume point by name and content hash, and the workspace
the token is bound to. What is shown but not signed (the estimate, the warnings, the
reasons behind the rows) stands apart under a heading that says so. Hold-out near
matches get a section of their own. On the approval screen a short "You are signing"
block closes the screen, right above the question, so nothing that matters has scrolled
away.
"""

from __future__ import annotations

import shlex

from rich.console import Console

from tunestep.server.screen import Screen, View, duration, prose, screen, token, w
from tunestep.tools.drafts.review import DraftReview, common_folder, review

NO_VIEW = View()
CONTAINER = "/tunestep/"  # where an HF job's files are mounted (tools/drafts/draft.py HF_MOUNT)


def render_draft(console: Console | Screen, draft, view: View = NO_VIEW) -> None:
    console = screen(console)
    facts = review(draft, view.bound_to or _workspace_of(draft))
    if draft.kind == "inspect":
        console.print(f"[bold]{w(draft.draft_id)}[/]  remote inspection (step {draft.step}) "
                      f"on [bold]{w(draft.backend)}[/]")
        console.print(f"inspects    {token(draft.job_config.get('path'))}")
    else:
        console.print(f"[bold]{w(draft.draft_id)}[/]  step {draft.step} "
                      f"({token(draft.batch)}), {w(facts.mode)} fine-tune on "
                      f"[bold]{w(draft.backend)}[/]")
    console.print(f"digest      {token(draft.digest)}")
    console.print(f"workspace   {token(facts.workspace)} (the token is bound to it)")
    console.print("[bold]signed[/] (the token starts exactly this)")
    _where(console, facts)
    if draft.kind == "train":
        _what(console, draft, facts)
    _inputs(console, facts)
    _not_signed(console, draft, facts)
    _near_matches(console, facts)
    if view.approving:
        _you_are_signing(console, facts)
    else:  # on the approval screen the operator is running this already
        console.print("approve it in your own terminal:")
        console.command(draft.approve_command)


render_inspect_draft = render_draft  # one screen for both kinds: the same manifest fields


def _workspace_of(draft) -> str:
    """The workspace an approve command names (the draft does not store its root)."""
    words = shlex.split(draft.approve_command or "")
    return words[words.index("--workspace") + 1] if "--workspace" in words[:-1] else "."


def timeout_text(facts: DraftReview) -> str:
    if facts.timeout_seconds is None:
        return "none"
    return duration(facts.timeout_seconds)


def worst_text(facts: DraftReview) -> str:
    if facts.worst_case_usd is None:
        return "unbounded (no timeout)"
    usd = facts.worst_case_usd
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else f"${usd:.4f}"


def _where(console: Screen, facts: DraftReview) -> None:
    processes = f"{facts.processes} process" + ("es, one per GPU" if facts.processes > 1
                                                else "")
    if facts.backend == "local":
        console.print(f"backend     local: this machine, {processes}")
    else:
        console.print(f"backend     {w(facts.backend)}, flavor [bold]{token(facts.flavor)}[/], "
                      f"{processes}")
    if facts.timeout_seconds is not None:
        cap = "" if facts.backend == "local" else " (the billing cap)"
        console.print(f"timeout     [bold]{timeout_text(facts)}[/]: the job is stopped "
                      f"there{cap}")
    elif facts.backend == "local":
        console.print("timeout     none: a local job runs until it ends or `tunestep cancel` "
                      "stops it")
    if facts.backend != "local" or facts.usd_per_hour:
        price = {"hub": "the Hub's live price", "table": "tunestep's price table",
                 "guess": "a guess"}.get(facts.price_source, w(facts.price_source))
        console.print(f"worst case  [bold]{worst_text(facts)}[/]: {timeout_text(facts)} of "
                      f"{token(facts.flavor)} at ${facts.usd_per_hour:g}/h (price: {price}; "
                      "not signed)")
    else:
        console.print("worst case  $0: it runs on this machine")
    if facts.image:
        console.print(f"image       {token(facts.image)}")
    if facts.command:
        console.print("command     " + " ".join(token(c) for c in facts.command))
    secrets = ", ".join(token(s) for s in facts.secrets)
    console.print(f"secrets     {secrets} (by name; the job gets the value)" if secrets
                  else "secrets     none")
    if facts.dataset_repo:
        console.print(f"bundle to   {token(facts.dataset_repo)} (dataset repo: the step's "
                      "files and outputs)")


def _what(console: Screen, draft, facts: DraftReview) -> None:
    r, model = facts.resume, str(facts.base_model)
    if model.startswith(CONTAINER) and r is not None and r.source == "bundle":
        # a path inside the job's container: say which version it is
        console.print(f"model       version {token(r.name)} from the bundle (the job reads "
                      f"it at {token(model)})")
    else:
        console.print(f"model       {token(model)}")
    _resume(console, facts)
    if facts.push:
        visibility = "private" if facts.private else "[bold red]public[/]"
        console.print(f"pushes to   [bold]{token(facts.model_repo or '<you>/<model>')}[/] "
                      f"({visibility}), one commit for this step")
    else:
        console.print("pushes      nothing: the model stays in the local model store")
    console.print("trackio     " + _trackio(facts.trackio))
    gate = facts.gate
    if gate:
        margin = gate.get("margin", gate.get("max_regression"))
        console.print(f"gate        latest moves only if the whole hold-out set shows "
                      f"{token(gate.get('metric'))} not worse than latest's (and the line's "
                      f"best) by more than {margin}: the lower end of the gain's 95 % "
                      f"interval above {-margin:g}")
    else:
        console.print("gate        [yellow]none[/]: latest moves after every successful job")
    hp = facts.hyperparameters
    precision = str(hp.get("precision", "-"))
    console.print(f"training    lr {_g(hp.get('learning_rate'))}, "
                  f"{_g(hp.get('num_train_epochs'))} epochs, batch "
                  f"{hp.get('per_device_train_batch_size')}x"
                  f"{hp.get('gradient_accumulation_steps')}, max_length "
                  f"{hp.get('max_length')}, seed {hp.get('seed')}, precision {w(precision)}"
                  + _precision_note(draft, precision))
    if facts.lora:
        console.print("lora        " + ", ".join(f"{w(k)} {w(v)}"
                                                for k, v in facts.lora.items()))
    data = ", ".join(f"{w(k)} {w(v)}" for k, v in facts.data.items())
    console.print(f"data        regime {w(facts.regime or '-')}" + (f", {data}" if data else ""))


def _g(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else w(value)


def _trackio(trackio: dict) -> str:
    if not trackio:
        return "none"
    where = (f"the Space {token(trackio['space_id'])}" if trackio.get("space_id")
             else f"the local store {token(trackio.get('dir'))}")
    return f"project {token(trackio.get('project'))}, to {where}"


def _resume(console: Screen, facts: DraftReview) -> None:
    r = facts.resume
    if r is None:
        return
    if r.source == "hub":
        console.print(f"resume from [bold]{token(r.uri)}[/] (a Hub commit)")
    elif r.source == "base":
        console.print("resume from nothing: a fresh start from the model above")
    elif r.pinned:
        how = "uploaded in the step's bundle" if r.source == "bundle" else "the local store"
        console.print(f"resume from version [bold]{token(r.name)}[/] ({how}), {r.files} "
                      f"files, content sha256 {token(r.identity)}")
    else:
        console.print(f"resume from version [bold]{token(r.name)}[/] [bold red](its files are "
                      "not in the signature: weights changed after you sign would be "
                      "trained from)[/]")
    if r.path and not r.pinned and r.source != "base":  # where the unsigned files are
        console.print(f"            {token(r.path)}")
    m = facts.merge
    if m is not None:  # a full step after LoRA steps: the adapter is merged in first
        pinned = (f"{m.files} files, content sha256 {token(m.identity)}" if m.files
                  else "a Hub id")
        console.print(f"merge       LoRA adapter [bold]{token(m.adapter)}[/] merged into its "
                      f"base [bold]{token(m.base)}[/] ({pinned}), then trained in full")


def _precision_note(draft, precision: str) -> str:
    from tunestep.tools.drafts.estimate import expected_precision

    if draft.backend == "local":
        if precision == "auto":
            return " (bf16 where the GPU has it, else fp16; fp32 without CUDA)"
        if precision in ("fp16", "bf16"):
            return " (without a CUDA GPU the job falls back to fp32 and logs it)"
        return ""
    flavor = draft.submission.flavor if draft.submission else draft.request.flavor
    resolved = expected_precision(precision, flavor)
    if resolved and resolved != precision:
        return f" (trains in {resolved} on {w(flavor)})"
    return ""


def _inputs(console: Screen, facts: DraftReview) -> None:
    """Every input with its rows and sha256 prefix; the path whole on its own line."""
    console.print("inputs      (the signature covers each file's full sha256)")
    for f in facts.inputs + facts.scripts:
        rows = "" if f.rows is None else f"  {f.rows:,} rows"
        head = f"  {f.role:<9} {f.sha256[:16]}{rows}"
        if len(head) + 2 + len(token(f.path)) <= console.width:
            console.print(f"{head}  {token(f.path)}")
        else:  # the path alone on the next line: never broken
            console.print(head)
            console.print(f"    {token(f.path)}")
    if facts.checkpoint:
        folder = common_folder([f.path for f in facts.checkpoint])
        console.print(f"  checkpoint {len(facts.checkpoint)} files in {token(folder + '/')}")
        for f in facts.checkpoint:
            console.print(f"    {f.sha256[:16]}  {token(f.path[len(folder) + 1:])}")
    if facts.merge_base:
        folder = common_folder([f.path for f in facts.merge_base])
        console.print(f"  merge base {len(facts.merge_base)} files in {token(folder + '/')}")
        for f in facts.merge_base:
            console.print(f"    {f.sha256[:16]}  {token(f.path[len(folder) + 1:])}")


def _not_signed(console: Screen, draft, facts: DraftReview) -> None:
    est = draft.estimate
    console.print("[bold]not signed[/] (estimates and notes: nothing the job does depends on "
                  "them)")
    if draft.kind == "inspect":
        console.print(f"estimate    {est.rows:,} rows, {_minutes(est.minutes)}, about "
                      f"${est.usd:.4f} on {token(est.flavor)} (at most ${est.max_usd:.4f})")
    else:
        console.print(f"estimate    {est.total_tokens:,} tokens, {_minutes(est.minutes)}, "
                      f"about ${est.usd:.2f} on {token(est.flavor)}"
                      + (f" ({est.processes} GPUs, one process each, batch "
                         f"{getattr(est, 'effective_batch', 0) or '?'})"
                         if getattr(est, "processes", 1) > 1 else "")
                      + f"; suggested timeout {w(est.suggested_timeout)}")
        if getattr(est, "eval_rows", 0):  # counted in the estimate above
            passes = getattr(est, "eval_passes", 2)
            # the budget the job will use: "~" where the tokenizer was not at hand
            budget = "" if getattr(est, "eval_budget", "estimated") == "exact" else "~"
            console.print(f"evaluation  ~{_minutes(est.eval_minutes)} of it: "
                          f"{est.eval_rows:,} rows x {passes} "
                          f"version{'s' if passes > 1 else ''}"
                          + (" (the previous one's answers are kept)" if passes == 1
                             else "")
                          + f", up to {budget}{est.eval_max_new_tokens:,} new tokens a row")
    if getattr(draft, "sources", None):
        console.print("trains on   (why these rows; the rows are the inputs above)")
        for use in draft.sources:
            console.print(f"  {use.trained:,} of {use.rows:,} rows  {token(use.part)}: "
                          f"{w(use.why)}", hang=4)
    lengths = getattr(draft, "lengths", None)
    if lengths is not None and lengths.overlong:
        prose(console, f"lengths: {lengths.overlong:,} row(s) over max_length "
                       f"{lengths.max_length:,} (the longest {lengths.longest:,} tokens), "
                       f"handled per data.overlong ({lengths.policy})")
    for warning in facts.warnings:
        prose(console, f"warning: {warning}", style="yellow")


def _minutes(minutes: float) -> str:
    return duration(minutes * 60) if minutes < 600 else f"about {minutes / 60:.0f} h"


def _near_matches(console: Screen, facts: DraftReview) -> None:
    if not facts.near_matches:
        return
    console.print(f"[bold red]HOLD-OUT NEAR MATCHES: {len(facts.near_matches)}[/] [bold]"
                  "training rows close to hold-out rows; the gate would measure rows the "
                  "model has nearly seen. Read them before you sign.[/]")
    for match in facts.near_matches:
        prose(console, f"  ! {match}", style="red", indent=0)


def _you_are_signing(console: Screen, facts: DraftReview) -> None:
    """The last block before the question: what matters, short enough to stay in view."""
    where = "this machine" if facts.backend == "local" else \
        f"{w(facts.backend)} {token(facts.flavor)} x{facts.processes}"
    console.print("")
    console.print("[bold]You are signing[/]")
    console.print(f"  draft       {token(facts.draft_id)}, step {facts.step} "
                  f"({token(facts.batch)})", hang=14)
    console.print(f"  digest      {token(facts.digest)}")
    console.print(f"  runs on     {where}, timeout {timeout_text(facts)}, worst case "
                  f"[bold]{worst_text(facts)}[/]", hang=14)
    if facts.resume is not None:
        r = facts.resume
        start = (token(r.uri) if r.source == "hub" else
                 "the base model " + token(facts.base_model) if r.source == "base" else
                 f"{token(r.name)} sha256 {token((r.identity or '')[:16])}" if r.pinned else
                 f"{token(r.name)} [bold red](unpinned)[/]")
        console.print(f"  starts from {start}", hang=14)
    train = [f for f in facts.inputs if f.role in ("train", "tokenized")]
    held = sum(f.rows or 0 for f in facts.inputs if f.role == "eval")
    # Which hold-out: after a re-pin the operator sees the gate measures the new bytes.
    held_sha = next((f.sha256[:12] for f in facts.inputs if f.role == "eval"), "")
    if facts.kind == "train":
        console.print(f"  trains on   {facts.train_rows:,} rows in {len(train)} file(s), "
                      f"gates on {held:,} hold-out rows (sha256 {token(held_sha)})", hang=14)
    else:
        rows = sum(f.rows or 0 for f in facts.inputs if f.role == "inspect")
        console.print(f"  inspects    {rows:,} rows", hang=14)
    if facts.kind == "train":
        push = (f"{token(facts.model_repo)} ({'private' if facts.private else 'PUBLIC'})"
                if facts.push else "nothing")
        console.print(f"  pushes to   {push}", hang=14)
    console.print(f"  workspace   {token(facts.workspace)}", hang=14)
    if facts.near_matches:
        console.print(f"  [bold red]{len(facts.near_matches)} hold-out near match(es): "
                      "see above[/]", hang=14)
