"""SSH to the instances the box rents: its one key pair, host keys pinned at first contact,
commands under an explicit environment, and files both ways.

The box has one ed25519 key pair (paths.ssh_key), made on first use and readable by its
owner only; providers put its public half on every instance they launch. An instance's host
key is taken on first contact (the provider has just created the machine, so there is no
earlier key to check it against) and stored on its row; every later connection, also after a
restart of the box, accepts that key only: a machine that answers with another one is refused.

Commands do not inherit the instance's login environment: Debian's bash sources ~/.bashrc even
for `ssh host cmd`, so a PATH (or anything else) set there would win over ours. Each command
runs in /bin/sh under `env -i` with exactly the variables the caller names. The one exception
is `login_facts`, which asks the login shell, on purpose, where home and python are.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from . import paths

CONNECT_TIMEOUT_S = 15.0
# A connection that stops answering is noticed within about a minute even without traffic.
KEEPALIVE_S = 15.0
KEEPALIVE_COUNT = 4
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1024 * 1024
MARK = "veri-box-"  # prefixes the lines we parse, so whatever a login script prints is ignored

# asyncssh logs every channel and SFTP call at INFO: a box following jobs would log little else.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

# What a lost or refused connection raises: asyncssh's own errors, sockets, and timeouts.
CONNECTION_ERRORS = (OSError, asyncssh.Error, asyncio.TimeoutError)


class HostKeyMismatch(Exception):
    """The instance answered with a host key other than the one pinned at first contact."""


@dataclass(frozen=True)
class KeyPair:
    private: asyncssh.SSHKey
    public: str  # one authorized_keys line: "ssh-ed25519 AAAA... veri-box"


_key_lock = threading.Lock()


def key_pair(data_dir: Path) -> KeyPair:
    """The box's key pair, created the first time it is asked for. The private key file is
    0600 (a looser mode, say after a copy, is tightened: ssh tools refuse such a key)."""
    path = paths.ssh_key(data_dir)
    with _key_lock:
        if not path.exists():
            _create_key(path)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        key = asyncssh.read_private_key(path)
    public = key.export_public_key("openssh").decode().strip()
    return KeyPair(key, public)


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="veri-box")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not for a moment
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))
    try:
        os.link(tmp, path)  # unlike a rename, never replaces a key made meanwhile
    except FileExistsError:
        return
    finally:
        tmp.unlink()
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))


def host_key_line(key: asyncssh.SSHKey) -> str:
    """The key as stored on the instance row: "ssh-ed25519 AAAA..." (no comment)."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


async def connect(
    host: str, port: int, user: str, keys: KeyPair, pinned: str | None, timeout: float = CONNECT_TIMEOUT_S
) -> tuple[asyncssh.SSHClientConnection, str]:
    """A connection and the host key it was made with. `pinned` None: first contact, any key is
    taken (and returned to be stored); else only that key. Neither ~/.ssh/config, known_hosts
    nor an agent of the user running the box is consulted."""
    known_hosts = None if pinned is None else ([asyncssh.import_public_key(pinned)], [], [])
    try:
        conn = await asyncssh.connect(
            host,
            port,
            username=user,
            client_keys=[keys.private],
            known_hosts=known_hosts,
            agent_path=None,
            config=None,
            connect_timeout=timeout,
            keepalive_interval=KEEPALIVE_S,
            keepalive_count_max=KEEPALIVE_COUNT,
        )
    except asyncssh.HostKeyNotVerifiable as err:
        raise HostKeyMismatch(f"{host}:{port} presented a host key other than the one pinned: {err}") from None
    server_key = conn.get_server_host_key()
    return conn, pinned or host_key_line(server_key)  # type: ignore[arg-type]


def describe(err: BaseException) -> str:
    """What a failed connection said, in a line (asyncssh's errors carry a reason; a refused
    login is the one to recognise: the user or the key is wrong)."""
    if isinstance(err, asyncssh.PermissionDenied):
        return "the login was refused (permission denied: wrong user, or the box's key is not authorized)"
    reason = getattr(err, "reason", None) or str(err) or type(err).__name__
    return reason.strip().splitlines()[0] if reason.strip() else type(err).__name__


