"""Credentials in a tracking URI never reach a message, a log line or a traceback.

A user may put a password into ``MLFLOW_TRACKING_URI`` (``http://alice:s3cr@t/x@host:5000``), and
it may hold any character, ``@``, ``/`` and ``:`` included. Before MLflow sees the URI,
:func:`move_credentials_to_env` takes the user and password out of it into MLflow's own
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow sends them as HTTP basic auth,
as it would the URI's), so the URI MLflow formats into its errors carries none. The user part is
everything up to the URI's *last* ``@`` (as urllib3 and requests read it), so a password holding
``@`` is not cut at its first one.

:func:`known_secrets` are then redacted word for word wherever they appear
(:func:`storage.errors.redact_uri`), besides any ``scheme://user:password@`` of another URI.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
MIN_SECRET_CHARS = 3  # a shorter password is not redacted word for word (it would blank out common letters)


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without its user information, user, password)``; the user information runs from
    after ``scheme://`` to the last ``@`` before the first whitespace (user and password None if
    there is none; password None without a ``:``), percent-decoded."""
    m = _SCHEME_RE.match(uri)
    if m is None:
        return uri, None, None
    rest = uri[m.end() :]
    at = rest.rfind("@")
    if at < 0:
        return uri, None, None
    info = rest[:at]
    user, sep, password = info.partition(":")
    if "/" in user:  # an @ in the path (http://host/a@b), not user information
        return uri, None, None
    return m.group() + rest[at + 1 :], unquote(user), unquote(password) if sep else None


def move_credentials_to_env() -> None:
    """Take the user and password out of ``MLFLOW_TRACKING_URI`` into ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (unless those are set), in this process's environment (so processes
    it starts inherit the same)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    bare, user, password = split_userinfo(uri)
    if user is None:
        return
    os.environ["MLFLOW_TRACKING_URI"] = bare
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
    if password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)


def known_secrets() -> list[str]:
    """The password and token the environment gives MLflow (and the URI's, if still in it), as
    given, percent-decoded and percent-encoded: longest first."""
    found: set[str] = set()
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        if value := os.environ.get(name):
            found.add(value)
    _, _, password = split_userinfo(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if password:
        found.add(password)
    out = {v for s in found for v in (s, unquote(s), quote(s, safe=""))}
    return sorted((s for s in out if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)
