"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: the routes `huggingface_hub` 2.4 calls to
check a token, create a repo and commit files to it, spoken as the Hub speaks them (read from
hf_api.py, _commit_api.py and lfs.py of that version):

    GET  /api/whoami-v2                                   the token's user, its orgs with roleInOrg, the
                                                          token's role (fineGrained: its scoped entries);
                                                          401 for a bad token
    POST /api/repos/create                                {name, organization, visibility}; 409 if it exists
    GET  /api/models/{ns}/{name}[/revision/{rev}]         repo info (create_repo's exist_ok fallback)
    POST /api/validate-yaml                               a README.md's metadata block
    POST /api/models/{ns}/{name}/preupload/{rev}          per file: "regular" or "lfs"
    POST /{ns}/{name}.git/info/lfs/objects/batch          LFS batch API: where to PUT each object
    PUT  /_lfs/{oid}?sig=...                              the "presigned" upload (no auth header, as S3)
    POST /{ns}/{name}.git/info/lfs/objects/verify         the object arrived, with that size
    POST /api/models/{ns}/{name}/commit/{rev}             NDJSON: header, file (base64), lfsFile

Xet storage is not spoken: the box disables it for its pushes (HF_HUB_DISABLE_XET), so
large files take the LFS path above. Received files are written under `root/REPO_ID/`, so a test
can read them (or load them with PEFT) as a user who cloned the repo would.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

# Patterns of the Hub's default .gitattributes: such files are stored with LFS whatever their size.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.model")
LFS_MIN_BYTES = 10 * 1024 * 1024  # larger text files go to LFS too


@dataclass
class Repo:
    id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)  # committed as lfsFile
    commits: list[dict] = field(default_factory=list)


WRITE_ROLES = ("admin", "write", "contributor")  # org roles that may create repos (the Hub's docs)