def command(script: str, env: dict[str, str], *args: str) -> str:
    """The command line that runs `script` in /bin/sh with exactly `env` (and $1... = args),
    whatever the login shell sets up first."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    argv = " ".join(shlex.quote(a) for a in args)
    return f"exec /usr/bin/env -i {assignments} /bin/sh -c {shlex.quote(script)} veri-box {argv}"


async def run(
    conn: asyncssh.SSHClientConnection,
    script: str,
    env: dict[str, str],
    *args: str,
    timeout: float | None = 120.0,
    input: bytes | None = None,
) -> asyncssh.SSHCompletedProcess:
    return await conn.run(command(script, env, *args), check=False, timeout=timeout, input=input, encoding=None)


def marked(stdout: bytes | str | None) -> dict[str, str]:
    """The `veri-box-NAME=VALUE` lines of a command's output, as {NAME: VALUE}."""
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout or ""
    found = {}
    for line in text.splitlines():
        if line.startswith(MARK) and "=" in line:
            name, _, value = line[len(MARK) :].partition("=")
            found[name] = value
    return found


async def login_facts(conn: asyncssh.SSHClientConnection) -> dict[str, str]:
    """Home and python as the instance's own login environment has them (an image's PATH often
    reaches its python through ~/.bashrc or sshd's SetEnv): {"home": ..., "python": ...}."""
    result = await conn.run(
        f'echo "{MARK}home=$HOME"; echo "{MARK}python=$(command -v python3 || command -v python)"',
        check=False,
        timeout=60,
    )
    return marked(result.stdout)


async def put_tree(
    conn: asyncssh.SSHClientConnection,
    env: dict[str, str],
    members: list[tuple[Path | bytes, str]],
    remote_dir: str,
    timeout: float = 3600.0,
) -> None:
    """Copy local files and folders to `remote_dir` as one tar stream (one round trip however
    many files: SFTP would take several per file). `members`: (a local path, or a file's
    contents, and its name under remote_dir). Links are sent as links, never followed."""
    with tempfile.SpooledTemporaryFile(max_size=64 * CHUNK) as spool:
        await asyncio.to_thread(_write_tar, spool, members)
        spool.seek(0)
        process = await conn.create_process(
            command('mkdir -p "$1" && tar -x -m -C "$1"', env, remote_dir), encoding=None
        )
        while chunk := await asyncio.to_thread(spool.read, CHUNK):
            process.stdin.write(chunk)
            await process.stdin.drain()
        process.stdin.write_eof()
        result = await asyncio.wait_for(process.wait(), timeout)
    if result.exit_status != 0:
        raise OSError(f"unpacking into {remote_dir} failed: {output_tail(result.stderr)}")


def _write_tar(fileobj, members: list[tuple[Path | bytes, str]]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for source, name in members:
            if isinstance(source, bytes):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(source), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(source))
            else:
                tar.add(source, arcname=name, filter=_no_bytecode)


def _no_bytecode(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name.split("/") else info


async def get_tree(sftp: asyncssh.SFTPClient, remote: str, local: Path) -> None:
    """Copy a remote file or folder to `local`, replacing what was there. It arrives under a
    temporary name and is renamed into place, so a reader never sees half of it. Links are
    copied as links (the trainer made them; whoever serves the files checks where they lead)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        await sftp.get(remote, staging / local.name, recurse=True, preserve=False, follow_symlinks=False)
        if local.is_dir() and not local.is_symlink():
            shutil.rmtree(local)
        os.replace(staging / local.name, local)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def output_tail(data: bytes | str | None) -> str:
    """A remote command's stdout or stderr for an error message: decoded, stripped, its last 2000 characters."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data or ""
    return text.strip()[-2000:]
