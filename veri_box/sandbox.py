"""The bubblewrap sandbox every trainer runs in (and with it the uploaded reward functions).

A trainer sees a read-only system, Python and code, the models it may use, its own dataset and
its own job directory (the only place it can write, with a private /tmp); nothing else of the
data directory (no database, so no secrets, no other job or dataset), none of the server's
processes (a PID namespace of its own, the trainer its init: when the trainer ends the kernel
ends everything it started, setsid or not), none of the server's environment, and no network
unless the job talks to OpenReward environments or logs to W&B (online).

`command` is a function of the job's config, the server's environment and the `Host` facts (it
looks only at whether the paths it would bind exist): the argv prefix and the environment out.
`resolve` decides once per process whether bwrap works here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from trainers.contract import JobConfig

from .inventory import CPU

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"
WARNING = (
    "trainers run WITHOUT a sandbox: uploaded reward functions can read the database (its secrets), "
    f"other jobs' files, the server's environment and the network; {INSTALL_HINT}"
)
# The environment a trainer keeps from the server's (after trainer_command's own settings):
# what Python, torch, CUDA and the Hugging Face libraries need, nothing that names a secret.
KEPT_ENV = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONUNBUFFERED",
    "PYTHONPATH",
    "HF_HUB_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
)
HOME = "/tmp"  # a tmpfs of the sandbox's own: writable, private, gone with the job
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc only what name resolution, TLS, time zones and the dynamic linker read: no shadow, no keys.
ETC_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/mime.types",
)
SYS_DIRS = ("/sys/block", "/sys/bus", "/sys/class", "/sys/dev", "/sys/devices")  # CUDA and NVML read these
GPU_DEVICES = ("nvidia", "nvidia-caps", "dri")  # /dev/nvidia0, nvidiactl, nvidia-uvm..., the caps and DRM dirs
MODEL_MARKERS = ("config.json", "model_index.json", "adapter_config.json")


class Mode(StrEnum):
    BWRAP = "bwrap"
    NONE = "none"


class SandboxError(RuntimeError):
    """--sandbox bwrap was asked for and bubblewrap does not work on this machine."""


@dataclass(frozen=True)
class Host:
    """What the sandbox needs to know of this machine, gathered once by `host()`."""

    bwrap: str
    data_dir: Path
    home: str  # the server user's home: never bound whole
    python_dirs: tuple[str, ...]  # the venv and the interpreter it was made from
    code_dirs: tuple[str, ...]  # where the trainer's imports come from
    hf_home: str  # the server's Hugging Face home (HF_HOME or ~/.cache/huggingface), present or not
    hf_hub_cache: str  # its model cache (HF_HUB_CACHE or HF_HOME/hub): shared, unlike the token beside it
    system: tuple[tuple[str, str | None], ...]  # (path, symlink target or None for a directory)
    dev_entries: tuple[str, ...] = ()  # names in /dev
    etc: tuple[str, ...] = field(default=ETC_FILES)
    sys_dirs: tuple[str, ...] = field(default=SYS_DIRS)


def host(data_dir: Path, environ: dict[str, str] | None = None) -> Host:
    """The facts of this machine (paths that exist, devices present)."""
    environ = dict(os.environ if environ is None else environ)
    system = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            system.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            system.append((path, None))
    try:
        dev_entries = tuple(sorted(os.listdir("/dev")))
    except OSError:
        dev_entries = ()
    return Host(
        bwrap=shutil.which("bwrap") or "bwrap",
        data_dir=Path(os.path.abspath(data_dir)),
        home=os.path.abspath(_home(environ)),
        python_dirs=_existing(sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix),
        code_dirs=_code_dirs(environ),
        hf_home=_hf_home(environ),
        hf_hub_cache=os.path.abspath(environ.get("HF_HUB_CACHE") or os.path.join(_hf_home(environ), "hub")),
        system=tuple(system),
        dev_entries=dev_entries,
        etc=tuple(p for p in ETC_FILES if os.path.exists(p)),
        sys_dirs=tuple(p for p in SYS_DIRS if os.path.isdir(p)),
    )


def _existing(*paths: str) -> tuple[str, ...]:
    """The paths that exist, each as given and, when a symlink leads elsewhere, where it leads
    (an interpreter is started by the one name and its files found by the other)."""
    seen: list[str] = []
    for path in paths:
        if not path or not os.path.exists(path):
            continue
        for name in (os.path.abspath(path), os.path.realpath(path)):
            if name not in seen:
                seen.append(name)
    return tuple(seen)


def _code_dirs(environ: dict[str, str]) -> tuple[str, ...]:
    """The trainers package, everything on this interpreter's path and PYTHONPATH: custom trainers
    (--trainers) are found there, and an editable install maps `trainers` to its source folder."""
    import trainers

    package_parent = str(Path(trainers.__file__).resolve().parent.parent)
    pythonpath = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    entries = [package_parent, *pythonpath, *(p for p in sys.path if p)]
    # A server started from a home directory has it (its cwd) on sys.path: binding it, or '/',
    # would hand the trainer ~/.ssh and the rest; code lives below such places, not in them.
    return tuple(p for p in _existing(*(os.path.abspath(p) for p in entries)) if not _inside(_home(environ), p))


def _home(environ: dict[str, str]) -> str:
    return environ.get("HOME") or str(Path.home())


def _hf_home(environ: dict[str, str]) -> str:
    path = environ.get("HF_HOME") or os.path.join(environ.get("HOME") or str(Path.home()), ".cache", "huggingface")
    return os.path.abspath(path)


def _inside(path: str | Path, parent: str | Path) -> bool:
    return Path(path) == Path(parent) or Path(parent) in Path(path).parents


def _model_dir(config: JobConfig, host: Host) -> str | None:
    """A base_model given as a directory of this machine, bound read-only when it is a model
    (its config file there) and holds neither the data directory nor the home directory: a
    path is user input, and '/' or the data directory itself must not become a way round the
    sandbox."""
    path = config.base_model
    if not os.path.isabs(path) or not os.path.isdir(path):
        return None
    real = os.path.realpath(path)
    if _inside(host.data_dir, real) or _inside(real, host.data_dir) or _inside(host.home, real):
        return None
    if not any(os.path.exists(os.path.join(real, marker)) for marker in MODEL_MARKERS):
        return None
    return real


def model_to_build(config: JobConfig) -> str | None:
    """The folder of a built-in tiny model this job names and that is not built yet: the first
    job builds it (trainers/models.py), with that one folder of the models folder writable;
    every later job reads the built model."""
    from trainers.models import BUILT_IN

    built = BUILT_IN.get(config.base_model)
    if built is None or not config.models_dir:
        return None
    folder = Path(config.models_dir) / config.base_model.split("/", 1)[1]
    return None if (folder / built[2]).is_file() else str(folder)


def gpu_binds(dev_entries: tuple[str, ...] | list[str]) -> list[str]:
    """--dev-bind arguments for the NVIDIA (and DRM) device nodes present in /dev."""
    args: list[str] = []
    for name in sorted(dev_entries):
        if any(name == prefix or (prefix == "nvidia" and name.startswith("nvidia")) for prefix in GPU_DEVICES):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    return args


def _ro(path: str) -> list[str]:
    return ["--ro-bind", path, path]


def command(config: JobConfig, environ: dict[str, str], host: Host) -> tuple[list[str], dict[str, str]]:
    """The bwrap argv to put before the trainer's command line, and the trainer's environment
    (from `environ`, what trainer_command set up)."""
    # No --new-session: the executor already starts a session without a controlling terminal
    # (the terminal is what --new-session protects), and a session of its own would take the
    # trainer out of the process group the runner signals. --as-pid-1: the trainer is the init
    # of its PID namespace, so when it exits the kernel kills whatever it left behind (bwrap's
    # own init would wait for those). --die-with-parent: if bwrap is killed, so is the trainer.
    args = [host.bwrap, "--unshare-all", "--die-with-parent", "--as-pid-1", "--cap-drop", "ALL"]
    if config.environments or (config.wandb and config.wandb.mode != "offline"):
        args.append("--share-net")  # OpenReward environments and W&B are web services
    args += ["--hostname", "veri-box-job", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
    args += ["--tmpfs", "/tmp"]
    for path, target in host.system:
        args += ["--symlink", target, path] if target is not None else _ro(path)
    for path in host.etc:
        args += _ro(path)
    if config.devices.type != CPU:
        args += gpu_binds(host.dev_entries)
        for path in host.sys_dirs:
            args += _ro(path)
    for path in (*host.python_dirs, *host.code_dirs):
        args += _ro(path)
    # Whatever above happened to hold the data directory (a repository, a home), it is empty here;
    # then only this job's parts of it come back.
    args += ["--tmpfs", str(host.data_dir)]
    if os.path.isdir(host.hf_hub_cache):
        args += _ro(host.hf_hub_cache)
    model = _model_dir(config, host)
    if model:
        args += ["--ro-bind", model, os.path.abspath(config.base_model)]  # where the trainer looks
    models = config.models_dir
    if models and os.path.isdir(models):
        args += _ro(models)
    building = model_to_build(config)
    if building and os.path.isdir(building):
        args += ["--bind", building, building]
    args += _ro(config.dataset.path)
    args += ["--bind", config.job_dir, config.job_dir, "--chdir", config.job_dir]
    # The sandbox's own root and the stand-in data directory are tmpfs: read-only too, so the
    # job directory (and /tmp) are the only places a trainer writes.
    args += ["--remount-ro", str(host.data_dir), "--remount-ro", "/"]
    env = {key: environ[key] for key in KEPT_ENV if key in environ}
    env["HOME"] = HOME
    env["PATH"] = os.pathsep.join([os.path.join(sys.prefix, "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    env.setdefault("LANG", "C.UTF-8")
    # HOME moved: the cache (and its messages) stay where the server's are. Only the model cache
    # is bound: HF_HOME also holds the server user's Hugging Face token.
    env["HF_HOME"] = host.hf_home
    env["HF_HUB_CACHE"] = host.hf_hub_cache
    # The cache is read-only here; `datasets` writes its Arrow copy of the job's dataset (big
    # datasets are big: not the tmpfs) beside the job.
    env["HF_DATASETS_CACHE"] = os.path.join(config.job_dir, ".cache", "datasets")
    return [*args, "--"], env


@functools.cache
def works(bwrap: str = "bwrap") -> str | None:
    """None if bwrap can build the namespaces a trainer needs here, else what went wrong."""
    path = shutil.which(bwrap)
    if path is None:
        return f"bwrap is not installed; {INSTALL_HINT}"
    probe = [path, "--unshare-all", "--die-with-parent", "--as-pid-1", "--cap-drop", "ALL", "--proc", "/proc"]
    probe += ["--dev", "/dev", "--tmpfs", "/tmp"]
    for dir_ in SYSTEM_DIRS:
        if os.path.islink(dir_):
            probe += ["--symlink", os.readlink(dir_), dir_]
        elif os.path.isdir(dir_):
            probe += _ro(dir_)
    try:
        done = subprocess.run([*probe, "--", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not run: {err}"
    if done.returncode != 0:
        return f"bwrap does not work on this machine: {done.stderr.strip() or f'exit code {done.returncode}'}"
    return None


def resolve(setting: str, bwrap: str = "bwrap") -> Mode:
    """The mode for the --sandbox setting: 'auto' is bwrap when it works here; 'bwrap' when it
    does not is a SandboxError saying why."""
    if setting == Mode.NONE:
        return Mode.NONE
    if setting not in ("auto", Mode.BWRAP):
        raise SandboxError(f"--sandbox must be 'auto', 'bwrap' or 'none', not {setting!r}")
    problem = works(bwrap)
    if problem is None:
        return Mode.BWRAP
    if setting == Mode.BWRAP:
        raise SandboxError(f"--sandbox bwrap: {problem}")
    return Mode.NONE


def describe(mode: Mode) -> dict[str, str | None]:
    """The box's sandbox as the API and the dashboard show it."""
    return {"sandbox": str(mode), "warning": None if mode == Mode.BWRAP else WARNING}
