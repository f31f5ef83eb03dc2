"""The one error type a user sees: a message naming the cause, and a one-line hint."""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can act on. `hint` says what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(PipelineError):
    """images.toml is wrong: the message names the key path."""


class ToolError(PipelineError):
    """A host tool failed or is missing; carries the tool's own message."""

    def __init__(self, message: str, hint: str = "", stderr: str = "") -> None:
        super().__init__(message, hint)
        self.stderr = stderr


class GuestError(PipelineError):
    """The VM helper's guest failed, hung or panicked; names the kept console log."""

    def __init__(self, message: str, hint: str = "", console_log: str = "") -> None:
        super().__init__(message, hint)
        self.console_log = console_log
