"""Build a tiny, random Qwen3 causal LM with a locally trained tokenizer, fully offline.

Tests and the demo need a model that loads through the same ``Auto*`` classes as
``Qwen/Qwen3-0.6B`` and speaks the same chat format, but nothing may be downloaded and a
test must not wait minutes. ``build_tiny_model`` writes such a model in a couple of seconds:

- a byte-level BPE tokenizer (~1000 tokens) trained with ``tokenizers`` on a small English
  + code corpus generated here, plus Qwen3's special tokens (``<|endoftext|>`` pads,
  ``<|im_end|>`` ends a turn and is the eos);
- TRL's Qwen3 *training* chat template, which wraps assistant output in
  ``{% generation %}`` markers so ``assistant_only_loss=True`` can mask the prompt;
- a ``Qwen3ForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 kv heads) with random weights
  and a vocabulary exactly as large as the tokenizer.

Everything is seeded, so two builds with the same seed write byte-identical weights.
"""

from __future__ import annotations

import random
from pathlib import Path

# Qwen3's special tokens in the order Qwen3 numbers them (151643 onwards), so ids keep
# the same relative layout as the real vocabulary: regular tokens first, specials last.
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added (not special) tokens in Qwen3: they must stay visible in decoded text, because
# the chat template and response parsers look for them.
QWEN3_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

TINY_VOCAB_SIZE = 1024  # BPE size before the special tokens are appended
TINY_ARCH = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,  # Qwen3Config defaults to 128; hidden/heads keeps the model tiny
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,  # as in Qwen3-0.6B
}


def training_chat_template() -> str:
    """TRL's Qwen3 training template (with ``{% generation %}`` markers), read from trl."""
    from importlib.resources import files

    return files("trl").joinpath("chat_templates/qwen3_training.jinja").read_text(encoding="utf-8")


_WORD_TEXT = (  # vocabulary for the corpus, kept compact as one string
    "the a an and or but if then else when while for with without from into over under "
    "this that these those it its is are was were be been being have has had do does did "
    "code page form button input output header footer layout style script function class "
    "method value values variable constant string number array object list map filter "
    "reduce element elements attribute attributes event events handler request response "
    "server client browser screen mobile desktop responsive accessible semantic markup "
    "error errors warning bug bugs test tests testing review reviews grade grades score "
    "quality readable readability naming names clear clean simple complex duplicate "
    "repeated repeats structure structured module modules component components state "
    "props render renders rendering update updates loop loops index indexes query queries "
    "database table tables column columns row rows user users account accounts login "
    "password token session cookie cookies security secure insecure escape escapes "
    "validate validates validation sanitize performance fast slow cache caching memory "
    "async await promise promises callback callbacks fetch json html css javascript "
    "python typescript react vue node express django flask route routes endpoint "
    "endpoints template templates image images link links navigation menu modal dialog "
    "grid flex flexbox margin padding border color colors font fonts width height "
    "should could would must good great poor bad better best worse missing needs "
    "improve improves improvement split smaller larger small large long short line "
    "lines file files folder comment comments document documentation explain explains "
    "because since however although overall solid works working broken fix fixes fixed"
)


def _corpus(seed: int) -> list[str]:
    """A few thousand lines of English, HTML/CSS/JS/Python and grading-shaped text."""
    rng = random.Random(seed)
    words = _WORD_TEXT.split()
    code = [
        '<div class="card"><h1>Title</h1><p>Hello world</p></div>',
        '<button type="submit" onclick="save()">Save</button>',
        '<img src="logo.png" alt="Company logo" width="120">',
        "body { margin: 0; font-family: sans-serif; display: flex; }",
        ".grid { display: grid; grid-template-columns: repeat(3, 1fr); gap: 1rem; }",
        "function add(a, b) { return a + b; }",
        "const items = data.filter((x) => x.active).map((x) => x.name);",
        "fetch('/api/users').then((r) => r.json()).then(render);",
        "export default function App() { return <main>{children}</main>; }",
        "def grade(code: str) -> int:\n    return len(code) % 10",
        "for i in range(10):\n    print(i)",
        "import json\nwith open('data.json') as f:\n    rows = json.load(f)",
        "SELECT id, name FROM users WHERE active = 1 ORDER BY name;",
    ]
    lines = []
    for _ in range(600):
        words = [rng.choice(words) for _ in range(rng.randint(6, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ":"]))
        lines.append(rng.choice(code))
        grade = rng.randint(0, 10)
        lines.append(f"Review: {' '.join(rng.sample(words, 5))}. Grade: {grade}")
        lines.append(f"Grade this code from 0 to 10:\n{rng.choice(code)}\nGrade: {grade}/10")
    return lines


def _train_tokenizer(seed: int):
    """Byte-level BPE trained on the built-in corpus, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte level like Qwen: every string encodes, nothing maps to an unknown token.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    # Added on the raw tokenizer, in Qwen3's order, so their ids follow the BPE vocabulary
    # in the same sequence as in the real model (<|endoftext|>, <|im_start|>, <|im_end|>, ...).
    tok.add_special_tokens(list(QWEN3_SPECIAL_TOKENS))
    tok.add_tokens(list(QWEN3_ADDED_TOKENS))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN3_SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_ARCH["max_position_embeddings"],
    )
    fast.chat_template = training_chat_template()
    return fast


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen3 model and its tokenizer to ``out_dir``; return ``out_dir``.

    The folder loads offline with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)``. Deterministic for a given ``seed``.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(seed)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=pad_id,  # Qwen3 uses <|endoftext|> as bos and pad
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **TINY_ARCH,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # Greedy by default (Qwen3 ships sampling defaults) so generations in tests are stable;
    # both end tokens stop generation, as in Qwen3's own generation config.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
