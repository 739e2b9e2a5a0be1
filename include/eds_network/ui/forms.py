"""What the operator page's forms share: the anti-forgery token bound to Airflow's session, the same-origin check
and the largest form accepted."""

import hashlib
import hmac
from urllib.parse import urlsplit

SESSION_COOKIE = "_token"  # Airflow's session cookie (its JWT): the form's anti-forgery token is bound to it
_CSRF_CONTEXT = b"eds-network operator page: milestone form"
FORM_MAX_BYTES = 8192


def csrf_token(session: str | None) -> str:
    """The anti-forgery token of a session: HMAC-SHA-256 keyed by the session cookie, which another site can
    neither read nor guess (empty without a session: a request with a Bearer header needs none)."""
    if not session:
        return ""
    return hmac.new(session.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def _same_origin(request) -> bool:
    """A browser's Origin (when it sends one) must be this server, as the client reached it."""
    origin = request.headers.get("origin")
    if not origin:
        return True
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return urlsplit(origin).netloc in hosts
