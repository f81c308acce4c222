"""OpenReward environments at submit time: where the service is, and whether a job's
environments and splits exist there, so that a typo is a 400 now rather than a failed job later.

The checks speak the Open Reward Standard's few routes directly over httpx (open a session by
SSE, list the splits, close it) instead of importing the official `openreward` client: that
client adds about 5 s and 140 MB to the server process and retries a dead service for seconds
with backoff, while a submit should answer within a few seconds whatever the service does.
The trainers, which run the environments, use the official client (trainers/environments.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

import httpx

from .errors import bad_request

PLATFORM_URL = "https://openreward.ai"
PLATFORM_DOMAIN = "openreward.ai"
TIMEOUT_S = 5.0  # per request; a submit makes three per environment
TOTAL_S = 15.0  # for all of a submit's environments
RETRY_STATUSES = (502, 503, 504)  # a proxy's hiccup: worth one more try, as the official client does
USER_AGENT = "veri-box"
# A catalog id (`owner/name`) or a self-hosted environment's name: it becomes a URL path segment.
ENVIRONMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass(frozen=True)
class Endpoints:
    """Where ORS sessions are served (`session_url`) and the platform API (`api_url`)."""

    session_url: str
    api_url: str


def _subdomain(url: str, sub: str) -> str:
    parsed = urlparse(url)
    host = parsed.netloc
    for prefix in ("api.", "sessions."):  # a user may paste either of the platform's hosts
        host = host.removeprefix(prefix)
    return urlunparse(parsed._replace(netloc=f"{sub}.{host}", path="")).rstrip("/")


def _is_platform(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host == PLATFORM_DOMAIN or host.endswith("." + PLATFORM_DOMAIN)


def endpoints(base_url: str | None, environ: Mapping[str, str] = os.environ) -> Endpoints:
    """The official client's rules: the platform's `sessions.` and `api.` hosts derived from its
    web URL (OPENREWARD_URL, default https://openreward.ai), each overridden by
    OPENREWARD_SESSION_URL / OPENREWARD_API_URL when set. A stored base_url on the platform's
    domain is that web URL; any other base_url is a self-hosted ORS server serving both."""
    if base_url and not _is_platform(base_url):
        session_url = api_url = base_url.rstrip("/")
    else:
        web = base_url or environ.get("OPENREWARD_URL") or PLATFORM_URL
        session_url, api_url = _subdomain(web, "sessions"), _subdomain(web, "api")
    return Endpoints(
        session_url=(environ.get("OPENREWARD_SESSION_URL") or session_url).rstrip("/"),
        api_url=(environ.get("OPENREWARD_API_URL") or api_url).rstrip("/"),
    )


def route(name: str) -> tuple[str, str]:
    """(deployment, path prefix) of an environment id. `owner/name` is a catalog deployment whose
    routes sit at the root; a bare `name` is an environment class of a self-hosted server, served
    under /name (the server's routes are per environment; its bare routes go to the first)."""
    return (name, "") if "/" in name else (name, f"/{name.lower()}")


class _Unavailable(Exception):
    """The service did not answer usefully; the message says how."""


class _NotFound(Exception):
    pass


class Checker:
    """One submit's conversation with the service; raises ApiError (400) naming what is wrong."""

    def __init__(self, api_key: str, ends: Endpoints):
        self.ends = ends
        self.headers = {"X-API-Key": api_key, "User-Agent": USER_AGENT}
        self.http = httpx.Client(base_url=ends.session_url, timeout=TIMEOUT_S, follow_redirects=True)
        self.deadline = time.monotonic() + TOTAL_S

    def close(self) -> None:
        self.http.close()

    def check(self, environments: Mapping[str, list[str]]) -> None:
        for name, splits in environments.items():
            try:
                offered = self.splits(name)
            except _NotFound as err:
                raise bad_request(
                    "environment_not_found",
                    f"OpenReward has no environment '{name}' at {self.ends.session_url}{self._known()}: {err}",
                    f"environments.{name}",
                ) from None
            except _Unavailable as err:
                raise bad_request(
                    "provider_error",
                    f"Could not check environment '{name}' with OpenReward at {self.ends.session_url}: {err} "
                    "Try again later, or check the integration (GET /v1/settings/integrations/openreward).",
                    f"environments.{name}",
                ) from None
            for split in splits:
                if split not in offered:
                    raise bad_request(
                        "unknown_split",
                        f"Environment '{name}' has no split '{split}'; it offers: {', '.join(offered) or 'none'}.",
                        f"environments.{name}.splits",
                    )

    def splits(self, name: str) -> list[str]:
        deployment, prefix = route(name)
        sid = self._open_session(deployment)
        try:
            rows = self._request("GET", f"{prefix}/splits", deployment, sid).json()
        except ValueError:
            raise _Unavailable("its list of splits is not JSON.") from None
        finally:
            self._close_session(deployment, sid)
        if not isinstance(rows, list):
            raise _Unavailable("its list of splits is not a list.")
        return [str(r.get("name")) if isinstance(r, dict) else str(r) for r in rows]

    def _open_session(self, deployment: str) -> str:
        """POST /create_session answers by SSE with a `task_id` event: the session id. Read as a
        stream, and only until that event, since a stream need not end soon."""
        event = None
        response = self._request("POST", "/create_session", deployment, json={}, stream=True)
        try:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("task_id", "error"):
                    data = line.split(":", 1)[1].strip()
                    if event == "error":
                        raise _Unavailable(f"it could not open a session: {data}")
                    return data
                if time.monotonic() > self.deadline:
                    break
        except httpx.HTTPError as err:
            raise _Unavailable(f"its session stream broke off ({type(err).__name__}: {err}).") from None
        finally:
            response.close()
        raise _Unavailable("it opened no session (no task_id in its answer to /create_session).")

    def _close_session(self, deployment: str, sid: str) -> None:
        try:
            self._request("POST", "/delete_session", deployment, sid, attempts=1).close()
        except (_Unavailable, _NotFound):
            pass  # the service reaps idle sessions itself

    def _request(
        self,
        method: str,
        path: str,
        deployment: str,
        sid: str | None = None,
        json: dict | None = None,
        stream: bool = False,
        attempts: int = 2,
    ) -> httpx.Response:
        headers = {**self.headers, "X-Deployment": deployment}
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if sid:
            headers["X-Session-ID"] = sid
        for attempt in range(attempts):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Unavailable(f"checking took longer than {TOTAL_S:g} s.")
            request = self.http.build_request(method, path, headers=headers, json=json, timeout=min(left, TIMEOUT_S))
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TimeoutException:
                raise _Unavailable(f"it did not answer within {min(left, TIMEOUT_S):.3g} s.") from None
            except httpx.HTTPError as err:
                if attempt + 1 < attempts:
                    time.sleep(0.3)
                    continue
                raise _Unavailable(f"it could not be reached ({type(err).__name__}: {err}).") from None
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                response.close()
                time.sleep(0.3)
                continue
            return _raise_for_status(response)
        raise AssertionError("unreachable")

    def _known(self) -> str:
        """A self-hosted server lists what it serves; the platform does not say."""
        if _is_platform(self.ends.session_url):
            return ""
        try:
            names = self.http.get("/list_environments", headers=self.headers, timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return ""
        return f" (it serves: {', '.join(map(str, names))})" if isinstance(names, list) and names else ""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]


def _raise_for_status(response: httpx.Response) -> httpx.Response:
    status = response.status_code
    if status < 400:
        return response
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()
    detail = _detail(response)
    if status == 404:
        raise _NotFound(f"{detail} (404)")
    if status in (401, 403):
        raise _Unavailable(
            f"it refused the API key ({status}: {detail}); store a valid one with "
            "PUT /v1/settings/integrations/openreward."
        )
    raise _Unavailable(f"it answered {status}: {detail}.")


def check(environments: Mapping[str, list[str]], integration: Mapping, environ: Mapping[str, str] = os.environ) -> None:
    """Each environment exists and offers each split; raises ApiError (400) otherwise."""
    for name in environments:
        if not ENVIRONMENT_ID.fullmatch(name):
            raise bad_request(
                "invalid_value",
                f"Environment id '{name}' is not valid: use `owner/name` from the OpenReward catalog, or the "
                "name of an environment on a self-hosted server (letters, digits, '.', '_', '-').",
                f"environments.{name}",
            )
    checker = Checker(integration["api_key"], endpoints(integration.get("base_url"), environ))
    try:
        checker.check(environments)
    finally:
        checker.close()
