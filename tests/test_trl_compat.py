"""trainers/trl_compat.py against the installed TRL: the version is the pinned one, and every
internal the GRPO trainer reads is where the adapter looks, with the shapes it expects, after
one real training step of the tiny model. An upgrade of TRL that moves any of them fails here."""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from trainers import grpo, trl_compat

ROOT = Path(__file__).resolve().parent.parent


def pinned_trl() -> SpecifierSet:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in dependencies if re.match(r"trl\b", d))
    return SpecifierSet(spec.removeprefix("trl"))


def test_the_installed_trl_is_the_pinned_minor():
    spec = pinned_trl()
    assert version("trl") in spec, f"trl {version('trl')} is installed; pyproject.toml pins {spec}"
    assert any(s.operator == "<" for s in spec), f"pin trl below the next minor, not only from below: {spec}"


def test_grpo_trainer_log_takes_what_the_override_passes():
    from trl import GRPOTrainer

    names = tuple(inspect.signature(GRPOTrainer.log).parameters)
    assert names == trl_compat.LOG_PARAMETERS, names


class Recorder:
    def __init__(self):
        self.samples = []

    def sample(self, step: int, **fields) -> None:
        self.samples.append({"step": step, **fields})


def length(completions, **kwargs):
    return [float(len(c)) for c in completions]


def has_a(completions, **kwargs):
    return [float("a" in c) for c in completions]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GRPO trainer of the tiny model (our subclass) after one step on the CPU."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from trainers.tiny import build_tiny_lm

    tmp = tmp_path_factory.mktemp("trl")
    model_dir = build_tiny_lm(tmp / "model", seed=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    args = GRPOConfig(
        output_dir=str(tmp / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        reward_weights=[1.0, 0.5],
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = grpo._trainer_class(GRPOTrainer)(
        model=transformers.AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=[length, has_a],
        args=args,
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in ["a b", "c d", "e f", "g h"]]),
        processing_class=tokenizer,
    )
    trainer.veri_progress = Recorder()
    trainer.train()
    return trainer


def test_the_rollouts_of_the_last_step_are_where_the_adapter_reads_them(trained):
    assert set(trl_compat.ROLLOUT_LOGS) <= set(trained._logs), sorted(trained._logs)
    logged = trl_compat.rollouts(trained)
    n = len(logged.completions)
    assert n == 4 and len(logged.prompts) == n and len(logged.advantages) == n
    assert list(logged.rewards) == ["length", "has_a"]
    assert all(len(values) == n for values in logged.rewards.values())
    assert all(isinstance(c, str) for c in logged.completions)
    assert isinstance(logged.extra, dict)
    assert trl_compat.reward_weights(trained) == [1.0, 0.5]
    assert trl_compat.group_size(trained) == 2
    assert trl_compat.is_main_process(trained) is True


def test_the_log_override_reports_each_rollout_as_a_sample(trained):
    samples = trained.veri_progress.samples
    assert len(samples) == 4 and {s["step"] for s in samples} == {1}
    assert [s["group"] for s in samples] == [0, 0, 1, 1]
    for s in samples:
        assert set(s["rewards"]) == {"length", "has_a"}
        assert s["reward"] == pytest.approx(s["rewards"]["length"] + 0.5 * s["rewards"]["has_a"])
        assert isinstance(s["advantage"], float)


def test_the_checkpointing_switch_is_a_field_grpo_config_accepts(monkeypatch):
    import dataclasses

    import transformers
    from trl import GRPOConfig

    key = trl_compat.checkpointing_key()
    assert key in {f.name for f in dataclasses.fields(GRPOConfig)}
    assert GRPOConfig(output_dir="/tmp/unused", use_cpu=True, **{key: False}).gradient_checkpointing is False

    # A transformers without the new name (4.x, 5.17) gets the old one.
    fields = [f for f in dataclasses.fields(transformers.TrainingArguments) if f.name != "activation_checkpointing"]
    monkeypatch.setattr(dataclasses, "fields", lambda cls: fields)
    assert trl_compat.checkpointing_key() == "gradient_checkpointing"
