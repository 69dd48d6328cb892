"""Errors that carry their own one-line message and exit status."""


class BootlabError(Exception):
    """Bootlab itself (or the VM) failed: exit status 125 at the CLI."""

    exit_status = 125


class BadInput(BootlabError):
    """The user gave us something unusable: one line on stderr, exit status 2."""

    exit_status = 2

    def __init__(self, message: str) -> None:
        # The message quotes what the user gave, which may hold a line break: keep it one line.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class Timeout(BootlabError):
    """A deadline passed (boot or command): exit status 124, like timeout(1)."""

    exit_status = 124


class VMFailed(BootlabError):
    """The VM stopped before answering: a panic, no init, a QEMU error. Carries the diagnosis."""

    def __init__(self, message: str, console_log: object = None, outcome: object = None) -> None:
        super().__init__(message)
        self.console_log = console_log
        self.outcome = outcome
