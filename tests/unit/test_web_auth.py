"""The console's credentials: signed login cookies, basic auth, and nothing secret in a repr (no network)."""

from __future__ import annotations

import base64

import pytest

from relaybus.web.auth import SESSION_S, WebAuth


def test_a_session_cookie_is_accepted_until_it_expires_and_never_once_tampered_with() -> None:
    auth = WebAuth(token="t0ken")
    cookie = auth.session_cookie(now=1_000_000.0)
    assert auth.accepts_session(cookie, now=1_000_000.0 + SESSION_S - 1)
    assert not auth.accepts_session(cookie, now=1_000_000.0 + SESSION_S + 1)
    expires, _, signature = cookie.partition(".")
    assert not auth.accepts_session(f"{int(expires) + 3600}.{signature}", now=1_000_000.0)
    assert not auth.accepts_session("garbage", now=1_000_000.0)


def test_a_new_token_ends_every_session_signed_with_the_old_one() -> None:
    cookie = WebAuth(token="old").session_cookie()
    assert WebAuth(token="old").accepts_session(cookie)
    assert not WebAuth(token="new").accepts_session(cookie)


def test_bearer_and_basic_headers_are_checked_against_the_configured_credentials() -> None:
    auth = WebAuth(token="t0ken", basic_user="ops", basic_password="pw:with:colons")
    basic = base64.b64encode(b"ops:pw:with:colons").decode()
    assert auth.accepts_header("Bearer t0ken") and auth.accepts_header(f"Basic {basic}")
    assert not auth.accepts_header("Bearer t0ke") and not auth.accepts_header("Basic !!notbase64")
    assert not auth.accepts_header(f"Basic {base64.b64encode(b'ops:wrong').decode()}")
    assert not WebAuth(basic_user="ops", basic_password="pw").accepts_header("Bearer ")


def test_the_console_cannot_be_configured_without_a_credential_and_never_prints_one() -> None:
    with pytest.raises(ValueError, match="token or basic-auth"):
        WebAuth()
    assert "s3cret" not in repr(WebAuth(token="s3cret")) + repr(WebAuth(basic_user="u", basic_password="s3cret"))
