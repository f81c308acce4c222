"""The Hugging Face Hub: the integration (a write token, checked against the Hub's whoami and
never returned; whoami also says where it may push, kept with it), `hf_push` on a job (checked
at submit, its namespace among those), and the push itself: when a job with
hf_push completes, or when asked later (POST /v1/training_jobs/{job_id}/push), a background
thread creates the repo and uploads the job's output folder as it is (model card, weights,
tokenizer), recording hf_push_started, then hf_push_completed or hf_push_failed. A push never
changes the job's status: a failed upload does not undo a finished training.

The Hub is `--hf-endpoint` (the public Hub by default). huggingface_hub is imported only when a
token is checked or a push runs, so the server starts without it. Uploads take the LFS path:
Xet is switched off for the box's pushes (see _hf), which keeps one protocol for the public Hub,
private Hubs and the tests' stand-in (which does not speak Xet)."""

from __future__ import annotations

import logging
import re
import threading
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal

import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from . import paths
from .errors import ApiError, bad_request, conflict, not_found
from .settings import Settings
from .statuses import TERMINAL, JobStatus
from .store import Store, now

log = logging.getLogger("veri_box.hub")

HUGGINGFACE = "huggingface"
ARTIFACTS = ("adapter", "merged")
# A Hub repo id as the Hub accepts it (huggingface_hub's validate_repo_id): namespace/name, each
# of letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no '--' or '..'.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"(?P<namespace>{_PART})/(?P<name>{_PART})")
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # per read or write, not for a whole upload: weights take as long as they take
REASON_CHARS = 2000
# Organization roles that may create repos in the organization (the Hub's docs, "Access control in
# organizations"): `contributor` creates repos and writes to those it created, `read` writes nothing.
WRITE_ROLES = ("admin", "write", "contributor")


class HuggingFaceSettings(msgspec.Struct, forbid_unknown_fields=True):
    token: Annotated[str, Meta(min_length=1, max_length=1000)]


class HuggingFaceIntegration(msgspec.Struct):
    """What `veri hf status` shows: {configured, username}; never the token. `can_push_to`: the
    namespaces (and single repos, for a fine-grained token) jobs may push to, as the Hub's whoami
    said when the token was set; None for a token set before the box kept them."""

    configured: bool
    username: str | None
    updated_at: str | None
    can_push_to: list[str] | None = None
    provider: str = HUGGINGFACE
    object: str = "integration"


class HfPush(msgspec.Struct, forbid_unknown_fields=True):
    """`hf_push` on create, and the body of POST /v1/training_jobs/{job_id}/push."""

    repo: Annotated[str, Meta(min_length=1, max_length=200)]
    artifact: Literal["adapter", "merged"]
    private: bool = True


class HfPushState(msgspec.Struct):
    """A job's push as the job object shows it. status: waiting (for the job to complete),
    pushing, completed, failed, or skipped (the job did not complete)."""

    repo: str
    artifact: str
    private: bool
    status: str
    repo_url: str | None
    commit: str | None
    error: str | None
    updated_at: str | None
    job_id: str | None = None
    object: str = "hf_push"


# -- huggingface_hub, imported when needed ------------------------------------------------------

_setup = threading.Lock()
_ready = False


def _hf():
    """huggingface_hub, set up for the server once: Xet off (uploads take the LFS batch API),
    no progress bars in the server's log, and timeouts (its own client has none, so a Hub that
    stops answering would hold a request or a push forever)."""
    global _ready
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    with _setup:
        if not _ready:
            # Read by is_xet_available() on every upload: the same as HF_HUB_DISABLE_XET=1 before
            # the import, whichever module imported huggingface_hub first.
            constants.HF_HUB_DISABLE_XET = True
            huggingface_hub.utils.disable_progress_bars()

            def client():
                made = _http.default_client_factory()
                made.timeout = _http.httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
                return made

            huggingface_hub.set_client_factory(client)
            _ready = True
    return huggingface_hub


def _reason(exc: BaseException, token: str | None = None) -> str:
    """A failure in a sentence or a few lines: the Hub's message, never the token."""
    # huggingface_hub's errors: the status line, a link to MDN's page of the status, then the
    # Hub's own message; the link says nothing the status does not.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("For more information check:")]
    text = " ".join(" ".join(kept).split()) or type(exc).__name__
    if token:
        text = text.replace(token, "hf_***")
    return text[:REASON_CHARS]


