"""Experiment trackers: TensorBoard for every job, Weights & Biases when the box has a W&B key.

A trainer calls `progress = attach(config, progress)` once, first thing in its train(): what it
then reports (metrics, samples, the start and the end) goes to progress.jsonl as before and to
the trackers too, so the GRPO and video trainers share one hook and neither knows the trackers.

- TensorBoard: event files in JOB_DIR/tensorboard/, so `tensorboard --logdir DATA_DIR/jobs`
  compares every job of the box (each run named by its job id). Every metric as a scalar, the
  job's settings as text at step 0, and the GRPO rollouts as a text table every
  ROLLOUT_EVERY steps.
- W&B (config.json's `wandb`): a run with the job id as its id and name, the job's settings as
  its config (never the key), every metric, and the GRPO rollouts as a `wandb.Table` (validation
  clips as `wandb.Video`) at the same interval. Its files are kept in JOB_DIR/wandb/; an
  offline-mode run stays there until `wandb sync`. The run's URL reaches the server in the
  `running` event's metadata (`wandb_run_url`). A run ends Finished when training did, Failed
  when it failed, and a job stopped on SIGTERM (a cancel: save and stop) ends Finished too,
  tagged `stopped`, with `stopped_at_step` in its summary: it did what it was asked.

A tracker is never a reason to fail training: a package that is not installed, or a W&B that
refuses the key or cannot be reached, is one warning in train.log (and for W&B a `wandb_failed`
event) and the job trains on.

Heavy imports (torch's SummaryWriter, wandb) happen inside attach(), in the trainer process.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from trainers.contract import JobConfig, WandbConfig
from trainers.progress import Progress, log, stop_requested

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own files: wandb.init(dir=JOB_DIR) puts its runs in JOB_DIR/wandb/
ROLLOUT_EVERY = 10  # steps between rollout tables (and at the last step): a table is an upload each
ROLLOUT_ROWS = 64  # rows per table, as many as the dashboard's samples per step
TEXT_CHARS = 2000  # of a prompt or completion in a table cell
DEFAULT_APP_URL = "https://wandb.ai"
STOPPED = "interrupted"  # the error code of a trainer that saved and stopped on SIGTERM
STOPPED_TAG = "stopped"
WANDB_KEY_VAR = "VERI_BOX_WANDB_API_KEY"  # veri_box/remote.py sets it for a trainer on a rented instance


def attach(config: JobConfig, progress: Any) -> Any:
    """`progress`, also reporting to the trackers. Ranks other than 0 report nothing (their
    progress is a stand-in that drops everything), so they get no trackers either."""
    if not isinstance(progress, Progress):
        return progress
    return Tracked(config, progress)


def run_settings(config: JobConfig) -> dict[str, Any]:
    """The job's settings as a tracker's config: what was asked for, no paths, no secrets."""
    return {
        "job_id": config.job_id,
        "method": config.method,
        "base_model": config.base_model,
        "output_name": config.output_name,
        "dataset_id": config.dataset.id,
        "dataset_rows": config.dataset.num_rows,
        "reward_functions": {rf.name: rf.weight for rf in config.reward_functions},
        "environments": config.environments,
        "devices": {"type": config.devices.type, "count": config.devices.count},
        "resumed": config.resume_from is not None,
        **config.hyperparameters,
    }


def wandb_key(cfg: WandbConfig) -> str:
    """The W&B key: on a rented instance it comes in the environment (the box keeps it off that
    machine's disk: config.json has it blank), on the box in config.json. The variable is unset
    once read, so nothing the trainer starts later (a reward function's subprocess) inherits it."""
    return os.environ.pop(WANDB_KEY_VAR, "") or cfg.api_key


def run_url(cfg: WandbConfig, run_id: str, live_url: str | None) -> str | None:
    """The W&B page of the run: the one W&B gave, or for an offline run with a known entity the
    one `wandb sync` will give it (the run id is the job id, so the address is fixed)."""
    if live_url:
        return live_url
    if not cfg.entity:
        return None
    return f"{_app_url(cfg.base_url)}/{cfg.entity}/{cfg.project}/runs/{run_id}"


def _app_url(base_url: str | None) -> str:
    """W&B's web address for its API address (api.wandb.ai is wandb.ai; a self-hosted server
    serves both from one address)."""
    if not base_url:
        return DEFAULT_APP_URL
    return base_url.rstrip("/").replace("://api.wandb.ai", "://wandb.ai")


class Tracked:
    """A Progress that also feeds the trackers; anything else is the Progress's own."""

    def __init__(self, config: JobConfig, progress: Progress):
        self._progress = progress
        self._config = config
        self._job_dir = Path(config.job_dir)
        self._pending: list[tuple[int, dict]] = []  # rollouts not yet in a table
        self._last_table: int | None = None
        self._step: int | None = None  # the last step with metrics
        self._closed = False
        self.tensorboard = _TensorBoard.open(self._job_dir, config)
        self.wandb = _Wandb.open(config, progress) if config.wandb else None
        atexit.register(self._exit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._progress, name)

    def started(self, total_steps: int | None = None, **metadata: Any) -> None:
        if self.wandb and self.wandb.url:
            metadata = {**metadata, "wandb_run_url": self.wandb.url}
        self._progress.started(total_steps, **metadata)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._progress.metrics(step, values)
        self._step = step
        self._next_step(step)
        numbers = {str(k): float(v) for k, v in values.items() if _finite(v)}
        if not numbers:
            return
        for tracker in self._trackers():
            tracker.guarded("metrics", tracker.metrics, step, numbers)

    def sample(self, step: int, **fields: Any) -> None:
        self._progress.sample(step, **fields)
        if "completion" in fields:  # a GRPO rollout: tables at an interval
            self._rollout(step, fields)
        elif isinstance(fields.get("video"), str | os.PathLike) and self.wandb:
            video = self._job_dir / fields["video"]
            self.wandb.guarded("video", self.wandb.video, step, video, str(fields.get("prompt") or ""))

    def completed(self, **metadata: Any) -> None:
        self.close(0)
        self._progress.completed(**metadata)

    def error(self, code: str, message: str) -> None:
        # SIGTERM is the box asking to save and stop, nearly always a user's cancel: the trainer
        # did as asked, so W&B must not list the run among the Failed ones (exit code != 0). It
        # cannot tell a cancel from, say, a Slurm time limit, so the mark is `stopped`: what it knows.
        self.close(0, stopped=True) if code == STOPPED and stop_requested() else self.close(1)
        self._progress.error(code, message)

    def _exit(self) -> None:
        """At exit without completed(): the trainer failed or crashed (the run Failed, with what was
        logged flushed), or it stopped on SIGTERM as asked (progress.run writes the `interrupted`
        error to the plain Progress, not here). An exception nobody caught is a crash even then."""
        crashed = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)  # set when one was
        self.close(0, stopped=True) if stop_requested() and not crashed else self.close(1)

    def close(self, exit_code: int = 0, stopped: bool = False) -> None:
        """The last rollout table, then each tracker flushed and closed (once)."""
        if self._closed:
            return
        self._closed = True
        self._flush_rollouts()
        for tracker in self._trackers():
            if stopped:
                tracker.guarded("stopped", tracker.stopped, self._step)
            tracker.guarded("close", tracker.close, exit_code)

    def _trackers(self) -> list[Any]:
        return [t for t in (self.tensorboard, self.wandb) if t is not None and not t.broken]

    def _rollout(self, step: int, fields: dict) -> None:
        """The latest step's rollouts are kept; a step's table goes out once the next step's
        metrics arrive (all its rollouts are in by then), or at the end."""
        if self._pending and self._pending[-1][0] != step:
            self._pending = []
        if len(self._pending) < ROLLOUT_ROWS:
            self._pending.append((step, fields))

    def _table_due(self, step: int) -> bool:
        return self._last_table is None or step - self._last_table >= ROLLOUT_EVERY

    def _next_step(self, step: int) -> None:
        if self._pending and self._pending[-1][0] < step:
            if self._table_due(self._pending[-1][0]):
                self._flush_rollouts()
            self._pending = []

    def _flush_rollouts(self) -> None:
        if not self._pending or self._pending[-1][0] == self._last_table:
            return
        step = self._pending[-1][0]
        rows = [_rollout_row(s, f) for s, f in self._pending]
        self._pending = []
        self._last_table = step
        for tracker in self._trackers():
            tracker.guarded("rollouts", tracker.rollouts, step, rows)


ROLLOUT_COLUMNS = ["step", "group", "prompt", "completion", "reward", "advantage"]


def _rollout_row(step: int, fields: dict) -> list[Any]:
    return [
        step,
        fields.get("group"),
        str(fields.get("prompt", ""))[:TEXT_CHARS],
        str(fields.get("completion", ""))[:TEXT_CHARS],
        fields.get("reward"),
        fields.get("advantage"),
    ]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Tracker:
    name = ""
    broken = False

    def guarded(self, what: str, call: Any, *args: Any) -> None:
        """A tracker that fails once is warned about once and left alone: training goes on."""
        try:
            call(*args)
        except Exception as err:  # noqa: BLE001 - whatever a tracker raises, the job trains on
            self.broken = True
            log(f"warning: {self.name} stopped logging ({what}): {type(err).__name__}: {err}")

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def rollouts(self, step: int, rows: list[list[Any]]) -> None: ...

    def stopped(self, step: int | None) -> None: ...

    def close(self, exit_code: int) -> None: ...


class _TensorBoard(_Tracker):
    name = "TensorBoard"

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def open(cls, job_dir: Path, config: JobConfig) -> _TensorBoard | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's writer needs the tensorboard package
            log(f"warning: no TensorBoard event files for this job ({err}); pip install tensorboard to have them")
            return None
        except Exception as err:  # noqa: BLE001 - a tensorboard that does not import here (protobuf): train on
            log(f"warning: no TensorBoard event files for this job: {type(err).__name__}: {err}")
            return None
        try:
            writer = SummaryWriter(log_dir=str(job_dir / TENSORBOARD_DIR), flush_secs=10)
            settings = json.dumps(run_settings(config), indent=2, default=str)
            writer.add_text("job", "    " + settings.replace("\n", "\n    "), 0)  # indented: Markdown code
        except Exception as err:  # noqa: BLE001 - e.g. a tensorboard and protobuf that disagree: train on
            log(f"warning: no TensorBoard event files for this job: {type(err).__name__}: {err}")
            return None
        return cls(writer)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def rollouts(self, step: int, rows: list[list[Any]]) -> None:
        def cell(value: Any) -> str:
            return str(value).replace("|", "\\|").replace("\n", "<br>")

        table = ["| " + " | ".join(ROLLOUT_COLUMNS) + " |", "|" + "---|" * len(ROLLOUT_COLUMNS)]
        table += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text("rollouts", "\n".join(table), step)

    def close(self, exit_code: int) -> None:
        self.writer.close()


class _Wandb(_Tracker):
    name = "W&B"

    def __init__(self, wandb: Any, run: Any, url: str | None):
        self.wb = wandb
        self.run = run
        self.url = url

    @classmethod
    def open(cls, config: JobConfig, progress: Progress) -> _Wandb | None:
        cfg = config.wandb
        assert cfg is not None
        try:
            import wandb
        except ImportError as err:
            log(f"warning: W&B is configured but not installed here ({err}): this job logs to TensorBoard only")
            progress.event("wandb_failed", message=f"wandb is not installed on the machine that trains: {err}")
            return None
        job_dir = Path(config.job_dir)
        # W&B's config, cache and staging files beside the job, not in the home of whoever runs the
        # trainer (without the sandbox, the server user's): a key never lands in anyone's ~/.netrc.
        cache = job_dir / ".cache" / "wandb"
        for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
            os.environ[var] = str(cache / sub)
        os.environ.pop("WANDB_API_KEY", None)  # only the box's key
        api_key = wandb_key(cfg)
        settings = wandb.Settings(
            api_key=api_key,
            mode=cfg.mode,
            console="off",  # train.log is ours; W&B would wrap stdout and stderr
            save_code=False,
            disable_git=True,
            silent=True,
            **({"base_url": cfg.base_url} if cfg.base_url else {}),
        )
        try:
            run = wandb.init(
                project=cfg.project,
                entity=cfg.entity or None,
                id=config.job_id,
                name=config.job_id,
                job_type=config.method,
                config=run_settings(config),
                dir=str(job_dir),
                settings=settings,
            )
        except Exception as err:  # noqa: BLE001 - a refused key or an unreachable W&B: train on
            # The event reaches the API and the dashboard: never with the key, should W&B quote it.
            message = f"{type(err).__name__}: {err}"
            message = message.replace(api_key, "***") if api_key else message
            log(f"warning: W&B run not started, this job logs to TensorBoard only: {message}")
            progress.event("wandb_failed", message=message[:2000])
            return None
        url = run_url(cfg, run.id, None if cfg.mode == "offline" else run.url)
        log(f"W&B run {run.id} in project {cfg.project} ({cfg.mode}){': ' + url if url else ''}")
        return cls(wandb, run, url)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def rollouts(self, step: int, rows: list[list[Any]]) -> None:
        self.run.log({"rollouts": self.wb.Table(columns=ROLLOUT_COLUMNS, data=rows)}, step=step)

    def video(self, step: int, path: Path, caption: str) -> None:
        if path.is_file():
            self.run.log({"validation": self.wb.Video(str(path), caption=caption[:TEXT_CHARS])}, step=step)

    def stopped(self, step: int | None) -> None:
        """Marks a run that stopped on request: W&B's states have none for it (Killed is only
        W&B's own stop), so a tag to filter by and, in the summary, the step it stopped at."""
        self.run.tags = (*self.run.tags, STOPPED_TAG)
        if step is not None:
            self.run.summary["stopped_at_step"] = step

    def close(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)
