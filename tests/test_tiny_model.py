"""The tiny offline model of trainers/tiny.py: deterministic, loads with the Auto classes, chats."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from trainers.tiny import EOS_TOKEN, PAD_TOKEN, build_tiny_lm, main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_build_is_deterministic(tiny_dir: Path, tmp_path: Path):
    again = build_tiny_lm(tmp_path / "again", seed=0)
    assert again == tmp_path / "again"
    names = sorted(p.name for p in tiny_dir.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names and "config.json" in names
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes(), name

    other = build_tiny_lm(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_loads_with_auto_classes_and_generates(tiny_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen2"
    assert 300 <= len(tokenizer) <= 1000
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    text = "What is 12 + 30? héllo 🙂"
    assert tokenizer.decode(tokenizer(text).input_ids) == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    no_gen = tokenizer.apply_chat_template(messages[1:], tokenize=False)
    assert no_gen == "<|im_start|>user\nhi<|im_end|>\n"
    ids = tokenizer(prompt, return_tensors="pt")
    assert ids.input_ids[0, 0].item() == tokenizer.convert_tokens_to_ids("<|im_start|>")

    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=8, do_sample=True)
    new = out[0, ids.input_ids.shape[1] :]
    assert 1 <= len(new) <= 8
    assert isinstance(tokenizer.decode(new, skip_special_tokens=True), str)
    greedy = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert greedy.shape[1] > ids.input_ids.shape[1]


def test_cli_prints_out_dir(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    main([str(out), "--seed", "3"])
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