# -- the integration ---------------------------------------------------------------------------


def _to_api(row: dict | None) -> HuggingFaceIntegration:
    if row is None:
        return HuggingFaceIntegration(configured=False, username=None, updated_at=None)
    options = row["options"] or {}
    return HuggingFaceIntegration(
        configured=True,
        username=options.get("username"),
        updated_at=row["updated_at"],
        can_push_to=[*options["namespaces"], *options.get("repos", [])] if "namespaces" in options else None,
    )


def get(store: Store) -> HuggingFaceIntegration:
    return _to_api(store.get_integration(HUGGINGFACE))


def whoami(settings: Settings, token: str) -> dict:
    """The Hub's whoami for a token; ApiError 400 when the Hub refuses it or cannot be reached.
    Unreachable is a 400 too (`hf_hub_unreachable`): the box's API answers what a client can act
    on with a 4xx, and here that is the address (--hf-endpoint) or the network."""
    hf = _hf()
    try:
        return hf.HfApi(endpoint=settings.hf_endpoint).whoami(token=token)
    except hf.errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise bad_request(
                "hf_token_invalid",
                f"The Hugging Face Hub ({settings.hf_endpoint}) refused this token ({status}): "
                "make a token with write access at https://huggingface.co/settings/tokens and send it.",
                "token",
            ) from None
        raise bad_request(
            "hf_hub_unreachable",
            f"The Hugging Face Hub at {settings.hf_endpoint} could not check the token: {_reason(exc, token)}",
            "token",
        ) from None
    except Exception as exc:  # connection refused, DNS, timeouts, a proxy's HTML page
        raise bad_request(
            "hf_hub_unreachable",
            f"The Hugging Face Hub at {settings.hf_endpoint} could not be reached ({_reason(exc, token)}); "
            "check the box's network, or --hf-endpoint for a private Hub. Nothing was saved.",
            "token",
        ) from None


