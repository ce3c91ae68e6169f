from __future__ import annotations

import re

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# scheme://, then everything up to the last @ before whitespace or a quote: a password may hold @, / or :
# (file: and sqlite: URIs carry no password, and paths of temporary folders hold <pid>@<host>)
_USERINFO_RE = re.compile(
    r"(?<![A-Za-z0-9+.-])(?!(?:file|sqlite)://)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^\s'\"<>`]*)@"
)
_SECRET_QUERY_RE = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|key|access_token|api_key)=)[^&\s]*")


def redact_uri(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI (up to the URI's last
    ``@``: a password may hold ``@``, ``/`` or ``:``), the configured MLflow password wherever it
    appears (:func:`storage.credentials.known_secrets`) and secret-looking query parameters replaced
    by ``***``: for any URI the project prints or puts in an error."""
    from storage.credentials import known_secrets

    text = str(text)
    for secret in known_secrets():  # the configured password, whatever it holds (spaces too)
        text = text.replace(secret, "***")
    text = _USERINFO_RE.sub(_redact_userinfo, text)
    return _SECRET_QUERY_RE.sub(r"\1***", text)


def _redact_userinfo(m: re.Match) -> str:
    user, sep, _ = m["info"].partition(":")
    if sep and user and "/" not in user:
        return f"{m['scheme']}{user}:***@"
    return f"{m['scheme']}***@"


def one_line(text: str) -> str:
    """``text`` with newlines and every other control character escaped (``\\n``, ``\\x1b``), so a
    file name or a library's message can never split a one-line error or a log line, nor carry
    terminal escape sequences."""

    def esc(m: re.Match) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{ord(c):02x}")

    return _CONTROL_RE.sub(esc, str(text))


class SubsampleError(Exception):
    """An error a user can act on. The CLI prints ``<stage>: <message>`` and exits with code 2,
    without a traceback. Always name the file or artifact and what to do. The message is made one
    line (:func:`one_line`) and any URI password in it redacted."""

    def __init__(self, stage: str, message: str):
        message = one_line(redact_uri(message))
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class MissingArtifactError(SubsampleError):
    """An upstream artifact a stage needs is not cached (or failed verification)."""


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation of torch.load")


def brief(exc: BaseException, limit: int = 200) -> str:
    """``TypeName: the informative part of the message`` on one line: torch.load's weights-only
    refusal, for one, wraps the reason ("Trying to load unsupported GLOBAL posix.system ...") in
    paragraphs of advice that would bury it."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    text = "; ".join(lines).removeprefix("WeightsUnpickler error: ")
    return f"{type(exc).__name__}: {one_line(text)[:limit]}" if text else type(exc).__name__


def did_you_mean(word: str, choices, *, what: str = "") -> str:
    """`` (did you mean 'lr_d'?)`` when a choice is close to ``word`` (difflib), else ``""``;
    appended to an unknown-name message."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {what + close[0]!r}?)" if close else ""
