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
