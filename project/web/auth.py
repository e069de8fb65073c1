"""Who may use the console, and that every POST comes from its own forms.

* **Authentication.** A token (``Authorization: Bearer <token>``, or typed once into ``/login``, which sets
  a signed, HttpOnly, SameSite=Strict cookie), or basic auth (``user:password``). Without either the
  console runs only on 127.0.0.1 with ``--insecure-localhost`` (the CLI refuses otherwise).
* **CSRF.** Double submit: a random ``relaybus_csrf`` cookie, set on the first response, must come back as
  the ``csrf`` field of every POST form. Another site can make a browser send the cookie, never read it.
* **Read-only.** Every POST but ``/login`` is refused with 403, and the pages show no action buttons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

SESSION_COOKIE = "relaybus_session"
CSRF_COOKIE = "relaybus_csrf"
CSRF_FIELD = "csrf"
SESSION_S = 12 * 3600
#: Paths served without a login: the login form itself.
OPEN_PATHS = frozenset({"/login"})


@dataclass(frozen=True)
class WebAuth:
    """The console's credentials and mode. ``insecure`` (no credentials) is for 127.0.0.1 only."""

    token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None
    read_only: bool = False
    insecure: bool = False
    #: Signs the login cookie: derived from the credential, so a new token ends every session.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if not (self.token or (self.basic_user and self.basic_password) or self.insecure):
            raise ValueError("the console needs a token or basic-auth credentials (or insecure localhost mode)")
        credential = self.token or (f"{self.basic_user}:{self.basic_password}" if self.basic_user else None)
        if credential:
            object.__setattr__(self, "secret", hashlib.sha256(b"relaybus-web\0" + credential.encode()).digest())

    def __repr__(self) -> str:  # never print a credential
        return f"WebAuth(token={'***' if self.token else None}, basic_user={self.basic_user!r}, " \
               f"read_only={self.read_only}, insecure={self.insecure})"

    # -- credentials -------------------------------------------------------------------------------

    def accepts_header(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme.lower() == "basic" and self.basic_user and self.basic_password:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return hmac.compare_digest(user.encode(), self.basic_user.encode()) & hmac.compare_digest(
                password.encode(), self.basic_password.encode()
            )
        return False

    def accepts_login(self, token: str, user: str, password: str) -> bool:
        if self.token and token:
            return hmac.compare_digest(token.encode(), self.token.encode())
        if self.basic_user and self.basic_password and user:
            return hmac.compare_digest(user.encode(), self.basic_user.encode()) & hmac.compare_digest(
                password.encode(), self.basic_password.encode()
            )
        return False

    # -- the login cookie --------------------------------------------------------------------------

    def session_cookie(self, now: float | None = None) -> str:
        expires = str(int((now or time.time()) + SESSION_S))
        return f"{expires}.{self._sign('session:' + expires)}"

    def accepts_session(self, cookie: str, now: float | None = None) -> bool:
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return False
        return hmac.compare_digest(signature, self._sign("session:" + expires))

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def authenticated(self, request: Request) -> bool:
        if self.insecure:
            return True
        header = request.headers.get("authorization")
        if header is not None:
            return self.accepts_header(header)
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie is not None and self.accepts_session(cookie)


def csrf_token(request: Request) -> str:
    """The request's CSRF token (the cookie's, or a new one the middleware sets on the response)."""
    return str(request.state.csrf)


async def csrf_ok(request: Request) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    # The body read whole first: BaseHTTPMiddleware replays a body it has read to the page, not a stream.
    await request.body()
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), cookie.encode())


class Guard(BaseHTTPMiddleware):
    """Authentication, read-only mode and CSRF, before any page runs."""

    def __init__(self, app: Callable[..., Awaitable[None]], auth: WebAuth) -> None:
        super().__init__(app)
        self.auth = auth

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        existing = request.cookies.get(CSRF_COOKIE)
        request.state.csrf = existing or secrets.token_urlsafe(32)
        request.state.auth = self.auth
        response = await self._checked(request, call_next)
        if not existing:
            response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    async def _checked(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path not in OPEN_PATHS and not self.auth.authenticated(request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
            challenge = "Basic realm=\"relaybus\"" if self.auth.basic_user else "Bearer realm=\"relaybus\""
            return PlainTextResponse("authentication required", 401, headers={"WWW-Authenticate": challenge})
        if request.method == "POST":
            if self.auth.read_only and path not in OPEN_PATHS:
                return PlainTextResponse("read-only console: actions are disabled", 403)
            if not await csrf_ok(request):
                return PlainTextResponse("missing or wrong CSRF token", 403)
        return await call_next(request)
