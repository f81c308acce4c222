"""A real one-node Slurm cluster on 127.0.0.1 for the Slurm tests: munged with a key of its
own, slurmctld and slurmd, every file in one temporary directory, every daemon started here
and stopped by its pid.

The node has two fake A100s: GRES `gpu:a100:2` backed by two empty files (Slurm marks a node
whose GPU GRES has no File= invalid), so Slurm allocates and accounts GPUs as on a real
cluster while the trainers run on the CPU.

    with SlurmCluster.start(directory) as cluster:
        os.environ |= cluster.env      # SLURM_CONF for sbatch, squeue, ... and veri-box serve

Client tools find the cluster through SLURM_CONF alone: the config names the munge socket
(AuthInfo), so nothing in /etc or /run is touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "debug"
GPUS = 2
UP_WITHIN_S = 30
# Finished jobs stay known to slurmctld (squeue, scontrol) this long: the test cluster has no
# accounting database for sacct.
MIN_JOB_AGE_S = 3600
# Slurm's grace between the SIGTERM of a time limit or scancel and its SIGKILL.
KILL_WAIT_S = 10


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    absent = [name for name in BINARIES if not shutil.which(name) and not os.path.exists(f"/usr/sbin/{name}")]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing; install.sh --dev installs them)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs as their users"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmCluster:
    def __init__(self, directory: Path):
        self.dir = directory.resolve()  # the daemons chdir to /: every path absolute
        self.conf = self.dir / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    @classmethod
    def start(cls, directory: Path) -> SlurmCluster:
        cluster = cls(directory)
        try:
            cluster._start_munge()
            cluster._write_config()
            cluster._start_slurm()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- munge ---------------------------------------------------------------------------------

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # munged (user munge) walks to its socket through here
        closed = [p for p in self.dir.parents if not os.stat(p).st_mode & 0o001]
        if closed:
            raise RuntimeError(f"munged (user munge) cannot reach {self.dir}: {closed[0]} is not o+x")
        home = self.dir / "munge"
        home.mkdir(mode=0o700, exist_ok=True)
        key = home / "munge.key"
        subprocess.run([_binary("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
        for path in (home, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        self.munge_socket = home / "munge.socket"
        command = [
            "setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--init-groups",
            _binary("munged"), "--foreground", "--force",
            f"--socket={self.munge_socket}", f"--key-file={key}", f"--pid-file={home / 'munged.pid'}",
            f"--log-file={home / 'munged.log'}", f"--seed-file={home / 'munged.seed'}",
        ]  # fmt: skip
        self._spawn("munged", command)
        self._wait(lambda: self.munge_socket.exists(), "munged", home / "munged.log")

    # -- slurm ---------------------------------------------------------------------------------

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir(exist_ok=True)
        gpu_files = []
        for i in range(GPUS):
            (d / f"gpu{i}").touch()
            gpu_files.append(f"NodeName={self.node} Name=gpu Type=a100 File={d / f'gpu{i}'}")
        (d / "gres.conf").write_text("\n".join(gpu_files) + "\n")
        cpus = os.cpu_count() or 1
        memory_mb = 2048 * cpus
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        self.conf.write_text(
            f"""\
ClusterName=veribox
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "slurmctld.log"}
SlurmdLogFile={d / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge={MIN_JOB_AGE_S}
KillWait={KILL_WAIT_S}
InactiveLimit=0
SlurmdTimeout=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:a100:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_slurm(self) -> None:
        env = {**os.environ, **self.env}
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), "slurmctld", self.dir / "slurmctld.log")
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf), "-N", self.node], env)
        self._wait(self._node_ready, "slurmd", self.dir / "slurmd.log")

    def _node_ready(self) -> bool:
        state = self.scontrol("show", "node", self.node)
        if "DRAIN" in state or "INVAL" in state:  # a drain left by an earlier config of the state dir
            self.scontrol("update", f"nodename={self.node}", "state=resume")
            return False
        return "State=IDLE" in state or "State=MIXED" in state or "State=ALLOCATED" in state

    def scontrol(self, *args: str) -> str:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, env={**os.environ, **self.env})
        return done.stdout + done.stderr

    def _ok(self, command: list[str], expect: str) -> bool:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.env})
        return expect in done.stdout

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.dir / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/"
        )
        log.close()

    def _wait(self, ready, name: str, log: Path) -> None:
        deadline = time.monotonic() + UP_WITHIN_S
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            if ready():
                return
            time.sleep(0.2)
        text = "\n".join(p.read_text(errors="replace")[-3000:] for p in (log, self.dir / f"{name}.out") if p.exists())
        raise RuntimeError(f"{name} did not come up within {UP_WITHIN_S}s:\n{text}")

    def stop(self) -> None:
        """Jobs cancelled, then each daemon by its pid: SIGTERM, SIGKILL if it lingers."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env={**os.environ, **self.env})
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
