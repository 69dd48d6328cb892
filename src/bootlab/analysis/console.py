"""Console log → Outcome: did the guest boot, and if not, why, in one line.

The serial console is the only witness of a boot that went wrong: a panic, an init that could
not be executed, a missing root device or an oops all end with QEMU exiting and nothing else to
go on. This module reads that log (as the Linux 6.1 kernel writes it) and names the outcome with
a one-line reason that quotes the kernel's own words, plus the few lines that justify it.

It prefers the root cause to the last word: "Failed to execute /init (error -2)" explains the
"No working init found" panic that follows it, an oops explains the "Fatal exception" panic, and
"Initramfs unpacking failed" explains the root mount that the kernel tries next.

The input is whatever the console captured: CRLF line ends, ANSI escapes from a shell, user
output interleaved with kernel lines, a log cut mid-line, or binary junk. `analyze` never raises
on any text; it answers UNKNOWN (with what it did see) when nothing is conclusive.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable


class OutcomeKind(Enum):
    OK = "ok"  # init ran and the kernel shut down cleanly
    PANIC = "panic"  # a kernel panic not explained by a more specific kind
    NO_INIT = "no init"  # no init could be executed
    NO_ROOT = "no root"  # no initramfs init, and the root device could not be mounted
    BAD_INITRAMFS = "bad initramfs"  # the kernel could not unpack the initramfs
    INIT_EXITED = "init exited"  # init (PID 1) exited or was killed: "Attempted to kill init!"
    OOPS = "oops"  # a kernel bug report (BUG:, Oops:, general protection fault), fatal or not
    AGENT_ERROR = "agent error"  # the bootlab guest agent reported a failure
    UNKNOWN = "unknown"  # nothing conclusive: empty, truncated, or still running


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str  # one line for a human
    evidence: list[str] = field(default_factory=list)  # console lines, verbatim minus timestamps

    @property
    def failed(self) -> bool:
        """The console shows the boot went wrong (neither a clean run nor inconclusive)."""
        return self.kind not in (OutcomeKind.OK, OutcomeKind.UNKNOWN)


# --- reading lines -------------------------------------------------------------------------------

_MAX_LINE = 4096  # longer lines are cut: no kernel message is that long, and regexes stay cheap
_MAX_SHOWN = 300  # evidence lines and quotes are cut to this many characters
_MAX_REASON = 400
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# printk's "[    1.234567] ", optionally followed by a caller id "[    T1] " (CONFIG_PRINTK_CALLER).
_STAMP = re.compile(r"\[\s*\d+\.\d{6}\](?:\[\s*[CT]\d+\])? ?")


@dataclass(frozen=True)
class _Line:
    text: str
    kernel: bool  # carried a printk timestamp


def _lines(text: str) -> list[_Line]:
    """Split into clean lines. A timestamp in mid-line (user output without a newline before a
    kernel message) starts a new line, so each kernel message starts its own line."""
    out: list[_Line] = []
    for raw in re.split(r"\r\n|\r|\n", text):
        clean = _CONTROL.sub("", _ANSI.sub("", raw[: 2 * _MAX_LINE]))[:_MAX_LINE]
        parts = _STAMP.split(clean)
        if parts[0].strip():
            out.append(_Line(parts[0].rstrip(), kernel=False))
        out.extend(_Line(p.rstrip(), kernel=True) for p in parts[1:])
    return out


# --- what the kernel says ------------------------------------------------------------------------

# Each kernel message we care about, by name. Matched with `search` on one clean line.
_EVENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("banner", re.compile(r"^Linux version \S+")),
    ("cmdline", re.compile(r"^Kernel command line: (?P<cmdline>.*)")),
    ("unpack", re.compile(r"^Trying to unpack rootfs image as initramfs|^Freeing initrd memory")),
    ("unpack_failed", re.compile(r"^Initramfs unpacking failed: (?P<msg>.*)")),
    ("run_init", re.compile(r"^Run (?P<path>\S+) as init process")),
    ("exec_failed", re.compile(r"^Failed to execute (?P<path>\S+) \(error (?P<err>-?\d{1,6})\)")),
    ("exec_failed", re.compile(
        r"^Starting init: (?P<path>\S+) exists but couldn't execute it \(error (?P<err>-?\d{1,6})\)")),
    ("cannot_open_root", re.compile(r"^VFS: Cannot open root device (?P<msg>.*)")),
    ("no_fs", re.compile(r"^No filesystem could mount root, tried: ?(?P<tried>.*)")),
    ("panic", re.compile(r"^Kernel panic - not syncing: ?(?P<msg>.*)")),
    ("bug", re.compile(r"(?:^|: )(?P<msg>(?:BUG: |kernel BUG at |Oops: |general protection fault"
                       r"|Unable to handle kernel ).*)")),
    ("where", re.compile(r"^RIP: (?P<cs>[0-9a-f]{4}):(?P<where>\S+\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\S+\])?)")),
    ("where", re.compile(r"^pc : (?P<where>\S+\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\S+\])?)")),  # arm64
    ("comm", re.compile(r"^CPU: \d+ PID: (?P<pid>\d+) Comm: (?P<comm>\S+)")),
    ("shutdown", re.compile(r"^reboot: (?P<msg>Restarting system|Power down|System halted)")),
    ("agent", re.compile(r"bootlab-agent: (?P<msg>.*)")),
)

# Agent messages that are not failures.
_AGENT_INFO = re.compile(r"powering off$")

_USER_CS = "0033"  # x86-64 user code segment: a "RIP: 0033:" line is user space, not the bug site

# execve errors as the kernel reports them for init, and what they usually mean there.
_ERRNO_HINTS = {
    errno.ENOENT: "the file, its #! or ELF interpreter, or a shared library it needs is missing",
    errno.ENOEXEC: "not an executable format: a script needs a #! line, a binary may be for "
                   "another architecture",
    errno.EACCES: "permission denied: the file is not executable (no x bit) or is on a noexec mount",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENOMEM: "out of memory",
    errno.E2BIG: "argument list too long",
}


@dataclass(frozen=True)
class _Event:
    index: int  # position in the line list
    name: str
    match: re.Match[str]
    line: str

    def __getitem__(self, group: str) -> str:
        return self.match.groupdict().get(group) or ""


@dataclass
class _Facts:
    lines: list[_Line]
    events: list[_Event]

    def all(self, name: str, before: int | None = None) -> list[_Event]:
        return [e for e in self.events if e.name == name and (before is None or e.index < before)]

    def first(self, name: str, after: int = -1, before: int | None = None) -> _Event | None:
        for e in self.events:
            if e.name == name and e.index > after and (before is None or e.index < before):
                return e
        return None

    def last(self, name: str, before: int | None = None) -> _Event | None:
        found = self.all(name, before)
        return found[-1] if found else None

    def cmdline_value(self, key: str) -> str | None:
        """The last `key=value` on the kernel command line (the kernel lets the last one win)."""
        event = self.first("cmdline")
        if event is None:
            return None
        values = [w.split("=", 1)[1] for w in event["cmdline"].split() if w.startswith(key + "=")]
        return values[-1] if values else None

    def has_initramfs(self) -> bool:
        return self.first("unpack") is not None or self.first("unpack_failed") is not None


def _facts(lines: list[_Line]) -> _Facts:
    # With timestamps in the log, only timestamped lines are kernel messages: user output that
    # happens to say "BUG: " is not an oops. The agent may write to the console without a stamp.
    stamped = any(line.kernel for line in lines)
    events: list[_Event] = []
    banners = 0
    for i, line in enumerate(lines):
        for name, pattern in _EVENTS:
            if stamped and not line.kernel and name != "agent":
                continue
            m = pattern.search(line.text)
            if m:
                if name == "banner":
                    banners += 1
                events.append(_Event(i, name, m, line.text))
                break
        if banners > 1:  # the guest rebooted into a second boot: the first one is the story
            events.pop()
            lines = lines[:i]
            break
    return _Facts(lines, events)


# --- wording -------------------------------------------------------------------------------------

def _short(text: str, limit: int = _MAX_SHOWN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _explain_errno(err: str) -> str:
    n = abs(int(err))
    name = errno.errorcode.get(n, f"errno {n}")
    hint = _ERRNO_HINTS.get(n)
    if hint is None:
        try:
            hint = os.strerror(n).lower()
        except ValueError:
            hint = "unknown error"
    return f"error -{n} = {name}: {hint}"


def _panic_text(msg: str) -> str:
    # "No working init found.  Try passing init= option to kernel. See ..." → the first sentence.
    head = msg.split(".  ", 1)[0].rstrip(". ")
    return f"kernel panic: {head}"


def _verbatim(line: str) -> str:
    line = line.strip()
    return line if len(line) <= _MAX_SHOWN else line[: _MAX_SHOWN - 1] + "…"


def _evidence(*events: _Event | None) -> list[str]:
    seen: list[str] = []
    for e in events:
        if e is not None and _verbatim(e.line) not in seen:
            seen.append(_verbatim(e.line))
    return seen


def _last_output(facts: _Facts, after: int, before: int) -> str | None:
    """The last non-kernel line between two indexes: often the init's own last words."""
    for line in reversed(facts.lines[after + 1 : before]):
        if not line.kernel and line.text.strip():
            return line.text.strip()
    return None


