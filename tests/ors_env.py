"""A real Open Reward Standard server for the tests, built with the `openreward` package's own
server side, run as `python -m tests.ors_env PORT` and stopped by killing it.

Its environments (the path segment and the name a job uses is the lowercased class name):
- `letters`: "say something" prompts; the terminal tool grades the answer with the fraction of its
  characters that are the task's letter, the demo's reward, so the tiny model learns it in 30 steps.
- `reply`: "reply with the word X"; a plain (non-terminal) tool with one text field, the shape of
  `orwd init`'s template, scored 1 for the word, else half the fraction of the reply's characters
  that are letters of the word.
- `broken`: its grading tool raises, as a buggy environment does on the service.
- `toolbox`: two tools and no terminal one, a multi-turn environment single-turn GRPO cannot use.
"""

from __future__ import annotations

import sys

from openreward.environments import Environment, JSONObject, Server, TextBlock, ToolOutput, terminal, tool
from pydantic import BaseModel

from veri_box import demo

# The demo's prompts, so this environment trains what the demo trains.
PROMPTS = demo.PROMPTS
# Words rich in the letter a, so that this reward and the letters one pull the same way when a job
# trains on both.
WORDS = ["banana", "aha", "llama", "salsa"]


class Answer(BaseModel):
    answer: str


class Reply(BaseModel):
    text: str


class Letters(Environment):
    def __init__(self, task_spec: JSONObject = {}, secrets: dict[str, str] = {}):
        super().__init__(task_spec)
        self.task = task_spec

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train", "test"]

    @classmethod
    def list_tasks(cls, split: str) -> list[JSONObject]:
        prompts = PROMPTS if split == "train" else PROMPTS[:2]
        return [{"id": f"{split}-{i}", "prompt": p, "letter": "a"} for i, p in enumerate(prompts)]

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.task["prompt"])]

    @terminal
    @tool
    async def answer(self, params: Answer) -> ToolOutput:
        """Submit the final answer."""
        text = params.answer
        reward = text.count(self.task["letter"]) / len(text) if text else 0.0
        return ToolOutput(blocks=[TextBlock(text=f"score {reward:.3f}")], reward=reward, finished=True)


class ReplyEnv(Environment):
    @classmethod
    def name(cls) -> str:
        return "reply"

    def __init__(self, task_spec: JSONObject = {}, secrets: dict[str, str] = {}):
        super().__init__(task_spec)
        self.word = task_spec["word"]

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train", "validation"]

    @classmethod
    def list_tasks(cls, split: str) -> list[JSONObject]:
        return [{"word": w} for w in WORDS]

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=f"Reply with the word {self.word}.")]

    @tool
    async def reply(self, params: Reply) -> ToolOutput:
        """Reply to the user; this ends the episode."""
        text = params.text.lower()
        reward = 1.0 if self.word in text else sum(c in self.word for c in text) / (2 * len(text) or 1)
        return ToolOutput(blocks=[TextBlock(text="ok")], reward=reward, finished=True)


class Broken(Environment):
    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[JSONObject]:
        return [{"prompt": p} for p in PROMPTS[:4]]

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.task_spec["prompt"])]

    @terminal
    @tool
    async def answer(self, params: Answer) -> ToolOutput:
        """Submit the final answer."""
        raise RuntimeError("the grader lost its answer key")


class Command(BaseModel):
    command: str


class Toolbox(Environment):
    """Multi-turn: the model would have to call `bash` and then `submit`."""

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[JSONObject]:
        return [{"prompt": "List the files."}]

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.task_spec["prompt"])]

    @tool
    async def bash(self, params: Command) -> ToolOutput:
        """Run a command."""
        return ToolOutput(blocks=[TextBlock(text="a.txt")])

    @tool
    async def submit(self, params: Answer) -> ToolOutput:
        """Submit the final answer."""
        return ToolOutput(blocks=[TextBlock(text="ok")], reward=float(params.answer == "a.txt"), finished=True)


if __name__ == "__main__":
    Server([Letters, ReplyEnv, Broken, Toolbox]).run(host="127.0.0.1", port=int(sys.argv[1]))
