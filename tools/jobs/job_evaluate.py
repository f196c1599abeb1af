"""Evaluation: greedy answers to hold-out prompts, graded against their references."""

from __future__ import annotations

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import sft_data
else:  # a sibling of the job script, whose folder is on sys.path
    import sft_data


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers, batched with left padding, thinking disabled where the template has it."""
    import torch
    from transformers import GenerationConfig

    if not prompts:
        return []
    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so answers start aligned
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            # enable_thinking is a Qwen3 template variable; other templates ignore it.
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
                     for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(**enc, generation_config=gen_cfg)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def score_samples(prompts: list[list[dict]], references: list[str | None], before: list[str],
                  after: list[str], pattern: str):
    samples = []
    for prompt, reference, b, a in zip(prompts, references, before, after, strict=True):
        samples.append({
            "prompt": prompt, "reference": reference, "before": b, "after": a,
            "grade_reference": sft_data.parse_grade(reference, pattern),
            "grade_before": sft_data.parse_grade(b, pattern),
            "grade_after": sft_data.parse_grade(a, pattern),
        })
    m_before = sft_data.grade_metrics((s["grade_reference"], s["grade_before"]) for s in samples)
    m_after = sft_data.grade_metrics((s["grade_reference"], s["grade_after"]) for s in samples)
    return samples, m_before, m_after