# --- deciding ------------------------------------------------------------------------------------

def _oops(facts: _Facts, bug: _Event, panic: _Event | None) -> Outcome:
    nxt = facts.first("bug", after=bug.index)
    oops_line = nxt if nxt is not None and nxt["msg"].startswith("Oops: ") else None
    rip = next((e for e in facts.all("where") if e.index > bug.index and e["cs"] != _USER_CS), None)
    comm = facts.first("comm", after=bug.index)
    reason = f"kernel oops: {bug['msg']}"
    if rip is not None:
        reason += f" at {rip['where']}"
    if comm is not None:
        reason += f" (in {comm['comm']}, PID {comm['pid']})"
    if panic is not None:
        reason += f"; then {_panic_text(panic['msg'])}"
    return Outcome(OutcomeKind.OOPS, _short(reason, _MAX_REASON),
                   _evidence(bug, oops_line, comm, rip, panic))


def _exec_failure(failure: _Event) -> str:
    return f"Failed to execute {failure['path']} ({_explain_errno(failure['err'])})"


def _no_init(facts: _Facts, panic: _Event | None, _: re.Match[str] | None = None) -> Outcome:
    before = panic.index if panic is not None else None
    failures = facts.all("exec_failed", before)
    tried = [e["path"] for e in facts.all("run_init", before)]
    unpack_failed = facts.first("unpack_failed")
    if panic is None:  # the kernel found a fallback (typically /bin/sh) that did start
        fallback = f"; the kernel fell back to {tried[-1]}" if tried else ""
        reason = _exec_failure(failures[0]) + fallback
        return Outcome(OutcomeKind.NO_INIT, _short(reason, _MAX_REASON),
                       _evidence(failures[0], facts.last("run_init")))
    if failures:
        reason = f"{_exec_failure(failures[0])}; no fallback init worked: {_panic_text(panic['msg'])}"
    elif tried:
        reason = f"{_panic_text(panic['msg'])} (tried {', '.join(tried)})"
    else:
        reason = _panic_text(panic["msg"])
    kind = OutcomeKind.NO_INIT
    if unpack_failed is not None:
        kind = OutcomeKind.BAD_INITRAMFS
        reason = f"initramfs unpacking failed: {unpack_failed['msg']}; {reason}"
    return Outcome(kind, _short(reason, _MAX_REASON), _evidence(unpack_failed, *failures[:3], panic))


