"""A version's hold-out answers: generated once, kept with the version, reused after.

Step N's "after" is step N+1's "before" (the same weights, the same hold-out), so the job
writes the answers into the version folder (``holdout_answers.json``, keyed by the
version's content hash, the hold-out's sha256 and the generation settings); the folder
is committed, pushed and synced with the model, so a later step, local or remote, reuses
them instead of paying for the generation again. The file also carries the best version
on the current line (its answers), which the gate compares the new version with.

On CUDA, continuous batching (transformers' ``generate_batch``) answers the hold-out only
where a probe shows it faster than padded batches (``answer_holdout``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_common import atomic_write_text
    from .job_evaluate import LOWER_IS_BETTER, HoldOut, generate_answers
else:  # a sibling of the job script, whose folder is on sys.path
    from job_common import atomic_write_text
    from job_evaluate import LOWER_IS_BETTER, HoldOut, generate_answers


def continuous_unavailable(model) -> str | None:
    """Why transformers' continuous batching (``generate_batch``) cannot answer, or None."""
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "the model has no parameters"
    if device.type != "cuda":
        return f"the model is on {device.type}, and continuous batching is for CUDA"
    if not callable(getattr(model, "generate_batch", None)):
        return "this transformers release has no generate_batch"
    return None


def generate_answers_continuous(model, tokenizer, prompts: list[list[dict]],
                                max_new_tokens: int) -> list[str | None]:
    """Greedy answers through ``model.generate_batch`` (paged attention, no padding);
    None where a request failed or went missing (the caller answers those padded)."""
    from transformers import GenerationConfig

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    try:
        results = model.generate_batch(inputs=ids, generation_config=gen_cfg)
    finally:
        model.train(was_training)
    outputs = list(results.values())
    if len(outputs) != len(prompts):  # a request went missing: order is not trustworthy
        return [None] * len(prompts)
    return [None if getattr(out, "error", None) else
            tokenizer.decode(out.generated_tokens, skip_special_tokens=True)
            for out in outputs]


def answer_holdout(model, tokenizer, prompts: list[list[dict]], budget: int, batch_size: int,
                   autocast: str | None, clock=time.monotonic) -> tuple[list[str], str]:
    """The hold-out's answers and how they were made.

    Padded batches everywhere; on CUDA the first two batches' prompts are answered both
    ways, and continuous batching answers the rest only if it was faster there (it has
    not been measured on the GPUs tunestep targets, so it has to earn its place). A
    failure of continuous batching falls back to padded batches.
    """
    why_not = continuous_unavailable(model)
    probe_n = 2 * batch_size
    if why_not is not None or len(prompts) <= probe_n:
        how = "padded batches" + (f" ({why_not})" if why_not else "")
        return generate_answers(model, tokenizer, prompts, budget, batch_size, autocast), how
    probe = prompts[:probe_n]
    t0 = clock()
    answers = generate_answers(model, tokenizer, probe, budget, batch_size, autocast)
    padded_s = clock() - t0
    try:
        t0 = clock()
        generate_answers_continuous(model, tokenizer, probe, budget)
        continuous_s = clock() - t0
    except Exception as exc:  # any failure of the optional path means: stay padded
        rest = generate_answers(model, tokenizer, prompts[probe_n:], budget, batch_size,
                                autocast)
        return answers + rest, f"padded batches (continuous batching failed: {exc})"
    rest_prompts = prompts[probe_n:]
    if continuous_s < padded_s:
        rest = generate_answers_continuous(model, tokenizer, rest_prompts, budget)
        missing = [i for i, a in enumerate(rest) if a is None]
        if missing:
            redo = generate_answers(model, tokenizer, [rest_prompts[i] for i in missing],
                                    budget, batch_size, autocast)
            for i, text in zip(missing, redo, strict=True):
                rest[i] = text
        how = (f"continuous batching (probe of {probe_n} prompts: {continuous_s:.1f}s against "
               f"{padded_s:.1f}s padded)")
        return answers + [a or "" for a in rest], how
    rest = generate_answers(model, tokenizer, rest_prompts, budget, batch_size, autocast)
    return answers + rest, (f"padded batches (probe of {probe_n} prompts: {padded_s:.1f}s "
                            f"against {continuous_s:.1f}s with continuous batching)")


# ---------------------------------------------------------------------------------------
# Kept answers

ANSWERS_FILE = "holdout_answers.json"
# Files of a version folder that are not the model: reports, the kept answers themselves,
# and what a Hub download adds (.cache/, .gitattributes).
_NOT_MODEL = {ANSWERS_FILE, "tunestep_version.json", "README.md"}