class HubStandIn:
    """Start with `with HubStandIn(root, tokens={"hf_good": "alice"}) as hub:`; `hub.url` is the
    endpoint to give the box. `fail` makes a route answer an error: {"commit": (500, "message")}.

    `orgs`: user -> its organizations, a list (role `write` in each) or {org: roleInOrg}.
    `roles`: token -> its role when not `write` (`read`, or `fineGrained` with `scoped`).
    `scoped`: a fine-grained token -> {entity name: permissions}, the entity the token's user or
    one of its orgs (the Hub's fineGrained.scoped entries). Writes are refused (403) as the Hub
    refuses them: a read token, a namespace that is not the user's or a writable org's, a
    fine-grained token without repo.write there (a `contributor` writes to any repo of its org
    here, where the Hub lets it write only to the repos it created)."""

    def __init__(
        self,
        root: Path,
        tokens: dict[str, str],
        orgs: dict[str, list[str] | dict[str, str]] | None = None,
        roles: dict[str, str] | None = None,
        scoped: dict[str, dict[str, list[str]]] | None = None,
    ):
        self.root = Path(root)
        self.tokens = dict(tokens)  # token -> user name
        self.orgs = orgs or {}
        self.roles = roles or {}
        self.scoped = scoped or {}
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # oid -> content, once PUT
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.fail: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._sig = secrets.token_hex(8)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    def org_roles(self, user: str) -> dict[str, str]:
        """{org: roleInOrg} of a user."""
        orgs = self.orgs.get(user, [])
        return dict(orgs) if isinstance(orgs, dict) else {o: "write" for o in orgs}

    def may_write(self, token: str, namespace: str) -> bool:
        user = self.tokens[token]
        role = self.roles.get(token, "write")
        if role == "read":
            return False
        if namespace != user and self.org_roles(user).get(namespace) not in WRITE_ROLES:
            return False
        return role != "fineGrained" or "repo.write" in self.scoped.get(token, {}).get(namespace, [])

    def routes_called(self) -> list[str]:
        """The names of the routes called so far, in order ("unknown" for a path it has no route for)."""
        return [name for name, _ in self.requests]


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # httpx keeps connections alive: every answer has a length

        def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
            pass

        # -- plumbing ---------------------------------------------------------------------

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers)

        def _token(self) -> str:
            auth = self.headers.get("Authorization", "")
            return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""

        def _user(self) -> str | None:
            return hub.tokens.get(self._token())

        def _route(self, method: str) -> None:
            path = urlparse(self.path).path
            for pattern, name, handler in ROUTES:
                if pattern[0] == method and (m := re.fullmatch(pattern[1], path)):
                    hub.requests.append((name, path))
                    body = self._body()
                    if name in hub.fail:
                        status, message = hub.fail[name]
                        self._error(status, message)
                        return
                    handler(self, body, **m.groupdict())
                    return
            self._body()
            hub.requests.append(("unknown", f"{method} {path}"))
            self._error(404, f"The stand-in has no route {method} {path}.")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        # -- routes -------------------------------------------------------------------------

        def whoami(self, body: bytes) -> None:
            user = self._user()
            if user is None:
                self._error(401, "Invalid credentials in Authorization header")
                return
            orgs = [
                {"type": "org", "id": hashlib.sha1(o.encode()).hexdigest()[:24], "name": o, "roleInOrg": role}
                for o, role in hub.org_roles(user).items()
            ]
            token = self._token()
            access = {"displayName": "veri-box", "role": hub.roles.get(token, "write")}
            if access["role"] == "fineGrained":
                access["fineGrained"] = {
                    "canReadGatedRepos": True,
                    "global": ["discussion.write", "post.write"],
                    "scoped": [
                        {
                            "entity": {
                                "_id": hashlib.sha1(name.encode()).hexdigest()[:24],
                                "type": "user" if name == user else "org",
                                "name": name,
                            },
                            "permissions": permissions,
                        }
                        for name, permissions in hub.scoped.get(token, {}).items()
                    ],
                }
            self._send(
                200,
                {
                    "type": "user",
                    "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                    "name": user,
                    "fullname": user.title(),
                    "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": access},
                },
            )

        def _writable(self, namespace: str) -> str | None:
            """The user if it may write to `namespace`, after answering 401/403 otherwise."""
            user = self._user()
            if user is None:
                self._error(401, "Invalid credentials in Authorization header")
                return None
            if not hub.may_write(self._token(), namespace):
                self._error(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
                return None
            return user

        def create_repo(self, body: bytes) -> None:
            payload = json.loads(body or b"{}")
            user = self._user()
            namespace = payload.get("organization") or user or ""
            if self._writable(namespace) is None:
                return
            repo_id = f"{namespace}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            with hub._lock:
                if repo_id in hub.repos:
                    self._send(409, {"error": "You already created this model repo", "url": url})
                    return
                hub.repos[repo_id] = Repo(repo_id, private=payload.get("visibility") == "private")
            self._send(200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)})

        def repo_info(self, body: bytes, repo: str, rev: str | None = None) -> None:
            found = hub.repos.get(repo)
            if found is None or (found.private and self._user() is None):
                self._error(404, "Repository not found", "RepoNotFound")
                return
            sha = found.commits[-1]["oid"] if found.commits else "0" * 40
            siblings = [{"rfilename": p} for p in sorted(found.files)]
            self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": found.private, "siblings": siblings})

        def validate_yaml(self, body: bytes) -> None:
            content = json.loads(body or b"{}").get("content", "")
            if content.startswith("---") and "\n---" not in content[3:]:
                self._send(400, {"errors": [{"message": "The metadata block is not closed by ---"}], "warnings": []})
                return
            self._send(200, {"errors": [], "warnings": []})

        def _repo(self, repo: str) -> Repo | None:
            if self._writable(repo.split("/")[0]) is None:
                return None
            found = hub.repos.get(repo)
            if found is None:
                self._error(404, "Repository not found", "RepoNotFound")
            return found

        def preupload(self, body: bytes, repo: str, rev: str) -> None:
            if self._repo(repo) is None:
                return
            files = []
            for f in json.loads(body)["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = (
                    any(fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], p) for p in LFS_PATTERNS)
                    or f["size"] >= LFS_MIN_BYTES
                    or b"\0" in sample
                )
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            self._send(200, {"files": files, "commitOid": "0" * 40})

        def lfs_batch(self, body: bytes, repo: str) -> None:
            if self._repo(repo) is None:
                return
            payload = json.loads(body)
            if payload.get("operation") != "upload":
                self._error(400, "Only uploads are supported by the stand-in")
                return
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.lfs_objects:  # already stored: no actions, the client skips it
                    entry["actions"] = {
                        "upload": {"href": f"{hub.url}/_lfs/{obj['oid']}?sig={hub._sig}&size={obj['size']}"},
                        "verify": {"href": f"{hub.url}/{repo}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

        def lfs_upload(self, body: bytes, oid: str) -> None:
            query = parse_qs(urlparse(self.path).query)
            if query.get("sig") != [hub._sig]:
                self._error(403, "Request has expired or the signature does not match")
                return
            if hashlib.sha256(body).hexdigest() != oid or query.get("size") != [str(len(body))]:
                self._error(400, "The uploaded content does not match its oid and size")
                return
            with hub._lock:
                hub.lfs_objects[oid] = body
            self._send(200, {})

        def lfs_verify(self, body: bytes, repo: str) -> None:
            obj = json.loads(body)
            stored = hub.lfs_objects.get(obj["oid"])
            if stored is None or len(stored) != obj["size"]:
                self._error(404, f"Object {obj['oid']} was not uploaded")
                return
            self._send(200, {})

        def commit(self, body: bytes, repo: str, rev: str) -> None:
            found = self._repo(repo)
            if found is None:
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                self._error(400, "The commit payload must start with a header line")
                return
            added: dict[str, bytes] = {}
            lfs_paths = set()
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    content = hub.lfs_objects.get(value["oid"])
                    if content is None:
                        self._error(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                        return
                    added[value["path"]] = content
                    lfs_paths.add(value["path"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    added[value["path"]] = b""  # the stand-in keeps it simple: an empty file
                else:
                    self._error(400, f"Unknown commit operation {line['key']}")
                    return
            oid = hashlib.sha1(body).hexdigest()
            with hub._lock:
                found.files.update(added)
                found.lfs_paths |= lfs_paths
                found.commits.append({"oid": oid, "summary": lines[0]["value"].get("summary"), "files": sorted(added)})
                for path, content in added.items():
                    target = hub.repo_dir(repo) / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
            self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
    ROUTES = [
        (("GET", r"/api/whoami-v2"), "whoami", Handler.whoami),
        (("POST", r"/api/repos/create"), "create_repo", Handler.create_repo),
        (("POST", r"/api/validate-yaml"), "validate_yaml", Handler.validate_yaml),
        (("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)"), "preupload", Handler.preupload),
        (("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)"), "commit", Handler.commit),
        (("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?"), "repo_info", Handler.repo_info),
        (("POST", rf"/{REPO}\.git/info/lfs/objects/batch"), "lfs_batch", Handler.lfs_batch),
        (("POST", rf"/{REPO}\.git/info/lfs/objects/verify"), "lfs_verify", Handler.lfs_verify),
        (("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})"), "lfs_upload", Handler.lfs_upload),
    ]
    return Handler
