"""The one place with SQL: a SQLite database in WAL mode, one connection per thread.

Schema changes are named, append-only migrations (sqlite-utils' Migrations) recorded in
the database itself. Functions here take and return plain dicts; JSON columns are decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from .statuses import ACTIVE, JobStatus

log = logging.getLogger("veri_box.store")


def _import_sqlite_utils():
    """sqlite-utils imports pandas and numpy when they are installed (the training stack
    brings them) only to map their column types, which the server never stores; pandas in
    turn loads pyarrow. Hiding them for that one import saves about 1.4 s of start-up and
    70 MB of memory."""
    hidden = {name: sys.modules.get(name) for name in ("pandas", "numpy")}
    for name in hidden:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    try:
        import sqlite_utils
    finally:
        for name, module in hidden.items():
            if module is None and sys.modules.get(name) is None:
                del sys.modules[name]
    return sqlite_utils


_sqlite_utils = _import_sqlite_utils()
Database, Migrations = _sqlite_utils.Database, _sqlite_utils.Migrations

migrations = Migrations("veri_box")
_ACTIVE_MARKS = ",".join("?" * len(ACTIVE))


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        CREATE TABLE datasets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            format TEXT NOT NULL,
            num_rows INTEGER NOT NULL,
            columns TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            filename TEXT NOT NULL,
            path TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE reward_functions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            format TEXT NOT NULL,
            entrypoint TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            path TEXT NOT NULL,
            inline INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            base_model TEXT NOT NULL,
            dataset_id TEXT NOT NULL,
            reward_function_id TEXT,
            reward_functions TEXT NOT NULL DEFAULT '[]',
            environments TEXT,
            method TEXT NOT NULL,
            output_name TEXT NOT NULL,
            hyperparameters TEXT NOT NULL,
            gpu_requested TEXT NOT NULL,
            gpu TEXT,
            provider TEXT,
            checkpoint_destination TEXT NOT NULL,
            requires_heartbeat INTEGER NOT NULL DEFAULT 0,
            last_heartbeat_at TEXT,
            error_code TEXT,
            error_message TEXT,
            current_step INTEGER,
            total_steps INTEGER,
            current_loss REAL,
            duration_seconds REAL,
            cost_usd REAL,
            started_at TEXT,
            completed_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX jobs_status ON jobs(status);
        CREATE INDEX jobs_dataset ON jobs(dataset_id);
        CREATE TABLE job_reward_functions (
            -- no foreign keys: finished jobs keep naming datasets and reward functions
            -- that have since been deleted
            job_id TEXT NOT NULL,
            reward_function_id TEXT NOT NULL,
            PRIMARY KEY (job_id, reward_function_id)
        ) WITHOUT ROWID;
        CREATE INDEX job_reward_functions_rf ON job_reward_functions(reward_function_id);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            event_type TEXT NOT NULL,
            timestamp TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_job ON events(job_id, seq);
        -- Each logged step twice: one row per step with all its values (a chart of dense
        -- keys reads max_points rows, whatever the run's length), and one row per
        -- (key, step) so that keys logged now and then are counted and read on their own.
        CREATE TABLE metric_steps (
            job_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            vals TEXT NOT NULL,
            PRIMARY KEY (job_id, step)
        ) WITHOUT ROWID;
        CREATE TABLE metrics (
            job_id TEXT NOT NULL,
            key TEXT NOT NULL,
            step INTEGER NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (job_id, key, step)
        ) WITHOUT ROWID;
        CREATE TABLE samples (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            step INTEGER NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX samples_job_step ON samples(job_id, step, seq);
        CREATE TABLE checkpoints (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            step INTEGER NOT NULL,
            path TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX checkpoints_job ON checkpoints(job_id, step);
        CREATE TABLE integrations (
            provider TEXT PRIMARY KEY,
            api_key TEXT NOT NULL,
            base_url TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE box (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """
    )


_decode_vals = msgspec.json.Decoder(dict[str, float]).decode


@migrations()
def m002_runner(db: Database) -> None:
    """What the runner needs to supervise a trainer across server restarts."""
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN devices TEXT;            -- indices held, NULL once released
        ALTER TABLE jobs ADD COLUMN pid INTEGER;
        ALTER TABLE jobs ADD COLUMN pid_started TEXT;        -- /proc start time: pids get reused
        ALTER TABLE jobs ADD COLUMN progress_offset INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN trainer_state TEXT;      -- last event the trainer reported
        ALTER TABLE jobs ADD COLUMN reported_error TEXT;     -- the trainer's own error record
        ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT;
        ALTER TABLE jobs ADD COLUMN terminated_at TEXT;      -- when SIGTERM was sent
        CREATE INDEX jobs_devices ON jobs(devices) WHERE devices IS NOT NULL;
        """
    )


@migrations()
def m003_drop_cancel_requested_at(db: Database) -> None:
    """Nothing read it: a cancel's time is the cancelled job's completed_at."""
    db.execute("ALTER TABLE jobs DROP COLUMN cancel_requested_at")


@migrations()
def m004_progress_at(db: Database) -> None:
    """When the runner last read new progress of a job: the stall check outlives a restart."""
    db.execute("ALTER TABLE jobs ADD COLUMN progress_at TEXT")


@migrations()
def m005_ended_sessions(db: Database) -> None:
    """Dashboard sessions ended by a logout, kept until they would have expired anyway."""
    db.execute("CREATE TABLE ended_sessions (id TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID")


@migrations()
def m006_resume_from(db: Database) -> None:
    """The checkpoint (ckpt_...) a job starts from; NULL for a job that starts from its base model."""
    db.execute("ALTER TABLE jobs ADD COLUMN resume_from TEXT")


@migrations()
def m007_executors(db: Database) -> None:
    """Jobs that run beyond this box (a Slurm cluster, a rented instance) and their instances.

    provider_requested: the provider the job named at submit (NULL: the box chooses).
    executor_state: what an executor needs to find its trainer again after a restart (a Slurm
    job id, an instance and the remote directory, ...), as JSON; only that executor reads it.
    memory_estimate: the submit-time estimate of the job's peak GPU memory and its parts.
    integrations.options: per-integration settings that are not secrets (an image, a project).
    instances: every cloud instance the box launched, recorded before the box waits on it, so
    cost, teardown and orphan cleanup survive a crash."""
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN provider_requested TEXT;
        ALTER TABLE jobs ADD COLUMN executor_state TEXT;
        ALTER TABLE jobs ADD COLUMN memory_estimate TEXT;
        ALTER TABLE integrations ADD COLUMN options TEXT;
        CREATE TABLE instances (
            id TEXT PRIMARY KEY,                 -- the box's own id (inst_...)
            provider TEXT NOT NULL,
            provider_instance_id TEXT,           -- NULL until the provider answered the launch
            name TEXT NOT NULL,                  -- the name given at launch (box prefix + job id)
            job_id TEXT REFERENCES jobs(id),
            gpu_type TEXT NOT NULL,
            gpu_count INTEGER NOT NULL,
            region TEXT,
            price_per_hr REAL,
            status TEXT NOT NULL,                -- launching, booting, ready, terminated, failed
            ssh_host TEXT,
            ssh_port INTEGER,
            ssh_user TEXT,
            host_key TEXT,                       -- pinned at first contact
            launched_at TEXT,
            ready_at TEXT,
            terminated_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX instances_job ON instances(job_id);
        CREATE INDEX instances_open ON instances(terminated_at) WHERE terminated_at IS NULL;
        """
    )


