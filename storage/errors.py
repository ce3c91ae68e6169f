from __future__ import annotations


class SubsampleError(Exception):
    """An error a user can act on. The CLI prints ``<stage>: <message>`` and exits with code 2,
    without a traceback. Always name the file or artifact and what to do."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class MissingArtifactError(SubsampleError):
    """An upstream artifact a stage needs is not cached (or failed verification)."""


def did_you_mean(word: str, choices, *, what: str = "") -> str:
    """`` (did you mean 'lr_d'?)`` when a choice is close to ``word`` (difflib), else ``""``;
    appended to an unknown-name message."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {what + close[0]!r}?)" if close else ""
