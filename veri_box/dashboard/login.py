"""The login (an API key checked as the Bearer guard checks it), the home redirect and logout:
the session cookie and the login form's own double-submit cookie."""

from __future__ import annotations

import anyio
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Redirect

from ..audit import LOGIN_SCOPE_KEY
from ..sessions import COOKIE, CSRF_FIELD, LOGIN_COOKIE, SESSION_TTL_S, Sessions, current, tokens_match
from ..settings import Settings
from ..store import Store
from .rendering import is_htmx, render, text_fields


def _safe_next(target: str | None) -> str:
    """Only a page of this box (browsers read a backslash as a slash: `/\\host` is another site)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not target.startswith(("/login", "/logout"))
    ):
        return target
    return "/jobs"


def _cookie(settings: Settings, key: str, value: str, max_age: int, path: str = "/") -> Cookie:
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="lax",
        secure=settings.base_url.startswith("https://"),
    )


@get("/", include_in_schema=False)
async def home(request: Request) -> Redirect:
    return Redirect("/jobs" if current(request) else "/login", status_code=303)


@get("/login", include_in_schema=False, sync_to_thread=False)
def login_page(
    request: Request,
    settings: NamedDependency[Settings],
    sessions: NamedDependency[Sessions],
    next: FromQuery[str | None] = None,
) -> Response:
    if current(request):
        return Redirect(_safe_next(next), status_code=303)
    token = sessions.signer.login_token()
    response = render(request, "login.html", next=_safe_next(next), login_token=token, error=None)
    response.cookies.append(_cookie(settings, LOGIN_COOKIE, token, 3600, "/login"))
    return response


@post("/login", include_in_schema=False, status_code=303, opt={"rule": "public", "audit": "login"})
async def login(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    sessions: NamedDependency[Sessions],
) -> Response:
    """Checks the key the way the Bearer guard does (its SHA-256 against live keys)."""
    form = await text_fields(request)
    signer = sessions.signer
    target = _safe_next(form.get("next"))
    given_token = form.get(CSRF_FIELD)
    cookie_token = request.cookies.get(LOGIN_COOKIE)
    error, status = None, 200
    if not tokens_match(cookie_token or "", given_token) or signer.loads(given_token or "") is None:
        error, status = "The login form expired; try again.", 403
    else:
        key = (form.get("api_key") or "").strip()
        row = await anyio.to_thread.run_sync(store.authenticate, key) if key else None
        if row is None:
            error, status = "This API key is not valid or has been revoked.", 401
        else:
            # Who logged in, for the audit trail (audit.LOGIN_SCOPE_KEY): the key's id, never the key.
            request.scope[LOGIN_SCOPE_KEY] = (row["id"], row["name"])  # type: ignore[literal-required]
            response = Redirect(target, status_code=303)
            response.cookies.append(_cookie(settings, COOKIE, signer.new_session(row["id"]), SESSION_TTL_S))
            response.cookies.append(_cookie(settings, LOGIN_COOKIE, "", 0, "/login"))
            return response
    token = signer.login_token()
    response = render(request, "login.html", status_code=status, next=target, login_token=token, error=error)
    response.cookies.append(_cookie(settings, LOGIN_COOKIE, token, 3600, "/login"))
    return response


@post("/logout", include_in_schema=False, status_code=303, opt={"rule": "member"})
async def logout(
    request: Request, settings: NamedDependency[Settings], sessions: NamedDependency[Sessions]
) -> Response:
    session = current(request)
    if session is not None:  # the guard let only a live session in; end it for every copy of the cookie
        await anyio.to_thread.run_sync(sessions.end, session)
    response = Redirect("/login", status_code=303)
    if is_htmx(request):
        response = Response(b"", headers={"HX-Redirect": "/login"})
    response.cookies.append(_cookie(settings, COOKIE, "", 0))
    return response
