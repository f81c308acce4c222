"""A real OpenSSH server on 127.0.0.1 for tests: the "instance" a provider stand-in launches.

    server = Sshd.start(tmp_path / "inst")   # temp host key, free port on 127.0.0.1, no keys yet
    Sshd.start(d, env={"HOME": home, "PATH": ...}, user="root")  # an image's environment; one login name
    server.authorize(public_key_line)        # what the provider does with the launch's key
    server.port, server.user, server.host_key_line, server.known_hosts_line
    server.kill()                            # the instance dies: sshd and every process it started
    server.stop()                            # the same, used for a normal terminate; safe twice

sshd runs as pid 1 of its own pid namespace (`unshare --pid --fork --kill-child --mount-proc`),
so everything a session starts, even `setsid nohup ... &` children reparented away from their
shell, lives in that namespace and dies with it: that is what lets kill() model a lost machine
without hunting processes by name. The network namespace is shared, so 127.0.0.1:port works;
/proc is remounted so pids seen inside (`$!`, /proc/PID) agree with each other. sshd as pid 1
reaps the orphans, so a finished process does not linger as a zombie that `kill -0` calls alive.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """A fresh ed25519 client key pair without passphrase: (private key path, public key line)."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True)
    return private, private.with_suffix(".pub").read_text().strip()


class Sshd:
    def __init__(self, directory: Path, host: str, port: int, process: subprocess.Popen, host_key_line: str, user: str):
        self.directory = directory
        self.host = host
        self.port = port
        self.user = user  # the one login name this sshd accepts
        self.process = process
        self.host_key_line = host_key_line  # "ssh-ed25519 AAAA..." (no comment)
        self.authorized_keys = directory / "authorized_keys"

    @property
    def known_hosts_line(self) -> str:
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"  # OpenSSH's own spelling
        return f"{host} {self.host_key_line}"

    @classmethod
    def start(
        cls,
        directory: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        timeout: float = 5.0,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Sshd:
        """Start sshd on host:port (a free port by default; any 127.x.y.z address is this machine's
        loopback, which lets a stand-in give each instance its own IP with sshd on port 22).

        `env`: variables every session gets (sshd's SetEnv, which wins over sshd's own HOME and
        PATH), as a provider's image sets them: where the login's home is, which python3 is on
        its PATH. `user`: the only login name accepted (AllowUsers; default the user running the
        tests, the only one an unprivileged sshd can serve). It must exist on this machine."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation dir (root only)
        host_key = directory / "host_ed25519"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        kind, blob = host_key.with_suffix(".pub").read_text().split()[:2]
        (directory / "authorized_keys").touch(mode=0o600)
        port = port or free_port(host)
        user = user or getpass.getuser()
        for name, value in (env or {}).items():
            if not name.isidentifier() or any(c in str(value) for c in '"\n'):
                raise ValueError(f"cannot pass {name}={value!r} through sshd_config's SetEnv")
        set_env = " ".join(f'"{name}={value}"' for name, value in (env or {}).items())
        config = directory / "sshd_config"
        config.write_text(
            f"ListenAddress {host}\nPort {port}\nHostKey {host_key}\nPidFile {directory}/sshd.pid\n"
            f"AuthorizedKeysFile {directory}/authorized_keys\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"AllowUsers {user}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
            + (f"SetEnv {set_env}\n" if set_env else "")
        )
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
        log = open(directory / "sshd.log", "ab")
        process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a test's Ctrl-C or a killed pytest group does not reach it first
        )
        log.close()
        server = cls(directory, host, port, process, f"{kind} {blob}", user)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((server.host, port), timeout=0.5).close()
                return server
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text()}") from None
                time.sleep(0.02)

    def authorize(self, public_key_line: str) -> None:
        """Append a public key ("ssh-ed25519 AAAA... comment") that may log in as self.user."""
        with open(self.authorized_keys, "a") as f:
            f.write(public_key_line.strip() + "\n")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """The machine dies: SIGKILL the namespace's outer process; --kill-child then SIGKILLs its
        pid 1 (sshd), and the kernel kills every other process in the namespace with it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Terminate the instance (nothing started through it survives); safe to call twice."""
        self.kill()