def write_access(user: dict) -> dict:
    """Where the token may push, from its whoami-v2: {"namespaces": [...], "repos": [...]}.

    A classic token (auth.accessToken.role write or admin) writes where its user does: the
    user's own namespace and each organization whose `roleInOrg` is not `read`. A read token
    writes nowhere. A fine-grained token (role `fineGrained`) writes only where one of its
    `fineGrained.scoped` entries grants `repo.write`: a user or organization entity (an
    organization only if the user may write there too), or one repo. A role or org role the Hub
    did not send (a private Hub may not) counts as write: the box refuses at submit only what it
    knows the Hub would refuse at the end."""
    name = user["name"]
    token = (user.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    org_roles = {
        o["name"].casefold(): o.get("roleInOrg")
        for o in user.get("orgs") or []
        if isinstance(o, dict) and isinstance(o.get("name"), str)
    }
    orgs = [o["name"] for o in user.get("orgs") or [] if isinstance(o, dict) and isinstance(o.get("name"), str)]

    def org_writable(org: str) -> bool:
        return org_roles.get(org.casefold()) in (*WRITE_ROLES, None)

    if role == "read":
        return {"namespaces": [], "repos": []}
    if role != "fineGrained":
        return {"namespaces": [name, *(o for o in orgs if org_writable(o))], "repos": []}
    namespaces: list[str] = []
    repos: list[str] = []
    for entry in (token.get("fineGrained") or {}).get("scoped") or []:
        entity = entry.get("entity") if isinstance(entry, dict) else None
        if not isinstance(entity, dict) or "repo.write" not in (entry.get("permissions") or []):
            continue
        kind, entity_name = entity.get("type"), entity.get("name")
        if not isinstance(entity_name, str) or not entity_name:
            continue
        if kind == "user" and entity_name.casefold() == name.casefold():
            namespaces.append(name)
        elif kind == "org" and entity_name.casefold() in org_roles and org_writable(entity_name):
            namespaces.append(entity_name)
        elif kind not in ("user", "org", "dataset", "space") and "/" in entity_name:
            repos.append(entity_name)  # a token scoped to single model repos
    return {"namespaces": namespaces, "repos": repos}


def put(store: Store, settings: Settings, body: HuggingFaceSettings) -> HuggingFaceIntegration:
    """Store a token once the Hub has named its user, with where it may push (write_access: read
    again each time the token is set); nothing is stored otherwise."""
    token = body.token.strip()
    if not token or any(c.isspace() for c in token):
        raise bad_request("invalid_value", "token must be a single Hugging Face token without spaces.", "token")
    user = whoami(settings, token)
    name = user.get("name") if isinstance(user, dict) else None
    if not isinstance(name, str) or not name:
        raise bad_request(
            "hf_hub_unreachable", f"The Hub at {settings.hf_endpoint} answered whoami without a user name.", "token"
        )
    access = write_access(user)
    if not access["namespaces"] and not access["repos"]:
        role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
        raise bad_request(
            "hf_token_read_only",
            f"This token of {name} ({role or 'no role'}) cannot write to any repo on the Hub, so no job could "
            "push with it: make a token with write access (or a fine-grained one with repo.write on your "
            "namespace) at https://huggingface.co/settings/tokens and send it. Nothing was saved.",
            "token",
        )
    orgs = [o.get("name") for o in user.get("orgs") or [] if isinstance(o, dict) and isinstance(o.get("name"), str)]
    options = {"username": name, "orgs": orgs, **access}
    return _to_api(store.put_integration(HUGGINGFACE, token, settings.hf_endpoint, options))


def delete(store: Store) -> HuggingFaceIntegration:
    store.delete_integration(HUGGINGFACE)
    return _to_api(None)


# -- hf_push on a job ----------------------------------------------------------------------------


def check_request(request: HfPush, store: Store, method: str, hyperparameters: dict, param: str = "hf_push") -> dict:
    """The push a job asks for, checked against the job (submit, or a later push): 400 when it
    cannot work, before anything is stored. Returns it as the job row keeps it. `param` is where
    the push sits in the request: `hf_push` at submit, "" for a later push (its body is the push)."""

    def field(name: str) -> str:
        return f"{param}.{name}" if param else name

    integration = store.get_integration(HUGGINGFACE)
    if integration is None:
        raise bad_request(
            "integration_not_configured",
            "Pushing to the Hugging Face Hub needs a token: set it with PUT /v1/settings/integrations/huggingface "
            '{"token": "hf_..."} (veri hf set).',
            param or None,
        )
    repo = request.repo.strip()
    if not REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        raise bad_request(
            "invalid_value",
            f"'{request.repo}' is not a Hub repo id: send namespace/name (your user or organization, a slash, "
            "the model's name), with letters, digits, '-', '_' and '.' only.",
            field("repo"),
        )
    _check_namespace(repo, integration["options"] or {}, field("repo"))
    lora = bool(hyperparameters.get("lora_rank"))
    if request.artifact == "adapter" and not lora:
        raise bad_request(
            "hf_push_incompatible",
            "artifact 'adapter' needs a LoRA job (set hyperparameters.lora_rank); a full fine-tune's model is "
            "whole already: push it with artifact 'merged'.",
            field("artifact"),
        )
    if request.artifact == "merged" and method == "sft_video_gen":
        raise bad_request(
            "hf_push_incompatible",
            "A video job's LoRA loads into its diffusers pipeline (load_lora_weights) and is not merged: "
            "push it with artifact 'adapter'.",
            field("artifact"),
        )
    return {"repo": repo, "artifact": request.artifact, "private": request.private}


def _check_namespace(repo: str, options: dict, param: str) -> None:
    """400 `hf_namespace_forbidden` for a repo the token cannot write to, before a job trains for an
    hour and its push fails at the end. What the token may write to is what the Hub's whoami said
    when the token was set (put), so joining an organization, or a new role in one, counts once
    the token is set again."""
    username = options.get("username") or "?"
    if "namespaces" in options:
        namespaces, repos = list(options["namespaces"]), list(options.get("repos") or [])
    else:  # a token set before the box kept its namespaces: the orgs' roles are unknown, all count
        namespaces, repos = [username, *(options.get("orgs") or [])], []
    namespace = repo.split("/", 1)[0]
    if namespace.casefold() in {n.casefold() for n in namespaces} or repo.casefold() in {r.casefold() for r in repos}:
        return
    can = ", ".join([*namespaces, *repos]) or "nothing"
    raise bad_request(
        "hf_namespace_forbidden",
        f"The Hugging Face token (user {username}) cannot write to the namespace '{namespace}'; it can write to: "
        f"{can}. Push to one of those, or get write rights on '{namespace}' (a write, contributor or admin role "
        "in the organization, or repo.write on it for a fine-grained token) and set the token again "
        "(PUT /v1/settings/integrations/huggingface, veri hf set): the box reads where a token may write from "
        "the Hub when the token is set. Nothing was stored.",
        param,
    )


def waiting_state() -> dict:
    """The state a job submitted with hf_push starts in."""
    return {"status": "waiting", "repo_url": None, "commit": None, "error": None, "updated_at": now()}


def state(job: dict) -> HfPushState | None:
    """The job's push for its API object; None if it never asked for one."""
    asked, current = job.get("hf_push"), job.get("hf_push_state")
    if not asked:
        return None
    current = current or waiting_state()
    status = current.get("status", "waiting")
    if status == "waiting" and job["status"] in TERMINAL and job["status"] != JobStatus.COMPLETED:
        status = "skipped"
    return HfPushState(
        repo=asked["repo"],
        artifact=asked["artifact"],
        private=bool(asked.get("private", True)),
        status=status,
        repo_url=current.get("repo_url"),
        commit=current.get("commit"),
        error=current.get("error"),
        updated_at=current.get("updated_at"),
        job_id=job["id"],
    )


def repo_url(job: dict) -> str | None:
    """The pushed repo's URL (the SDK's `hf_repo_url`), once a push succeeded."""
    current = job.get("hf_push_state") or {}
    return current.get("repo_url") if current.get("status") == "completed" else None


# -- the push --------------------------------------------------------------------------------


def push_later(box: Any, job_id: str, request: HfPush) -> HfPushState:
    """POST /v1/training_jobs/{job_id}/push: push a completed job now (to the repo named here)."""
    store = box.store
    job = store.get_job(job_id)
    if job is None:
        raise not_found("training job", job_id)
    if job["status"] != JobStatus.COMPLETED:
        raise conflict(
            "job_not_completed",
            f"Job {job_id} is {job['status']}; only a completed job's model can be pushed to the Hub.",
        )
    asked = check_request(request, store, job["method"], job["hyperparameters"], param="")
    started = start(box, job_id, asked)
    if started is None:
        raise conflict("hf_push_in_progress", f"Job {job_id} is being pushed already; wait for its hf_push_completed.")
    return started


def start(box: Any, job_id: str, asked: dict | None = None) -> HfPushState | None:
    """Start pushing a job in a background thread (what the job asked for, unless `asked` names
    another target); None if one of its pushes is in flight already."""
    store = box.store
    job = store.get_job(job_id)
    asked = asked or (job or {}).get("hf_push")
    if job is None or not asked:
        return None
    pushing = {"status": "pushing", "repo_url": None, "commit": None, "error": None, "updated_at": now()}
    event = {"repo": asked["repo"], "artifact": asked["artifact"], "private": asked["private"]}
    if not store.start_hf_push(job_id, asked, pushing, event):
        return None
    threading.Thread(target=_push, args=(box, job_id, asked), name=f"hf-push-{job_id}", daemon=True).start()
    return state(store.get_job(job_id))  # type: ignore[arg-type]


def _folder(box: Any, job: dict, artifact: str) -> Path:
    """What is pushed: the output folder (the adapter, or a full fine-tune's model), or for
    `merged` a LoRA job's merged model (merges.py merges it first if it is not there yet)."""
    if artifact == "merged" and (job["hyperparameters"] or {}).get("lora_rank"):
        from . import merges  # a merge runs trainers/merge.py as a child process: only when asked

        return merges.ensure_merged(box, job["id"])
    return paths.output_dir(box.settings.data_dir, job["id"])


def _push(box: Any, job_id: str, asked: dict) -> None:
    store, settings = box.store, box.settings
    token = None
    try:
        integration = store.get_integration(HUGGINGFACE)
        if integration is None:
            raise RuntimeError(
                "The Hugging Face token was removed before the push; set it again "
                "(PUT /v1/settings/integrations/huggingface) and push with POST /v1/training_jobs/"
                f"{job_id}/push."
            )
        token = integration["api_key"]
        job = store.get_job(job_id)
        if job is None:
            return
        folder = _folder(box, job, asked["artifact"])
        if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
            raise RuntimeError(f"The job's {asked['artifact']} folder {folder} is missing or empty.")
        api = _hf().HfApi(endpoint=settings.hf_endpoint, token=token)
        url = api.create_repo(asked["repo"], private=asked["private"], exist_ok=True)
        info = api.upload_folder(
            repo_id=asked["repo"],
            folder_path=folder,
            commit_message=f"{job['output_name']}: {asked['artifact']} of veri-box job {job_id}",
            commit_description=f"{job['method']} of {job['base_model']}, trained by veri-box.",
        )
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        done = {
            "status": "completed",
            "repo_url": str(url),
            "commit": info.oid,
            "error": None,
            "updated_at": now(),
        }
        event = {"repo": asked["repo"], "repo_url": str(url), "commit": info.oid, "commit_url": info.commit_url}
        store.end_hf_push(job_id, done, "hf_push_completed", {**event, "files": len(files)})
        log.info("pushed %s to %s (%s)", job_id, url, info.oid)
    except BaseException as exc:  # whatever went wrong is the push's failure, never the job's
        reason = exc.message if isinstance(exc, ApiError) else _reason(exc, token)
        failed = {"status": "failed", "repo_url": None, "commit": None, "error": reason, "updated_at": now()}
        try:
            store.end_hf_push(job_id, failed, "hf_push_failed", {"repo": asked["repo"], "reason": reason})
        except Exception:
            log.exception("recording the failed push of %s failed", job_id)
        log.warning("pushing %s to %s failed: %s", job_id, asked["repo"], reason)
        if not isinstance(exc, Exception):
            raise


def completion_hook(box: Any):
    """The runner's call when a job completes: start its push if it asked for one. Holds the box
    weakly (the box holds the runner that holds this)."""
    ref = weakref.ref(box)

    def completed(job: dict) -> None:
        held = ref()
        if held is not None and job.get("hf_push"):
            start(held, job["id"])

    return completed


def recover(box: Any) -> None:
    """At start-up: a push the stopped server was running is failed (it can be pushed again); a
    completed job whose push never started gets it now (a push that cannot start is logged, not
    raised: the server starts anyway)."""
    store = box.store
    for job in store.jobs_with_hf_push("pushing"):
        reason = f"The server stopped during the push; push again with POST /v1/training_jobs/{job['id']}/push."
        failed = {"status": "failed", "repo_url": None, "commit": None, "error": reason, "updated_at": now()}
        repo = (job["hf_push"] or {}).get("repo")
        store.end_hf_push(job["id"], failed, "hf_push_failed", {"repo": repo, "reason": reason})
    for job in store.jobs_with_hf_push("waiting"):
        if job["status"] == JobStatus.COMPLETED:
            try:
                start(box, job["id"])
            except Exception:
                log.exception("starting the missed push of %s failed", job["id"])


def pushing(job: dict) -> bool:
    return (job.get("hf_push_state") or {}).get("status") == "pushing"


# -- controllers ---------------------------------------------------------------------------------


class HuggingFaceController(Controller):
    path = "/v1/settings/integrations/huggingface"
    tags = ["settings"]

    @litestar.put("/", sync_to_thread=True, opt={"rule": "admin"})
    def put_huggingface(
        self, store: NamedDependency[Store], settings: NamedDependency[Settings], data: JSONBody[HuggingFaceSettings]
    ) -> HuggingFaceIntegration:
        """Check the token with the Hub's whoami and store it; answers {configured, username}."""
        return put(store, settings, data)

    @litestar.get("/", sync_to_thread=True)
    def get_huggingface(self, store: NamedDependency[Store]) -> HuggingFaceIntegration:
        return get(store)

    @litestar.delete("/", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def delete_huggingface(self, store: NamedDependency[Store]) -> HuggingFaceIntegration:
        return delete(store)


class HubPushController(Controller):
    path = "/v1/training_jobs"
    tags = ["training jobs"]

    @litestar.post("/{job_id:str}/push", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def push(self, job_id: FromPath[str], data: JSONBody[HfPush], box: NamedDependency[Any]) -> HfPushState:
        """Push a completed job to the Hub now (the body as hf_push); answers the push, `pushing`."""
        return push_later(box, job_id, data)
