"""trainers/prompts.py with the tiny model's tokenizer (Qwen's ChatML template), and the GRPO
trainer's batch split. No training: everything here runs in well under a second per test."""

from __future__ import annotations

import pytest

from trainers import prompts
from trainers.errors import TrainerError
from trainers.grpo import batch_split

GEN = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from trainers.tiny import build_tiny_lm

    return AutoTokenizer.from_pretrained(build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0))


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


# ---- the formats -------------------------------------------------------------------------------


def test_string_prompts_are_rendered_with_the_chat_template(tok):
    rows, changed = prompts.build([{"prompt": "Say hi.", "answer": "hi"}], "prompt_only", tok, None, 64)
    assert rows == [{"prompt": turn("user", "Say hi.") + GEN, "answer": "hi"}]
    assert changed == {"truncated": 0, "dropped": 0}


def test_string_prompts_get_the_system_prompt(tok):
    rows, _ = prompts.build([{"prompt": "Say hi."}], "prompt_only", tok, "Be brief.", 64)
    assert rows[0]["prompt"] == turn("system", "Be brief.") + turn("user", "Say hi.") + GEN
    assert rows[0]["prompt"].endswith(GEN)


def test_prompt_completion_rows_keep_the_completion_column(tok):
    rows, _ = prompts.build([{"prompt": "Say hi.", "completion": "hi"}], "prompt_completion", tok, None, 64)
    assert rows == [{"prompt": turn("user", "Say hi.") + GEN, "completion": "hi"}]


def test_chat_message_prompts_stay_conversational_with_the_system_prompt_first(tok):
    messages = [{"role": "user", "content": "Say hi."}]
    rows, changed = prompts.build([{"prompt": messages, "answer": "hi"}], "prompt_only", tok, "Be brief.", 64)
    assert rows == [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}], "answer": "hi"}
    ]
    assert changed == {"truncated": 0, "dropped": 0}


def test_a_conversation_with_its_own_system_prompt_keeps_it(tok):
    messages = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Say hi."}]
    rows, _ = prompts.build([{"prompt": messages}], "prompt_only", tok, "Be brief.", 64)
    assert rows[0]["prompt"] == messages


def test_chatml_rows_use_the_messages_up_to_the_last_assistant_turn(tok):
    row = {
        "messages": [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Count to two."},
            {"role": "assistant", "content": "1 2"},
        ],
        "answer": "1 2",
    }
    rows, _ = prompts.build([row], "chatml", tok, "Be brief.", 64)
    assert rows == [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Count to two."},
            ],
            "answer": "1 2",
        }
    ]


def test_chatml_rows_without_an_assistant_turn_are_kept_whole(tok):
    row = {"messages": [{"role": "user", "content": "Hi."}]}
    rows, _ = prompts.build([row], "chatml", tok, None, 64)
    assert rows == [{"prompt": [{"role": "user", "content": "Hi."}]}]


def test_sharegpt_rows_map_roles_and_stop_before_the_last_reply(tok):
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi."},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Count to two."},
            {"from": "gpt", "value": "1 2"},
        ],
        "answer": "1 2",
    }
    rows, _ = prompts.build([row], "sharegpt", tok, "Ignored: the row has one.", 64)
    assert rows == [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Count to two."},
            ],
            "answer": "1 2",
        }
    ]


def test_alpaca_rows_join_instruction_and_input_and_keep_output(tok):
    rows, _ = prompts.build(
        [
            {"instruction": "Add them.", "input": "2 and 3", "output": "5", "answer": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
        ],
        "alpaca",
        tok,
        None,
        64,
    )
    assert rows == [
        {"prompt": turn("user", "Add them.\n\n2 and 3") + GEN, "output": "5", "answer": "5"},
        {"prompt": turn("user", "Say hi.") + GEN, "output": "hi"},
    ]


def test_every_extra_column_is_kept(tok):
    row = {"prompt": "Say hi.", "answer": "hi", "level": 3, "tags": ["a", "b"], "meta": {"k": None}}
    rows, _ = prompts.build([row], "prompt_only", tok, None, 64)
    assert {k: v for k, v in rows[0].items() if k != "prompt"} == {
        "answer": "hi",
        "level": 3,
        "tags": ["a", "b"],
        "meta": {"k": None},
    }


def test_a_text_dataset_has_no_prompts(tok):
    with pytest.raises(TrainerError) as err:
        prompts.build([{"text": "Once upon a time."}], "text", tok, None, 64)
    assert err.value.code == "dataset_format_incompatible"


# ---- max_prompt_length -------------------------------------------------------------------------


def test_an_over_long_string_prompt_loses_its_beginning(tok):
    long = " ".join(f"word{i}" for i in range(60)) + " What is 2 + 3?"
    limit = 48
    assert n_tokens(tok, turn("user", long) + GEN) > limit
    rows, changed = prompts.build([{"prompt": long}, {"prompt": "Say hi."}], "prompt_only", tok, "Be brief.", limit)
    assert changed == {"truncated": 1, "dropped": 0}
    cut = rows[0]["prompt"]
    assert n_tokens(tok, cut) <= limit
    assert cut.startswith(turn("system", "Be brief.") + "<|im_start|>user\n")
    assert cut.endswith("What is 2 + 3?<|im_end|>\n" + GEN)
    assert "word0 " not in cut
    assert rows[1]["prompt"] == turn("system", "Be brief.") + turn("user", "Say hi.") + GEN


def test_an_over_long_conversation_is_dropped_and_counted(tok):
    long = [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]
    short = [{"role": "user", "content": "Say hi."}]
    rows, changed = prompts.build([{"prompt": long}, {"prompt": short}], "prompt_only", tok, None, 32)
    assert [r["prompt"] for r in rows] == [short]
    assert changed == {"truncated": 0, "dropped": 1}


def test_when_every_prompt_is_too_long_the_dataset_is_refused(tok):
    long = [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]
    with pytest.raises(TrainerError) as err:
        prompts.build([{"prompt": long}, {"prompt": long}], "prompt_only", tok, None, 32)
    assert err.value.code == "dataset_format_incompatible"
    assert "max_prompt_length (32 tokens)" in err.value.message


def test_a_limit_with_no_room_for_the_template_is_refused(tok):
    with pytest.raises(TrainerError) as err:
        prompts.build([{"prompt": "Say hi."}], "prompt_only", tok, "A long system prompt. " * 10, 8)
    assert err.value.code == "dataset_format_incompatible"


# ---- batch_split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "global_batch, processes, expected",
    [(64, 1, (16, 4)), (32, 1, (16, 2)), (8, 1, (8, 1)), (64, 2, (16, 2)), (16, 1, (16, 1)), (48, 4, (12, 1))],
)
def test_batch_split(global_batch, processes, expected):
    per_device, accumulation = batch_split(global_batch, processes)
    assert (per_device, accumulation) == expected
    assert per_device <= 16 and per_device * accumulation * processes == global_batch


def test_batch_split_needs_an_even_split_over_the_gpus():
    with pytest.raises(TrainerError) as err:
        batch_split(30, 4)
    assert err.value.code == "invalid_hyperparameter"