def version_content_hash(folder) -> str:
    """sha256 over a version folder's model files (weights, config, tokenizer): what the
    answers were generated by. Paths and bytes both count; reports and dot-entries do not."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(folder)
        if (rel.parts[0] in _NOT_MODEL or rel.parts[0] == "checkpoints"
                or any(part.startswith(".") for part in rel.parts)):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def generation_key(holdout_sha256: str, holdout: HoldOut, budget: int, template: str | None,
                   base_model: str, mode: str) -> dict:
    """What the answers depend on besides the weights: the hold-out file and the prompts
    cut from it (a max_length change can shorten them), the token budget, the chat
    template that renders them, and greedy decoding without thinking. (Batch size does
    not: left-padded batched greedy equals one-by-one.)"""
    prompts = json.dumps(holdout.prompts, sort_keys=True, ensure_ascii=False)
    return {"holdout_sha256": holdout_sha256,
            "prompts_sha256": hashlib.sha256(prompts.encode()).hexdigest(),
            "max_new_tokens": budget,
            "chat_template_sha256": hashlib.sha256((template or "").encode()).hexdigest(),
            "decoding": "greedy, enable_thinking=False", "mode": mode,
            "base_model": base_model if mode == "lora" else None}


def kept_answers(folder, key: dict, rows: int) -> tuple[list[str] | None, dict | None, str]:
    """(answers, the line's best, why) from a version folder's ``holdout_answers.json``.

    The answers come back only when they were generated by exactly this folder's model
    (its content hash) under ``key``; otherwise None and the reason, and the caller
    generates them. The line's best comes back when it was generated under ``key`` too.
    """
    if folder is None:
        return None, None, "the previous version is the base model (no kept answers)"
    path = Path(folder) / ANSWERS_FILE
    if not path.is_file():
        return None, None, f"{ANSWERS_FILE} is not in the previous version's folder"
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, None, f"{ANSWERS_FILE} cannot be read ({exc})"
    if not isinstance(kept, dict):
        return None, None, f"{ANSWERS_FILE} is not an object"
    best = kept.get("line_best")
    if not (isinstance(best, dict) and best.get("key") == key
            and isinstance(best.get("answers"), list) and len(best["answers"]) == rows
            and best.get("version") != kept.get("version")):  # itself: no second comparison
        best = None
    if kept.get("key") != key:
        return None, best, ("kept answers were made under other settings (hold-out, "
                            "budget, template)")
    if kept.get("model_sha256") != version_content_hash(folder):
        return None, best, "the version's files changed since its answers were kept"
    answers = kept.get("answers")
    if not (isinstance(answers, list) and len(answers) == rows
            and all(isinstance(a, str) for a in answers)):
        return None, best, "kept answers do not cover this hold-out"
    return answers, best, "reused"


def keep_answers(folder, key: dict, label: str, answers: list[str], line_best: dict) -> None:
    """Write ``holdout_answers.json`` into a (staged) version folder, after its model files."""
    atomic_write_text(Path(folder) / ANSWERS_FILE, json.dumps({
        "version": label, "key": key, "model_sha256": version_content_hash(folder),
        "answers": answers, "line_best": line_best}) + "\n")


def better_or_equal(metric: str, candidate: float | None, incumbent: float | None) -> bool:
    if candidate is None:
        return False
    if incumbent is None:
        return True
    return candidate <= incumbent if metric in LOWER_IS_BETTER else candidate >= incumbent


def before_answers(model, tokenizer, holdout: HoldOut, key: dict, folder, budget: int,
                   batch_size: int, autocast: str | None, log) -> dict:
    """The previous version's answers: kept ones when they match, else generated.

    ``{answers, seconds, how, reused, line_best}``; ``line_best`` is the best version on
    the line as the previous version's file recorded it (None: the previous version is
    the best there is, or nothing was recorded).
    """
    rows = len(holdout.prompts)
    answers, best, why = kept_answers(folder, key, rows)
    if answers is not None:
        log(f"reused the previous version's kept answers on {rows} hold-out rows "
            f"({ANSWERS_FILE}: same weights, hold-out and generation settings)")
        return {"answers": answers, "seconds": 0.0, "how": "reused", "reused": True,
                "why": why, "line_best": best}
    t0 = time.monotonic()
    answers, how = answer_holdout(model, tokenizer, holdout.prompts, budget, batch_size,
                                  autocast)
    seconds = time.monotonic() - t0
    log(f"evaluated the previous version on {rows} hold-out rows in {seconds:.1f}s "
        f"(max_new_tokens={budget}, {how}; not reused: {why})")
    return {"answers": answers, "seconds": seconds, "how": how, "reused": False,
            "why": why, "line_best": best}


def next_line_best(metric: str, promoted: bool, report: dict, before_label: str,
                   before: list[str], after_label: str, after: list[str],
                   line_best: dict | None, key: dict) -> dict:
    """The best version on the line once this step is done, for the new version's file.

    The line's best before this step is the recorded one, or the previous version when
    none is recorded; a promoted version at least as good (the gate's metric, point
    estimate on this hold-out) takes its place.
    """
    if line_best is not None:
        incumbent = {"version": line_best["version"], "answers": line_best["answers"],
                     "key": key}
        value = (report.get("versus_best") or {}).get("metrics", {}).get(metric, {}).get(
            "value")
    else:
        incumbent = {"version": before_label, "answers": before, "key": key}
        value = report["before"][metric]["value"]
    if promoted and better_or_equal(metric, report["after"][metric]["value"], value):
        return {"version": after_label, "answers": after, "key": key}
    return incumbent


def version_label(folder) -> str:
    """``versions/<name>`` of the folder a step resumed from (its kept answers say; else
    the store's layout), or "base" for a fresh start: the plot's parent of the step."""
    if folder is None:
        return "base"
    path = Path(folder)
    try:
        label = json.loads((path / ANSWERS_FILE).read_text(encoding="utf-8")).get("version")
        if isinstance(label, str):
            return label
    except (OSError, ValueError, AttributeError):
        pass
    resolved = path.resolve()
    return f"versions/{resolved.name}" if resolved.parent.name == "versions" else str(path)