def _requested_init(facts: _Facts, panic: _Event, m: re.Match[str]) -> Outcome:
    failures = facts.all("exec_failed", panic.index)
    first = f"{_exec_failure(failures[0])}; then " if failures else ""
    reason = f"{first}the init= program {m['path']} could not be executed " \
             f"({_explain_errno(m['err'])}): {_panic_text(panic['msg'])}"
    return Outcome(OutcomeKind.NO_INIT, _short(reason, _MAX_REASON),
                   _evidence(failures[0] if failures else None, panic))


def _no_root(facts: _Facts, panic: _Event, m: re.Match[str]) -> Outcome:
    headline = _panic_text(panic["msg"])
    unpack_failed = facts.first("unpack_failed")
    cannot_open = facts.first("cannot_open_root")
    no_fs = facts.first("no_fs")
    root = facts.cmdline_value("root")
    rdinit = facts.cmdline_value("rdinit") or "/init"
    if unpack_failed is not None:
        reason = f"initramfs unpacking failed: {unpack_failed['msg']}; with no init from it the " \
                 f"kernel tried to mount a root device: {headline}"
        return Outcome(OutcomeKind.BAD_INITRAMFS, _short(reason, _MAX_REASON),
                       _evidence(unpack_failed, panic))
    if facts.has_initramfs() and root is None:
        reason = f"the initramfs has no {rdinit} (rdinit), so the kernel tried to mount a root " \
                 f"device and none was given: {headline}"
        return Outcome(OutcomeKind.NO_INIT, _short(reason, _MAX_REASON),
                       _evidence(facts.first("unpack"), panic))
    details: list[str] = []
    if root is None:
        details.append("no initramfs and no root= given")
    elif m["dev"].startswith("unknown-block(0,0)"):
        details.append(f"root={root} not found")
    else:
        details.append(f"root={root}")
    if facts.has_initramfs():
        details.append(f"the initramfs has no {rdinit}")
    if cannot_open is not None:
        details.append(f"VFS: Cannot open root device {cannot_open['msg']}")
    if no_fs is not None and not no_fs["tried"].strip():
        details.append("no filesystem driver is built in to try (if they are modules, load them "
                       "from an initramfs)")
    reason = f"{headline} ({'; '.join(details)})"
    return Outcome(OutcomeKind.NO_ROOT, _short(reason, _MAX_REASON),
                   _evidence(cannot_open, no_fs, panic))


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _init_exited(facts: _Facts, panic: _Event, m: re.Match[str]) -> Outcome:
    code = int(m["code"], 16)
    run = facts.last("run_init", panic.index)
    who = f"init {run['path']}" if run is not None else "init"
    if code & 0x7F:
        what = f"{who} was killed by signal {code & 0x7F} ({_signal_name(code & 0x7F)})"
    else:
        what = f"{who} exited with status {(code >> 8) & 0xFF}"
    said = _last_output(facts, run.index if run is not None else -1, panic.index)
    if said is not None:
        what += f' (last output: "{_short(said, 120)}")'
    reason = f"{what}: {_panic_text(panic['msg'])}"
    return Outcome(OutcomeKind.INIT_EXITED, _short(reason, _MAX_REASON), _evidence(run, panic))