@migrations()
def m012_tags_note(db: Database) -> None:
    """A job's tags (a JSON list of short strings) and free-text note, set by PATCH; both
    only label the job (the jobs list searches them), nothing reads them to train."""
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN tags TEXT;
        ALTER TABLE jobs ADD COLUMN note TEXT;
        """
    )


@migrations()
def m008_sharing(db: Database) -> None:
    """Roles, ownership, quotas and the audit trail (a box a lab shares).

    api_keys.role: 'admin' or 'member'. Every key made before roles existed becomes an admin:
    until now every key could do everything, and an upgraded box must not lock its owner out
    of its own settings (nobody would be left to make an admin). New keys default to member.
    created_by: the id of the key that made the object (its name is read from api_keys, which
    keeps revoked keys' rows, so a revoked key's objects still name it). NULL: made before roles.
    quotas: limits by scope: 'default' (the lab default for every key), 'box' (box-wide,
    only monthly_spend_usd) or an api key's id; a NULL limit means none.
    audit: one row per write request (reads are not recorded)."""
    db.executescript(
        """
        ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
        UPDATE api_keys SET role = 'admin';
        ALTER TABLE jobs ADD COLUMN created_by TEXT;
        ALTER TABLE datasets ADD COLUMN created_by TEXT;
        ALTER TABLE reward_functions ADD COLUMN created_by TEXT;
        CREATE INDEX jobs_created_by ON jobs(created_by);
        CREATE TABLE quotas (
            scope TEXT PRIMARY KEY,
            max_running_jobs INTEGER,
            max_gpus INTEGER,
            monthly_spend_usd REAL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE audit (
            id TEXT PRIMARY KEY,
            at TEXT NOT NULL,
            key_id TEXT,
            key_name TEXT,
            action TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            object_type TEXT,
            object_id TEXT,
            client TEXT,
            status INTEGER NOT NULL
        );
        CREATE INDEX audit_key ON audit(key_id);
        CREATE INDEX audit_object ON audit(object_type, object_id);
        """
    )


@migrations()
def m010_hf_push(db: Database) -> None:
    """A job's push to the Hugging Face Hub: hf_push is what was asked ({repo, artifact, private}),
    hf_push_state how it went ({status, repo_url, commit, error, updated_at}); both NULL for a job
    that never asked for one."""
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN hf_push TEXT;
        ALTER TABLE jobs ADD COLUMN hf_push_state TEXT;
        """
    )


@migrations()
def m009_trackers(db: Database) -> None:
    """wandb_run_url: the W&B page of the job's run, as its trainer reported it (NULL without W&B)."""
    db.execute("ALTER TABLE jobs ADD COLUMN wandb_run_url TEXT")


# Tables whose rows record the key that made them (created_by), for ownership and reassignment.
OWNED_TABLES = ("jobs", "datasets", "reward_functions", "deployments")


@migrations()
def m013_deployments(db: Database) -> None:
    """Deployments (issue 17): a model served by a supervised child process (trainers/serve.py)
    on a device of this box. devices is non-NULL while its process may exist (as for jobs: the
    runner counts those devices as taken); gpu/gpu_requested are {type, count}."""
    db.executescript(
        """
        CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            model TEXT NOT NULL,
            source TEXT NOT NULL,
            base_model TEXT NOT NULL,
            adapter_job_id TEXT,
            status TEXT NOT NULL,
            engine TEXT NOT NULL,
            gpu_requested TEXT NOT NULL,
            gpu TEXT,
            devices TEXT,
            pid INTEGER,
            pid_started TEXT,
            error TEXT,
            failure_code TEXT,
            stop_reason TEXT,
            events TEXT NOT NULL DEFAULT '[]',
            total_requests INTEGER NOT NULL DEFAULT 0,
            created_by TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            stopped_at TEXT,
            last_request_at TEXT
        );
        CREATE INDEX deployments_status ON deployments (status);
        """
    )


@migrations()
def m014_evaluations(db: Database) -> None:
    """Base-against-trained evaluations of a completed GRPO job (veri_box/evaluations.py): request is
    what was asked ({source, format, max_tokens, temperature, seed, dataset_rows}), result the
    table and means once completed, error {code, message, traceback} once failed. They go with
    their job (ON DELETE CASCADE)."""
    db.executescript(
        """
        CREATE TABLE evaluations (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            status TEXT NOT NULL,
            request TEXT NOT NULL,
            result TEXT,
            error TEXT,
            created_by TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            completed_at TEXT
        );
        CREATE INDEX evaluations_job ON evaluations (job_id, created_at);
        """
    )


