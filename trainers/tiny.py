"""A tiny random Qwen2-style causal LM, built offline in a couple of seconds.

It exists for tests and for `veri-box demo`: no model hub is needed, it runs on a CPU, and TRL's
GRPOTrainer visibly raises a simple reward with it within a few dozen steps (see
`bench/tiny_grpo_learning.py`). It is not meant to say anything sensible.

`build_tiny_lm(out_dir, seed)` writes a normal Hugging Face model folder (model.safetensors,
config.json, generation_config.json, tokenizer.json, tokenizer_config.json, chat template) that
loads back with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`. The
tokenizer is a byte-level BPE trained with the `tokenizers` library on a small built-in corpus, so
any text round-trips. Its chat template is Qwen's ChatML (`<|im_start|>role\\n...<|im_end|>\\n`).
The same seed gives byte-identical files.

CLI: `python -m trainers.tiny OUT_DIR [--seed N]` builds the model and prints OUT_DIR.

torch, transformers and tokenizers are imported inside the functions only.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START_TOKEN, EOS_TOKEN]  # ids 0, 1, 2

VOCAB_SIZE = 512

# Architecture. initializer_range 0.2 (ten times Qwen's 0.02) gives the random policy a somewhat
# peaky next-token distribution (entropy ~5.0 nats against ln 512 = 6.2; top token ~12%) that
# GRPO shifts within ~15-25 steps. Measured with bench/tiny_grpo_learning.py (30 steps, seed 0):
# at 0.02 LoRA does not learn at all and full fine-tuning learns slowly; at 0.5 both learn slower.
MODEL_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    use_cache=True,
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

_WORDS = (
    "the a an and or not is are was be to of in on at for with from by as it this that you we they "
    "he she one two three four five six seven eight nine ten zero what how why when where who which "
    "say tell give write count add sum plus minus times divided equals answer question number letter "
    "word words short long yes no true false hello hi good bad cat dog sun moon red blue green big "
    "small first last next before after please thanks something anything nothing here there"
).split()
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def _corpus() -> list[str]:
    """A few hundred English-ish lines: numbers, letters, short words, simple math questions.
    Fixed (it does not depend on the model seed), so every tiny model shares one tokenizer."""
    rng = random.Random(1234)
    lines: list[str] = []
    for _ in range(120):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op, result = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        lines.append(f"What is {a} {op} {b}? The answer is {result}.")
    for _ in range(60):
        n = rng.randint(0, 10)
        lines.append(f"Count to {n}: " + " ".join(str(i) for i in range(1, n + 1)) + f". That is {_NUMBER_WORDS[n]}.")
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(26):
        lines.append(f"The letter {letters[i]} comes after {letters[i - 1]}. {letters[: i + 1].upper()}")
    for _ in range(200):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!"]))
    for _ in range(40):
        lines.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12))))
    for role in ("system", "user", "assistant"):
        lines += [f"{role}\nYou are a helpful assistant."] * 3
    lines += ["Say something:", "Tell me a number.", "Write a short word.", "Hello! How are you?"]
    return lines


def _build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # The same normalizer and pre-tokenizer as transformers' Qwen2Tokenizer, which is what
    # AutoTokenizer rebuilds for a model_type "qwen2" folder: the saved and the loaded tokenizer
    # then split text identically (single digits, byte-level, NFC).
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny model and its tokenizer and save both into `out_dir` (created if missing).
    Deterministic: the same seed writes the same files. Returns `out_dir` as a Path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **MODEL_CONFIG,
    )
    # Seed a private generator state: build without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=True, temperature=1.0
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_lm(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