_INIT_EXIT = re.compile(r"^Attempted to kill init! exitcode=(?P<code>0x[0-9a-fA-F]{1,8})")

# Panic messages with a more specific story, tried in order; the rest are plain PANIC.
_PANICS: tuple[tuple[re.Pattern[str], Callable[[_Facts, _Event, re.Match[str]], Outcome]], ...] = (
    (re.compile(r"^No working init found"), _no_init),
    (re.compile(r"^Requested init (?P<path>\S+) failed \(error (?P<err>-?\d{1,6})\)"), _requested_init),
    (re.compile(r"^VFS: Unable to mount root fs on (?P<dev>.*)"), _no_root),
    (_INIT_EXIT, _init_exited),
)


def _agent_errors(facts: _Facts) -> list[_Event]:
    return [e for e in facts.all("agent") if not _AGENT_INFO.search(e["msg"])]


def _unknown(facts: _Facts) -> Outcome:
    shown = [line.text for line in facts.lines if line.text.strip()]
    if not shown:
        return Outcome(OutcomeKind.UNKNOWN, "empty console log: nothing was written (wrong console= "
                       "for this machine, or the kernel never started)", [])
    last = _short(shown[-1], 160)
    if not facts.events and not any(line.kernel for line in facts.lines):
        return Outcome(OutcomeKind.UNKNOWN, f"no kernel messages in the console log "
                       f"({len(shown)} other lines; last: \"{last}\")", [_verbatim(shown[-1])])
    run = facts.last("run_init")
    if run is not None:
        reason = f"init {run['path']} started, but the log ends without a shutdown, panic or oops " \
                 f"(hung, killed on timeout, or truncated); last line: \"{last}\""
    else:
        reason = f"the log ends during kernel boot, before init started (hung, killed on timeout, " \
                 f"or truncated); last line: \"{last}\""
    evidence = _evidence(run)
    if _verbatim(shown[-1]) not in evidence:
        evidence.append(_verbatim(shown[-1]))
    return Outcome(OutcomeKind.UNKNOWN, reason, evidence)


def _explain_panic(facts: _Facts, panic: _Event) -> Outcome:
    for pattern, explain in _PANICS:
        m = pattern.search(panic["msg"])
        if m:
            return explain(facts, panic, m)
    if facts.all("exec_failed", panic.index):  # e.g. a panic line cut short
        return _no_init(facts, panic)
    return Outcome(OutcomeKind.PANIC, _short(_panic_text(panic["msg"]), _MAX_REASON),
                   _evidence(panic))


def _decide(facts: _Facts) -> Outcome:
    """Root cause first: an oops, then a panic (unless it is init exiting after the agent said
    why), then the agent's own complaints, then an init that failed but had a fallback."""
    panic = facts.first("panic")
    bug = facts.first("bug", before=panic.index if panic is not None else None)
    if bug is not None:
        return _oops(facts, bug, panic)
    agent = _agent_errors(facts)
    if panic is not None and not (agent and _INIT_EXIT.search(panic["msg"])):
        return _explain_panic(facts, panic)
    if agent:
        reason = f"bootlab-agent: {agent[0]['msg']}"
        if len(agent) > 1:
            reason += f" (and {len(agent) - 1} more agent message{'s' if len(agent) > 2 else ''})"
        return Outcome(OutcomeKind.AGENT_ERROR, _short(reason, _MAX_REASON),
                       _evidence(*agent[:4], panic))
    if facts.first("exec_failed") is not None:
        return _no_init(facts, None)
    shutdown = facts.first("shutdown")
    if shutdown is not None:
        run = facts.last("run_init", shutdown.index)
        who = f"init {run['path']} ran" if run is not None else "the kernel booted"
        reason = f"{who} and the guest shut down cleanly ({shutdown.line})"
        return Outcome(OutcomeKind.OK, _short(reason, _MAX_REASON), _evidence(run, shutdown))
    return _unknown(facts)


def analyze(text: str | bytes) -> Outcome:
    """Read a whole console log and say how the boot ended. Never raises on any input text."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    return _decide(_facts(_lines(text)))