@migrations()
def m015_job_disk_size(db: Database) -> None:
    """What a job's folder takes on disk, as the jobs list last measured it (veri_box/artifacts.py,
    listed_sizes): disk_bytes at disk_bytes_at; disk_bytes_key says what the folder looked like then
    (its last event and its own mtime) when it was measured after the job ended, NULL when the job
    was live (then only its age tells whether to measure again)."""
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN disk_bytes INTEGER;
        ALTER TABLE jobs ADD COLUMN disk_bytes_at TEXT;
        ALTER TABLE jobs ADD COLUMN disk_bytes_key TEXT;
        """
    )


@migrations()
def m016_deployment_requests(db: Database) -> None:
    """A deployment's request log (veri_box/deployment_requests.py): one row per chat request,
    written when its answer is over; at_ms is when it arrived (epoch ms, for ranges and buckets),
    the *_ms columns the times the proxy measured. deployment_request_hours adds them up per clock
    hour of arrival as they are written, so the last day's counts and hourly or daily series read
    a few dozen rows, not every request; it is kept longer than the rows. The deployment's row
    keeps lifetime totals."""
    db.executescript(
        """
        CREATE TABLE deployment_requests (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            at_ms INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            completed_at TEXT,
            status_code INTEGER NOT NULL,
            streamed INTEGER NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            usage_reported INTEGER NOT NULL,
            e2e_latency_ms REAL,
            ttfb_ms REAL,
            ttft_ms REAL,
            generation_ms REAL,
            tpot_ms REAL,
            request_bytes INTEGER,
            response_bytes INTEGER,
            finish_reason TEXT,
            error_category TEXT,
            error_message TEXT,
            client_disconnected INTEGER NOT NULL
        );
        CREATE INDEX deployment_requests_at ON deployment_requests (deployment_id, at_ms);
        CREATE TABLE deployment_request_hours (
            deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            hour_ms INTEGER NOT NULL,
            requests INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_sum_ms REAL NOT NULL,
            latency_max_ms REAL NOT NULL,
            ttft_sum_ms REAL NOT NULL,
            ttft_n INTEGER NOT NULL,
            PRIMARY KEY (deployment_id, hour_ms)
        ) WITHOUT ROWID;
        ALTER TABLE deployments ADD COLUMN total_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE deployments ADD COLUMN total_prompt_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE deployments ADD COLUMN total_completion_tokens INTEGER NOT NULL DEFAULT 0;
        """
    )


HOUR_MS = 3600 * 1000

JSON_COLUMNS = {
    "evaluations": ("request", "result", "error"),
    "deployments": ("gpu_requested", "gpu", "devices", "events"),
    "datasets": ("columns",),
    "jobs": (
        "devices",
        "reported_error",
        "reward_functions",
        "environments",
        "hyperparameters",
        "gpu_requested",
        "gpu",
        "checkpoint_destination",
        "executor_state",
        "memory_estimate",
        "hf_push",
        "hf_push_state",
        "tags",
    ),
    "integrations": ("options",),
    "events": ("metadata",),
    "samples": ("data",),
}


def _encode_job_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v) if k in JSON_COLUMNS["jobs"] and v is not None and not isinstance(v, str) else v
        for k, v in fields.items()
    }


def now() -> str:
    """ISO-8601 UTC with a Z, millisecond precision: sortable as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def stamp_seconds(stamp: str) -> float:
    """A `now()` stamp as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def seconds_between(start: str | None, end: str) -> float | None:
    """Seconds from one `now()` stamp to another (never negative); None without a start."""
    if not start:
        return None
    return max(stamp_seconds(end) - stamp_seconds(start), 0.0)


def _jd_ms(stamp_sql: str) -> str:
    """SQL for a stamp as whole milliseconds (of the Julian day count): SQLite keeps a time as
    integer ms and julianday() divides them into a double (off by up to 40 us); rounding undoes
    that, so each span is exact to the millisecond, as the stamps are."""
    return f"round(julianday({stamp_sql}) * 86400000.0)"


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(12)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Conflict(Exception):
    """A write that would break a rule the store enforces (e.g. a row still in use)."""


class Store:
    """Opens one connection per thread: sqlite3 connections must not be shared across
    threads, and a shared one would interleave their transactions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._disk_full_logged = False
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        migrations.apply(db)

    @property
    def db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Reads of a long run touch pages all over the file; mapping it saves a read()
            # call per page (charts of 1M-point jobs got 2x faster).
            conn.execute("PRAGMA mmap_size=1073741824")
            conn.execute("PRAGMA foreign_keys=ON")
            db = Database(conn)
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable[Any] | dict = (), table: str | None = None) -> list[dict]:
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r)) for r in cursor.fetchall()]
        if table:
            for row in rows:
                for col in JSON_COLUMNS.get(table, ()):
                    if col in row and isinstance(row[col], str):
                        row[col] = json.loads(row[col])
        if table in OWNED_TABLES and rows and "created_by" in rows[0]:
            # The owner's name, for responses and pages (keys are never renamed; revoked ones keep their row).
            names = self.key_names(row["created_by"] for row in rows)
            for row in rows:
                row["created_by_name"] = names.get(row["created_by"])
        return rows

    def _insert(self, table: str, row: dict, conn: sqlite3.Connection | None = None) -> None:
        # Plain SQL rather than sqlite-utils' insert(), which commits on its own and would
        # end an enclosing transaction early.
        for col in JSON_COLUMNS.get(table, ()):
            if row.get(col) is not None and not isinstance(row[col], str):
                row = {**row, col: json.dumps(row[col])}
        cols = ", ".join(row)
        (conn or self.db.conn).execute(
            f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )

    def _one(self, sql: str, params: Iterable[Any] | dict = (), table: str | None = None) -> dict | None:
        rows = self._rows(sql, params, table)
        return rows[0] if rows else None

    # -- the box itself ------------------------------------------------------------------

    def box_id(self) -> str:
        """This box's short random id: the prefix of the names it gives Slurm jobs and cloud
        instances, so what it started can be told from everyone else's."""
        return self.box_value("box_id", lambda: secrets.token_hex(4))

    def box_value(self, name: str, make: Any) -> str:
        """A value created once per data directory (e.g. the URL-signing secret)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM box WHERE name = ?", [name]).fetchone()
            if row:
                return row[0]
            value = make()
            conn.execute("INSERT INTO box (name, value) VALUES (?, ?)", [name, value])
            return value

    # -- pagination ------------------------------------------------------------------------

    def _page(
        self, table: str, where: list[str], params: list[Any], limit: int, after: str | None
    ) -> tuple[list[dict], bool]:
        """Newest first by insertion order (rowid), so ties in created_at stay stable."""
        clauses = list(where)
        if after is not None:
            clauses.append(f"rowid < coalesce((SELECT rowid FROM {table} WHERE id = ?), -1)")
            params = [*params, after]
        sql = f"SELECT * FROM {table}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid DESC LIMIT ?"
        rows = self._rows(sql, [*params, limit + 1], table)
        return rows[:limit], len(rows) > limit

    # -- API keys --------------------------------------------------------------------------

    def create_api_key(self, name: str, role: str = "admin") -> tuple[dict, str]:
        """A new key. The store's default role is the single-user box's (every key could do
        everything before roles); the API and the CLI always name the role they mean."""
        key = "vk_" + secrets.token_hex(20)
        row = {
            "id": secrets.token_hex(8),
            "name": name,
            "key_prefix": key[:7],
            "key_hash": hash_key(key),
            "created_at": now(),
            "last_used_at": None,
            "revoked_at": None,
            "role": role,
        }
        self._insert("api_keys", row)
        return row, key

    def list_api_keys(self, limit: int = 100, after: str | None = None) -> tuple[list[dict], bool]:
        return self._page("api_keys", ["revoked_at IS NULL"], [], limit, after)

    def get_api_key(self, id: str) -> dict | None:
        return self._one("SELECT * FROM api_keys WHERE id = ? AND revoked_at IS NULL", [id])

    def revoke_api_key(self, id: str) -> bool:
        cursor = self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now(), id])
        return cursor.rowcount > 0

    def set_api_key_role(self, id: str, role: str) -> bool:
        cursor = self.db.execute("UPDATE api_keys SET role = ? WHERE id = ? AND revoked_at IS NULL", [role, id])
        return cursor.rowcount > 0

    def count_admin_keys(self) -> int:
        live_admins = "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND role = 'admin'"
        return self.db.execute(live_admins).fetchone()[0]

    def count_api_keys(self) -> int:
        return self.db.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]

    def authenticate(self, key: str) -> dict | None:
        """The live key row for this secret, with last_used_at refreshed (at most once a
        second per key, so a busy client does not turn every read into a write)."""
        row = self._one("SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [hash_key(key)])
        if row is None:
            return None
        stamp = now()
        if (row["last_used_at"] or "")[:19] != stamp[:19] and self._touch_api_key(row["id"], stamp):
            row["last_used_at"] = stamp
        return row

    def _touch_api_key(self, id: str, stamp: str) -> bool:
        """Record a key's use, best effort: on a full disk every request, reads too, would
        otherwise fail on this one write. Logged once per full spell."""
        try:
            self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [stamp, id])
        except sqlite3.OperationalError as err:
            if "database or disk is full" not in str(err):
                raise
            if not self._disk_full_logged:
                log.warning("the disk is full: API keys' last_used_at is not being updated (%s)", err)
                self._disk_full_logged = True
            return False
        self._disk_full_logged = False
        return True

    # -- datasets --------------------------------------------------------------------------

    def insert_dataset(self, row: dict) -> dict:
        self._insert("datasets", row)
        return self.get_dataset(row["id"])  # type: ignore[return-value]

    def get_dataset(self, id: str) -> dict | None:
        return self._one("SELECT * FROM datasets WHERE id = ?", [id], "datasets")

    def list_datasets(self, limit: int, after: str | None) -> tuple[list[dict], bool]:
        return self._page("datasets", [], [], limit, after)

    def delete_dataset(self, id: str) -> None:
        """Refuses while a job that has not finished uses the dataset."""
        with self.transaction() as conn:
            busy = conn.execute(
                f"SELECT id FROM jobs WHERE dataset_id = ? AND status IN ({_ACTIVE_MARKS}) LIMIT 1", [id, *ACTIVE]
            ).fetchone()
            if busy:
                raise Conflict(busy[0])
            conn.execute("DELETE FROM datasets WHERE id = ?", [id])

    # -- reward functions ------------------------------------------------------------------

    def insert_reward_function(self, row: dict) -> dict:
        self._insert("reward_functions", row)
        return self.get_reward_function(row["id"])  # type: ignore[return-value]

    def get_reward_function(self, id: str) -> dict | None:
        return self._one("SELECT * FROM reward_functions WHERE id = ?", [id], "reward_functions")

    def list_reward_functions(self, limit: int, after: str | None) -> tuple[list[dict], bool]:
        return self._page("reward_functions", ["inline = 0"], [], limit, after)

    def delete_reward_function(self, id: str) -> None:
        with self.transaction() as conn:
            busy = conn.execute(
                f"""SELECT j.id FROM job_reward_functions r JOIN jobs j ON j.id = r.job_id
                    WHERE r.reward_function_id = ? AND j.status IN ({_ACTIVE_MARKS}) LIMIT 1""",
                [id, *ACTIVE],
            ).fetchone()
            if busy:
                raise Conflict(busy[0])
            conn.execute("DELETE FROM reward_functions WHERE id = ?", [id])

    # -- jobs ------------------------------------------------------------------------------

    def create_job(self, job: dict, inline_reward_functions: list[dict]) -> dict:
        """The job row, its inline reward functions and its `created` event, atomically."""
        stamp = job["created_at"]
        with self.transaction() as conn:
            for rf in inline_reward_functions:
                self._insert("reward_functions", rf, conn)
            self._insert("jobs", {**job, "updated_at": stamp}, conn)
            for rf in job["reward_functions"]:
                conn.execute("INSERT OR IGNORE INTO job_reward_functions VALUES (?, ?)", [job["id"], rf["id"]])
            self._add_event(conn, job["id"], "created", {}, stamp)
        return self.get_job(job["id"])  # type: ignore[return-value]

    def delete_job(self, id: str) -> None:
        """A job and everything recorded of it. Its instances stay (what was spent stays spent),
        no longer tied to the job; jobs resumed from its checkpoints keep their own copies."""
        with self.transaction() as conn:
            for table in ("events", "metric_steps", "metrics", "samples", "checkpoints", "job_reward_functions"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ?", [id])
            conn.execute("UPDATE instances SET job_id = NULL WHERE job_id = ?", [id])
            conn.execute("DELETE FROM jobs WHERE id = ?", [id])

    def get_job(self, id: str) -> dict | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", [id], "jobs")

    def list_jobs(
        self,
        limit: int,
        after: str | None,
        status: str | None = None,
        method: str | None = None,
        search: str | None = None,
        created_by: str | None = None,
    ) -> tuple[list[dict], bool]:
        where, params = [], []
        if created_by:  # the "mine" filter
            where.append("created_by = ?")
            params.append(created_by)
        if search:
            # A substring of the name, base model, id, a tag or the note, case-insensitively;
            # LIKE's own wildcards in the text are matched as themselves.
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            fields = ("output_name", "base_model", "id", "coalesce(tags, '')", "coalesce(note, '')")
            where.append("(" + " OR ".join(f"{f} LIKE ? ESCAPE '\\'" for f in fields) + ")")
            params.extend([like] * len(fields))
        if status:
            where.append("status = ?")
            params.append(status)
        if method:
            where.append("method = ?")
            params.append(method)
        return self._page("jobs", where, params, limit, after)

    def last_event_seqs(self, job_ids: list[str]) -> dict[str, int]:
        """Each job's latest event seq (one index seek per job)."""
        out = {}
        for job_id in job_ids:
            row = self.db.execute("SELECT max(seq) FROM events WHERE job_id = ?", [job_id]).fetchone()
            if row[0] is not None:
                out[job_id] = row[0]
        return out

    def set_disk_size(self, job_id: str, size: int, key: str | None) -> None:
        """Record what the job's folder measured (m015); not a status change, so not the runner's."""
        self.db.execute(
            "UPDATE jobs SET disk_bytes = ?, disk_bytes_at = ?, disk_bytes_key = ? WHERE id = ?",
            [size, now(), key, job_id],
        )

    def jobs_with_status(self, *statuses: str) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses, "jobs")

    def transition_job(
        self,
        id: str,
        to: str,
        *,
        allowed_from: Iterable[str],
        event: str | None = None,
        event_metadata: dict | None = None,
        **fields: Any,
    ) -> dict | None:
        """Move a job to status `to` only if it is in one of `allowed_from`, with its event
        (named `event`, default the new status), in one transaction. Returns the new row, or
        None if the job was not in such a state."""
        stamp = now()
        sets = _encode_job_fields({**fields, "status": to, "updated_at": stamp})
        allowed = list(allowed_from)
        with self.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} "
                f"WHERE id = ? AND status IN ({','.join('?' * len(allowed))})",
                [*sets.values(), id, *allowed],
            )
            if cursor.rowcount == 0:
                return None
            self._add_event(conn, id, event or to, event_metadata or {}, stamp)
        return self.get_job(id)

    def update_job(self, id: str, **fields: Any) -> None:
        fields = _encode_job_fields({**fields, "updated_at": now()})
        self.db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", [*fields.values(), id])

    # -- deployments (veri_box/deployments.py) ---------------------------------------------------

    def insert_deployment(self, row: dict) -> None:
        self._insert("deployments", row)

    def get_deployment(self, id: str) -> dict | None:
        return self._one("SELECT * FROM deployments WHERE id = ?", [id], "deployments")

    def list_deployments(self, status: str | None = None, limit: int = 100, after: str | None = None) -> list[dict]:
        """Newest first; `after` is the id of the last one of the previous page."""
        where, params = ["1 = 1"], []
        if status:
            where.append("status = ?")
            params.append(status)
        if after:
            where.append("rowid < (SELECT rowid FROM deployments WHERE id = ?)")
            params.append(after)
        sql = f"SELECT * FROM deployments WHERE {' AND '.join(where)} ORDER BY rowid DESC LIMIT ?"
        return self._rows(sql, [*params, limit], "deployments")

    def deployments_holding_devices(self) -> list[dict]:
        return self._rows("SELECT * FROM deployments WHERE devices IS NOT NULL ORDER BY rowid", (), "deployments")

    def deployments_with_status(self, *statuses: str) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        return self._rows(
            f"SELECT * FROM deployments WHERE status IN ({marks}) ORDER BY rowid", list(statuses), "deployments"
        )

    def update_deployment(self, id: str, allowed_from: tuple[str, ...] | None = None, **fields: Any) -> dict | None:
        """Set fields (JSON ones encoded); with `allowed_from`, only while its status is one of
        those (None if it was not: a stop raced us). Returns the fresh row."""
        for col in JSON_COLUMNS["deployments"]:
            if col in fields and fields[col] is not None and not isinstance(fields[col], str):
                fields[col] = json.dumps(fields[col])
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql, params = f"UPDATE deployments SET {sets} WHERE id = ?", [*fields.values(), id]
        if allowed_from:
            sql += f" AND status IN ({','.join('?' * len(allowed_from))})"
            params += list(allowed_from)
        with self.transaction() as conn:
            changed = conn.execute(sql, params).rowcount
        return self.get_deployment(id) if changed else None

    def add_deployment_event(self, id: str, type: str, metadata: dict) -> None:
        with self.transaction() as conn:
            row = conn.execute("SELECT events FROM deployments WHERE id = ?", [id]).fetchone()
            if row is None:
                return
            events = [*json.loads(row[0] or "[]"), {"type": type, "metadata": metadata, "created_at": now()}]
            conn.execute("UPDATE deployments SET events = ? WHERE id = ?", [json.dumps(events[-50:]), id])

    # A request is an error when it was refused or the model failed mid-answer (a stream's
    # status is 200 by then); a client that went away is not.
    _REQUEST_ERROR = "(status_code >= 400 OR error_category IS NOT NULL)"

    def add_deployment_request(self, row: dict, reached_model: bool) -> None:
        """One request's log row and the deployment's totals; only a request the model saw counts
        in total_requests and keeps the deployment from its idle stop."""
        failed = row["status_code"] >= 400 or row["error_category"] is not None
        latency, ttft = row["e2e_latency_ms"] or 0.0, row["ttft_ms"]
        with self.transaction() as conn:
            self._insert("deployment_requests", row, conn)
            conn.execute(
                "INSERT INTO deployment_request_hours VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (deployment_id, hour_ms) DO UPDATE SET requests = requests + 1,"
                " errors = errors + excluded.errors, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens,"
                " latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,"
                " latency_max_ms = MAX(latency_max_ms, excluded.latency_max_ms),"
                " ttft_sum_ms = ttft_sum_ms + excluded.ttft_sum_ms, ttft_n = ttft_n + excluded.ttft_n",
                [
                    row["deployment_id"],
                    row["at_ms"] // HOUR_MS * HOUR_MS,
                    int(failed),
                    row["prompt_tokens"] or 0,
                    row["completion_tokens"] or 0,
                    latency,
                    latency,
                    ttft or 0.0,
                    int(ttft is not None),
                ],
            )
            conn.execute(
                "UPDATE deployments SET total_requests = total_requests + ?, total_errors = total_errors + ?,"
                " total_prompt_tokens = total_prompt_tokens + ?, total_completion_tokens = total_completion_tokens + ?,"
                " last_request_at = CASE WHEN ? THEN ? ELSE last_request_at END WHERE id = ?",
                [
                    int(reached_model),
                    int(failed),
                    row["prompt_tokens"] or 0,
                    row["completion_tokens"] or 0,
                    int(reached_model),
                    row["completed_at"],
                    row["deployment_id"],
                ],
            )

    def prune_deployment_requests(self, rows_before_ms: int, hours_before_ms: int) -> int:
        with self.transaction() as conn:
            conn.execute("DELETE FROM deployment_request_hours WHERE hour_ms < ?", [hours_before_ms])
            return conn.execute("DELETE FROM deployment_requests WHERE at_ms < ?", [rows_before_ms]).rowcount

    def deployment_request_cursor(self, deployment_id: str, id: str) -> tuple[int, int] | None:
        row = self.db.execute(
            "SELECT at_ms, seq FROM deployment_requests WHERE id = ? AND deployment_id = ?", [id, deployment_id]
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def list_deployment_requests(
        self,
        deployment_id: str,
        limit: int,
        cursor: tuple[int, int] | None,
        lo: int | None,
        hi: int | None,
        errors_only: bool,
    ) -> list[dict]:
        """Newest first (by arrival), after `cursor` (the last row's (at_ms, seq)) when given."""
        where, params = ["deployment_id = ?"], [deployment_id]
        for bound, sql in ((lo, "at_ms >= ?"), (hi, "at_ms <= ?")):
            if bound is not None:
                where.append(sql)
                params.append(bound)
        if cursor is not None:
            where.append("(at_ms, seq) < (?, ?)")
            params += list(cursor)
        if errors_only:
            where.append(self._REQUEST_ERROR)
        sql = f"SELECT * FROM deployment_requests WHERE {' AND '.join(where)} ORDER BY at_ms DESC, seq DESC LIMIT ?"
        return self._rows(sql, [*params, limit])

    def deployment_request_totals(self, deployment_id: str, lo: int) -> dict[str, int]:
        """Requests, errors and completion tokens of those that arrived since `lo`: the whole hours
        from the hourly sums, the part of an hour before them from the rows."""
        first_hour = -(-lo // HOUR_MS) * HOUR_MS
        hours = self.db.execute(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(errors), 0), COALESCE(SUM(completion_tokens), 0)"
            " FROM deployment_request_hours WHERE deployment_id = ? AND hour_ms >= ?",
            [deployment_id, first_hour],
        ).fetchone()
        edge = self.db.execute(
            f"SELECT COUNT(*), COALESCE(SUM({self._REQUEST_ERROR}), 0), COALESCE(SUM(completion_tokens), 0)"
            " FROM deployment_requests WHERE deployment_id = ? AND at_ms >= ? AND at_ms < ?",
            [deployment_id, lo, first_hour],
        ).fetchone()
        return {k: hours[i] + edge[i] for i, k in enumerate(("requests", "errors", "completion_tokens"))}

    def deployment_request_latencies(self, deployment_id: str, lo: int, limit: int) -> list[dict]:
        """The times of the newest `limit` answered requests since `lo` (no error, client stayed)."""
        return self._rows(
            "SELECT e2e_latency_ms, ttft_ms, tpot_ms FROM deployment_requests WHERE deployment_id = ? AND at_ms >= ?"
            f" AND NOT {self._REQUEST_ERROR} AND NOT client_disconnected ORDER BY at_ms DESC LIMIT ?",
            [deployment_id, lo, limit],
        )

    def deployment_request_buckets(self, deployment_id: str, lo: int, hi: int, width_ms: int) -> list[dict]:
        """Sums per bucket of `width_ms`: an hour or more from the hourly sums (whole hours: the
        one `lo` falls in counts whole), less from the rows."""
        if width_ms >= HOUR_MS:
            return self._rows(
                "SELECT (hour_ms / :w) * :w AS bucket_ms, SUM(requests) AS requests, SUM(errors) AS errors,"
                " SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,"
                " ROUND(SUM(latency_sum_ms) / SUM(requests), 3) AS mean_latency_ms,"
                " MAX(latency_max_ms) AS max_latency_ms,"
                " ROUND(SUM(ttft_sum_ms) / NULLIF(SUM(ttft_n), 0), 3) AS mean_ttft_ms"
                " FROM deployment_request_hours WHERE deployment_id = :d AND hour_ms >= :lo AND hour_ms <= :hi"
                " GROUP BY bucket_ms ORDER BY bucket_ms",
                {"w": width_ms, "d": deployment_id, "lo": lo // HOUR_MS * HOUR_MS, "hi": hi},
            )
        return self._rows(
            "SELECT (at_ms / :w) * :w AS bucket_ms, COUNT(*) AS requests,"
            f" COALESCE(SUM({self._REQUEST_ERROR}), 0) AS errors,"
            " COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
            " COALESCE(SUM(completion_tokens), 0) AS completion_tokens,"
            " ROUND(AVG(e2e_latency_ms), 3) AS mean_latency_ms, MAX(e2e_latency_ms) AS max_latency_ms,"
            " ROUND(AVG(ttft_ms), 3) AS mean_ttft_ms"
            " FROM deployment_requests WHERE deployment_id = :d AND at_ms >= :lo AND at_ms <= :hi"
            " GROUP BY bucket_ms ORDER BY bucket_ms",
            {"w": width_ms, "d": deployment_id, "lo": lo, "hi": hi},
        )

    def delete_deployment(self, id: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM deployments WHERE id = ?", [id]).rowcount > 0

    def jobs_holding_devices(self) -> list[dict]:
        """Jobs whose process may still exist: placed and not yet released, oldest first."""
        return self._rows("SELECT * FROM jobs WHERE devices IS NOT NULL ORDER BY rowid", (), "jobs")

    def ingest_progress(
        self,
        job_id: str,
        offset: int,
        *,
        points: list[tuple[int, dict[str, float]]],
        samples: list[dict],
        checkpoints: list[tuple[int, str, str]],
        events: list[tuple[str, dict, str]],
        fields: dict[str, Any],
        running: dict | None,
    ) -> None:
        """Everything read from one stretch of progress.jsonl, and the offset just past it, in
        one transaction: a crash in between neither loses records nor reads them twice."""
        with self.transaction() as conn:
            self._add_metric_rows(conn, job_id, points)
            conn.executemany(
                "INSERT INTO samples (job_id, step, data) VALUES (?, ?, ?)",
                [(job_id, int(s.get("step") or 0), json.dumps(s)) for s in samples],
            )
            for step, path, stamp in checkpoints:
                conn.execute(
                    "INSERT INTO checkpoints (id, job_id, step, path, created_at) VALUES (?, ?, ?, ?, ?)",
                    [new_id("ckpt_"), job_id, step, path, stamp],
                )
            for event_type, metadata, stamp in events:
                self._add_event(conn, job_id, event_type, metadata, stamp)
            if running is not None:
                moved = conn.execute(
                    "UPDATE jobs SET status = ?, started_at = ?, total_steps = ? WHERE id = ? AND status = ?",
                    [JobStatus.RUNNING, running["at"], running["total_steps"], job_id, JobStatus.PROVISIONING],
                ).rowcount
                if moved:
                    self._add_event(conn, job_id, JobStatus.RUNNING, running["metadata"], running["at"])
            sets = _encode_job_fields({**fields, "progress_offset": offset, "updated_at": now()})
            conn.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?", [*sets.values(), job_id]
            )

    # -- events ----------------------------------------------------------------------------

    def _add_event(
        self, conn: sqlite3.Connection, job_id: str, event_type: str, metadata: dict, stamp: str | None = None
    ) -> None:
        conn.execute(
            "INSERT INTO events (id, job_id, event_type, timestamp, metadata) VALUES (?, ?, ?, ?, ?)",
            [new_id("ev_"), job_id, event_type, stamp or now(), json.dumps(metadata)],
        )

    def add_event(self, job_id: str, event_type: str, metadata: dict | None = None) -> None:
        self._add_event(self.db.conn, job_id, event_type, metadata or {})

    def list_events(self, job_id: str, limit: int) -> list[dict]:
        """The first `limit` events in the order they happened."""
        return self._rows(
            "SELECT id, event_type, timestamp, metadata FROM events WHERE job_id = ? ORDER BY seq LIMIT ?",
            [job_id, limit],
            "events",
        )

    # -- metrics ---------------------------------------------------------------------------

    def add_metrics(self, job_id: str, points: Iterable[tuple[int, dict[str, float]]]) -> int:
        """Insert (step, {key: value}) points; a step logged twice keeps each key's latest value.
        Values must be finite numbers (JSON has no NaN)."""
        with self.transaction() as conn:
            return self._add_metric_rows(conn, job_id, points)

    def _add_metric_rows(
        self, conn: sqlite3.Connection, job_id: str, points: Iterable[tuple[int, dict[str, float]]]
    ) -> int:
        points = [(step, values) for step, values in points if values]
        narrow = [(job_id, key, step, value) for step, values in points for key, value in values.items()]
        conn.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)", narrow)
        conn.executemany(
            """INSERT INTO metric_steps VALUES (?, ?, ?)
               ON CONFLICT (job_id, step) DO UPDATE SET vals = json_patch(vals, excluded.vals)""",
            [(job_id, step, json.dumps(values)) for step, values in points],
        )
        return len(narrow)

    def metric_keys(self, job_id: str) -> list[str]:
        # A loose index scan: one seek per distinct key instead of reading every point.
        rows = self.db.execute(
            """WITH RECURSIVE k(key) AS (
                   SELECT min(key) FROM metrics WHERE job_id = :job
                   UNION ALL
                   SELECT (SELECT min(key) FROM metrics WHERE job_id = :job AND key > k.key)
                   FROM k WHERE k.key IS NOT NULL)
               SELECT key FROM k WHERE key IS NOT NULL""",
            {"job": job_id},
        ).fetchall()
        return [r[0] for r in rows]

    # Reads below take `key=None` for the per-step table (every step) or a key name for that
    # key's own points; [lo, hi] bounds the steps (None: unbounded).

    def _metric_where(self, job_id: str, key: str | None, lo: int | None, hi: int | None) -> tuple[str, str, dict]:
        table = "metric_steps" if key is None else "metrics"
        params = {
            "job": job_id,
            "key": key,
            "lo": -(2**63) if lo is None else lo,
            "hi": 2**63 - 1 if hi is None else hi,
        }
        where = "job_id = :job AND step BETWEEN :lo AND :hi" + ("" if key is None else " AND key = :key")
        return table, where, params

    def metric_step_bounds(
        self, job_id: str, key: str | None, lo: int | None, hi: int | None
    ) -> tuple[int, int] | None:
        """First and last step within [lo, hi]: two index seeks (min()/max() over a range
        would read every point in it)."""
        table, where, params = self._metric_where(job_id, key, lo, hi)
        row = self.db.execute(
            f"""SELECT (SELECT step FROM {table} WHERE {where} ORDER BY step LIMIT 1),
                       (SELECT step FROM {table} WHERE {where} ORDER BY step DESC LIMIT 1)""",
            params,
        ).fetchone()
        return None if row[0] is None else (row[0], row[1])

    def metric_count_upto(self, job_id: str, key: str | None, lo: int, hi: int, cap: int) -> int:
        """How many steps lie in [lo, hi], counting no further than `cap`."""
        table, where, params = self._metric_where(job_id, key, lo, hi)
        return self.db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT :cap)", {**params, "cap": cap}
        ).fetchone()[0]

    def metric_points(self, job_id: str, key: str | None, lo: int, hi: int) -> list[tuple[int, Any]]:
        """(step, value) of a key, or (step, {key: value}) of every step, in [lo, hi]."""
        table, where, params = self._metric_where(job_id, key, lo, hi)
        column = "vals" if key is None else "value"
        rows = self.db.execute(f"SELECT step, {column} FROM {table} WHERE {where} ORDER BY step", params).fetchall()
        return [(step, _decode_vals(vals)) for step, vals in rows] if key is None else rows

    def metric_points_at_or_after(self, job_id: str, key: str | None, targets: list[int]) -> list[tuple[int, Any]]:
        """For each target step, the first stored point at or after it (one index seek each)."""
        table = "metric_steps" if key is None else "metrics"
        where = "job_id = :job" + ("" if key is None else " AND key = :key")
        params = {"job": job_id, "key": key}
        column = "vals" if key is None else "value"
        # CROSS JOIN keeps the targets as the outer loop; a plain JOIN lets SQLite scan every
        # point and re-run the subquery for each.
        rows = self.db.execute(
            f"""SELECT DISTINCT m.step, m.{column} FROM json_each(:targets) t
                CROSS JOIN {table} m ON m.job_id = :job
                    {"" if key is None else "AND m.key = :key"} AND m.step = (
                    SELECT step FROM {table} WHERE {where} AND step >= t.value ORDER BY step LIMIT 1)
                ORDER BY m.step""",
            {**params, "targets": json.dumps(targets)},
        ).fetchall()
        return [(step, _decode_vals(vals)) for step, vals in rows] if key is None else rows

    def latest_metric_values(self, job_ids: list[str], key: str) -> dict[str, float]:
        """Each job's `key` at the last step that logged it (one index seek per job); jobs
        that never logged it are left out."""
        out = {}
        for job_id in job_ids:
            row = self.db.execute(
                "SELECT value FROM metrics WHERE job_id = ? AND key = ? ORDER BY step DESC LIMIT 1", [job_id, key]
            ).fetchone()
            if row is not None:
                out[job_id] = row[0]
        return out

    def latest_metric_step(self, job_id: str) -> int | None:
        bounds = self.metric_step_bounds(job_id, None, None, None)
        return bounds[1] if bounds else None

    # -- samples and checkpoints -------------------------------------------------------------

    def add_samples(self, job_id: str, samples: Iterable[dict]) -> None:
        rows = [(job_id, int(s.get("step") or 0), json.dumps(s)) for s in samples]
        with self.transaction() as conn:
            conn.executemany("INSERT INTO samples (job_id, step, data) VALUES (?, ?, ?)", rows)

    def list_samples(self, job_id: str, step: int | None, limit: int, after: int | None) -> tuple[list[dict], bool]:
        where, params = ["job_id = ?"], [job_id]
        if step is not None:
            where.append("step = ?")
            params.append(step)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        rows = self._rows(
            f"SELECT seq, step, data FROM samples WHERE {' AND '.join(where)} ORDER BY step, seq LIMIT ?",
            [*params, limit + 1],
            "samples",
        )
        return rows[:limit], len(rows) > limit

    def samples_at_steps(self, job_id: str, steps: list[int], prompt: str | None, limit: int) -> list[dict]:
        """The samples of these steps (of one prompt, when given), in step order: `step IN (...)`
        walks samples_job_step for just those steps, so a prompt followed across steps costs the
        rows of the steps shown, not a scan of the job's whole history (there is no index on the
        prompt inside the JSON)."""
        if not steps:
            return []
        where = f"job_id = ? AND step IN ({','.join('?' * len(steps))})"
        params: list[Any] = [job_id, *steps]
        if prompt is not None:
            where += " AND json_extract(data, '$.prompt') = ?"
            params.append(prompt)
        return self._rows(
            f"SELECT seq, step, data FROM samples WHERE {where} ORDER BY step, seq LIMIT ?", [*params, limit], "samples"
        )

    def sample_prompts(self, job_id: str) -> list[str]:
        """Every prompt the job's samples name, once each (a read of the job's samples, as below)."""
        rows = self.db.execute(
            "SELECT DISTINCT json_extract(data, '$.prompt') FROM samples WHERE job_id = ?", [job_id]
        ).fetchall()
        return [r[0] for r in rows if isinstance(r[0], str)]

    def prompt_steps(self, job_id: str, prompt: str) -> list[int]:
        """The steps at which this prompt was rolled out, oldest first. The prompt lives inside the
        JSON with no index of its own, so this reads the job's samples (samples_job_step's job_id
        prefix, no other job's): about 85 ms for 128k samples (2000 steps of 64)."""
        rows = self.db.execute(
            "SELECT DISTINCT step FROM samples WHERE job_id = ? AND json_extract(data, '$.prompt') = ? ORDER BY step",
            [job_id, prompt],
        ).fetchall()
        return [r[0] for r in rows]

    def add_checkpoint(self, job_id: str, step: int, path: str) -> dict:
        row = {"id": new_id("ckpt_"), "job_id": job_id, "step": step, "path": path, "created_at": now()}
        self._insert("checkpoints", row)
        return row

    def list_checkpoints(self, job_id: str) -> list[dict]:
        return self._rows("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step DESC", [job_id])

    def get_checkpoint(self, checkpoint_id: str) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE id = ?", [checkpoint_id])

    def checkpoint_at(self, job_id: str, step: int) -> dict | None:
        """A job's checkpoint of that step; the latest saved if a step was saved twice."""
        return self._one(
            "SELECT * FROM checkpoints WHERE job_id = ? AND step = ? ORDER BY rowid DESC LIMIT 1", [job_id, step]
        )

    # -- integrations ----------------------------------------------------------------------

    def put_integration(self, provider: str, api_key: str, base_url: str | None, options: dict | None = None) -> dict:
        stamp = now()
        self.db.execute(
            """INSERT INTO integrations (provider, api_key, base_url, options, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(provider) DO UPDATE SET
               api_key = excluded.api_key, base_url = excluded.base_url, options = excluded.options,
               updated_at = excluded.updated_at""",
            [provider, api_key, base_url, json.dumps(options) if options else None, stamp, stamp],
        )
        return self.get_integration(provider)  # type: ignore[return-value]

    def get_integration(self, provider: str) -> dict | None:
        return self._one("SELECT * FROM integrations WHERE provider = ?", [provider], "integrations")

    # -- pushes to the Hugging Face Hub (hub.py) ---------------------------------------------

    def start_hf_push(self, job_id: str, request: dict, state: dict, event: dict) -> bool:
        """Record a job's push as started (what is pushed, its state, the hf_push_started event)
        in one transaction, unless a push of the job is in flight: then nothing changes (False)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT hf_push_state FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None or (row[0] and json.loads(row[0]).get("status") == "pushing"):
                return False
            conn.execute(
                "UPDATE jobs SET hf_push = ?, hf_push_state = ?, updated_at = ? WHERE id = ?",
                [json.dumps(request), json.dumps(state), now(), job_id],
            )
            self._add_event(conn, job_id, "hf_push_started", event)
        return True

    def end_hf_push(self, job_id: str, state: dict, event_type: str, event: dict) -> None:
        """A push's outcome and its event; nothing if the job was deleted meanwhile."""
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET hf_push_state = ?, updated_at = ? WHERE id = ?", [json.dumps(state), now(), job_id]
            ).rowcount
            if changed:
                self._add_event(conn, job_id, event_type, event)

    def jobs_with_hf_push(self, *statuses: str) -> list[dict]:
        """Jobs whose push is in one of these states (a scan: only start-up asks)."""
        marks = ",".join("?" * len(statuses))
        return self._rows(
            f"SELECT * FROM jobs WHERE json_extract(hf_push_state, '$.status') IN ({marks}) ORDER BY rowid",
            statuses,
            "jobs",
        )

    # -- cloud instances -------------------------------------------------------------------

    def insert_instance(self, row: dict) -> dict:
        """A new instance record: `id` (new_id("inst_") if absent), provider, name, job_id, gpu_type,
        gpu_count, status, and whatever else is known at launch."""
        stamp = now()
        row = {"id": new_id("inst_"), "created_at": stamp, "updated_at": stamp, **row}
        self._insert("instances", row)
        return self.get_instance(row["id"])  # type: ignore[return-value]

    def update_instance(self, id: str, **fields: Any) -> None:
        fields = {**fields, "updated_at": now()}
        self.db.execute(
            f"UPDATE instances SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", [*fields.values(), id]
        )

    def get_instance(self, id: str) -> dict | None:
        return self._one("SELECT * FROM instances WHERE id = ?", [id])

    def instance_for_job(self, job_id: str) -> dict | None:
        """The job's latest instance (a launch that fell through to another offer leaves earlier ones)."""
        return self._one("SELECT * FROM instances WHERE job_id = ? ORDER BY rowid DESC LIMIT 1", [job_id])

    def open_instances(self) -> list[dict]:
        """Instances not yet known to be terminated, oldest first."""
        return self._rows("SELECT * FROM instances WHERE terminated_at IS NULL ORDER BY rowid")

    def instance_spend(self, since: str) -> list[dict]:
        """Instances that ran at any time since `since` (for cost and budgets)."""
        return self._rows(
            "SELECT * FROM instances WHERE launched_at IS NOT NULL AND (terminated_at IS NULL OR terminated_at >= ?)"
            " ORDER BY rowid",
            [since],
        )

    def delete_integration(self, provider: str) -> bool:
        return self.db.execute("DELETE FROM integrations WHERE provider = ?", [provider]).rowcount > 0

    # -- overviews for the dashboard (bounded: each is an index seek or a scan of one small index)

    def any_job(self) -> bool:
        return self.db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None

    def job_counts(self) -> dict[str, int]:
        """Jobs per status (a scan of the jobs_status index, not of the rows)."""
        return dict(self.db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

    def recent_base_models(self, limit: int) -> list[str]:
        rows = self.db.execute("SELECT base_model FROM jobs ORDER BY rowid DESC LIMIT 200").fetchall()
        return list(dict.fromkeys(r[0] for r in rows))[:limit]

    def sample_steps(self, job_id: str, limit: int) -> list[int]:
        """Steps that have rollouts or clips, newest first (a loose scan of samples_job_step)."""
        rows = self.db.execute(
            """WITH RECURSIVE s(step) AS (
                   SELECT max(step) FROM samples WHERE job_id = :job
                   UNION ALL
                   SELECT (SELECT max(step) FROM samples WHERE job_id = :job AND step < s.step)
                   FROM s WHERE s.step IS NOT NULL)
               SELECT step FROM s WHERE step IS NOT NULL LIMIT :limit""",
            {"job": job_id, "limit": limit},
        ).fetchall()
        return [r[0] for r in rows]

    def datasets_in_use(self, ids: list[str]) -> set[str]:
        """Which of these datasets a job that has not finished uses (they cannot be deleted)."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        # From the few unfinished jobs (jobs_status index); `+dataset_id` keeps SQLite from
        # walking every job of a popular dataset through jobs_dataset instead.
        rows = self.db.execute(
            f"""SELECT DISTINCT dataset_id FROM jobs
                WHERE status IN ({_ACTIVE_MARKS}) AND +dataset_id IN ({marks})""",
            [*ACTIVE, *ids],
        ).fetchall()
        return {r[0] for r in rows}

    def reward_functions_in_use(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"""SELECT DISTINCT r.reward_function_id FROM jobs j CROSS JOIN job_reward_functions r ON r.job_id = j.id
                WHERE j.status IN ({_ACTIVE_MARKS}) AND r.reward_function_id IN ({marks})""",
            [*ACTIVE, *ids],
        ).fetchall()
        return {r[0] for r in rows}

    # -- sessions

    def end_session(self, session_id: str, expires: int, now_s: int) -> None:
        """Record a dashboard session as ended; rows of sessions past their expiry go."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM ended_sessions WHERE expires < ?", [now_s])
            conn.execute("INSERT OR IGNORE INTO ended_sessions (id, expires) VALUES (?, ?)", [session_id, expires])

    def session_ended(self, session_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM ended_sessions WHERE id = ?", [session_id]).fetchone() is not None

    # -- sharing: ownership, quotas, audit (issue 20)

    def key_names(self, ids: Iterable[str]) -> dict[str, str]:
        """Names of these keys, revoked ones too (an object keeps naming the key that made it)."""
        ids = sorted({i for i in ids if i})
        if not ids:
            return {}
        rows = self.db.execute(f"SELECT id, name FROM api_keys WHERE id IN ({','.join('?' * len(ids))})", ids)
        return dict(rows.fetchall())

    def any_api_key(self, id: str) -> dict | None:
        """A key's row, revoked or not."""
        return self._one("SELECT * FROM api_keys WHERE id = ?", [id])

    def owner_of(self, table: str, id: str) -> tuple[bool, str | None]:
        """(whether the row exists, its created_by) for an owned table."""
        if table not in OWNED_TABLES:
            raise ValueError(f"{table} has no owner")
        row = self.db.execute(f"SELECT created_by FROM {table} WHERE id = ?", [id]).fetchone()
        return (row is not None, row[0] if row else None)

    def reassign(self, from_key: str, to_key: str) -> dict[str, int]:
        """Give every object of one key to another, in one transaction: {table: rows moved}."""
        moved = {}
        with self.transaction() as conn:
            for table in OWNED_TABLES:
                cursor = conn.execute(f"UPDATE {table} SET created_by = ? WHERE created_by = ?", [to_key, from_key])
                moved[table] = cursor.rowcount
        return moved

    def owned_counts(self, key_id: str) -> dict[str, int]:
        return {
            table: self.db.execute(f"SELECT count(*) FROM {table} WHERE created_by = ?", [key_id]).fetchone()[0]
            for table in OWNED_TABLES
        }

    def jobs_placed_by(self, key_id: str) -> list[dict]:
        """A key's jobs that hold devices or an instance now (what concurrency quotas count)."""
        return self._rows(
            "SELECT * FROM jobs WHERE devices IS NOT NULL AND created_by = ? ORDER BY rowid", [key_id], "jobs"
        )

    def instances_spend_usd(self, key_id: str | None, since: str, until: str) -> float:
        """USD of the instances of a key's jobs (every key's when None) between `since` and `until`:
        each billed from launch (or `since`) to termination (or `until`) at its price, summed here
        rather than row by row in Python (a month of a busy box is thousands of instances)."""
        begin, end = _jd_ms("max(i.launched_at, :since)"), _jd_ms("coalesce(i.terminated_at, :until)")
        sql = (
            f"SELECT coalesce(sum(max({end} - {begin}, 0.0) / 3600000.0 * coalesce(i.price_per_hr, 0.0)), 0.0)"
            " FROM instances i"
            " WHERE i.launched_at IS NOT NULL AND (i.terminated_at IS NULL OR i.terminated_at >= :since)"
        )
        params: dict[str, Any] = {"since": since, "until": until}
        if key_id is not None:
            sql += " AND i.job_id IN (SELECT id FROM jobs WHERE created_by = :key)"
            params["key"] = key_id
        return self.db.execute(sql, params).fetchone()[0]

    def get_quota(self, scope: str) -> dict | None:
        return self._one("SELECT * FROM quotas WHERE scope = ?", [scope])

    def put_quota(self, scope: str, limits: dict[str, Any]) -> dict:
        row = {"scope": scope, **limits, "updated_at": now()}
        cols = ", ".join(row)
        self.db.execute(
            f"INSERT OR REPLACE INTO quotas ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
        return self.get_quota(scope)

    def add_audit(self, row: dict) -> None:
        self._insert("audit", {"id": new_id("aud_"), "at": now(), **row})

    def list_audit(
        self,
        limit: int,
        after: str | None,
        key_id: str | None = None,
        object_type: str | None = None,
        object_id: str | None = None,
        action: str | None = None,
    ) -> tuple[list[dict], bool]:
        where, params = [], []
        for column, value in (("key_id", key_id), ("object_type", object_type), ("object_id", object_id)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if action:
            where.append("action LIKE ? ESCAPE '\\'")
            params.append("%" + action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return self._page("audit", where, params, limit, after)
