"""Console-log analysis on real logs from the Debian 6.1 kernel under QEMU TCG, and on junk.

The fixtures in tests/data/console were captured by tests/data/console/make_fixtures.py (see
there for exactly what each guest ran); the truncated and empty ones are cut from real logs.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootlab.analysis.console import Outcome, OutcomeKind, analyze

DATA = Path(__file__).parent / "data" / "console"


def load(name: str) -> str:
    return (DATA / f"{name}.log").read_bytes().decode("utf-8", errors="replace")


def check_shape(outcome: Outcome) -> None:
    assert isinstance(outcome.kind, OutcomeKind)
    assert outcome.reason and "\n" not in outcome.reason and "\r" not in outcome.reason
    assert all(isinstance(line, str) and "\n" not in line for line in outcome.evidence)


K = OutcomeKind

# fixture → (kind, fragments the reason must contain, fragments some evidence line must contain)
FIXTURES: dict[str, tuple[OutcomeKind, list[str], list[str]]] = {
    "rdinit_missing": (K.NO_INIT, ["/nope", "VFS: Unable to mount root fs on unknown-block(0,0)"],
                       ["Kernel panic - not syncing: VFS"]),
    "dynamic_init_no_libs": (K.NO_INIT, ["Failed to execute /init", "error -2", "ENOENT",
                                         "interpreter", "No working init found"],
                             ["Failed to execute /init (error -2)"]),
    "script_missing_interpreter": (K.NO_INIT, ["/init", "error -2", "#! or ELF interpreter"],
                                   ["Failed to execute /init (error -2)"]),
    "init_not_executable": (K.NO_INIT, ["/init", "error -13", "EACCES", "not executable"],
                            ["Failed to execute /init (error -13)"]),
    "init_text_no_shebang": (K.NO_INIT, ["/init", "error -8", "ENOEXEC", "#! line"],
                             ["Failed to execute /init (error -8)"]),
    "fallback_init_not_executable": (K.NO_INIT, ["Failed to execute /init", "error -2"],
                                     ["Starting init: /sbin/init exists but couldn't execute it"]),
    "requested_init_missing": (K.NO_INIT, ["/init", "error -8", "init= program /nope", "error -2",
                                           "Requested init /nope failed"],
                               ["Requested init /nope failed (error -2)."]),
    "init_fallback_to_sh": (K.NO_INIT, ["Failed to execute /init", "error -2", "fell back to /bin/sh"],
                            ["Run /bin/sh as init process"]),
    "init_exits": (K.INIT_EXITED, ["init /init exited with status 3", "init is done",
                                   "Attempted to kill init! exitcode=0x00000300"],
                   ["Attempted to kill init!"]),
    "init_command_not_found": (K.INIT_EXITED, ["status 127", "reboot: not found"],
                               ["exitcode=0x00007f00"]),
    "no_initramfs": (K.NO_ROOT, ["VFS: Unable to mount root fs", "no initramfs and no root="],
                     ["Kernel panic - not syncing: VFS"]),
    "no_root_device": (K.NO_ROOT, ["VFS: Unable to mount root fs", "root=/dev/vda not found"],
                       ["No filesystem could mount root"]),
    "initramfs_garbage": (K.BAD_INITRAMFS, ["invalid magic at start of compressed archive",
                                            "VFS: Unable to mount root fs"],
                          ["Initramfs unpacking failed"]),
    "sysrq_crash": (K.PANIC, ["kernel panic: sysrq triggered crash"], ["sysrq triggered crash"]),
    "oops_module": (K.OOPS, ["BUG: kernel NULL pointer dereference",
                             "bootlab_oops_poke+0xc/0x1000 [bootlab_oops]", "insmod"],
                    ["Oops: 0000 [#1]", "RIP: 0010:bootlab_oops_poke"]),
    "oops_then_panic": (K.OOPS, ["BUG: kernel NULL pointer dereference", "bootlab_oops_poke",
                                 "then kernel panic: Fatal exception"],
                        ["Kernel panic - not syncing: Fatal exception"]),
    "ok_hello": (K.OK, ["/init", "reboot: Restarting system"], ["Run /init as init process"]),
    "agent_no_port": (K.AGENT_ERROR, ["no virtio-serial port /dev/vport0p1 after 10 s: "
                                      "is virtio_console available?"],
                      ["bootlab-agent: no virtio-serial port"]),
    "agent_missing_module": (K.AGENT_ERROR, ["virtio_console.ko: No such file or directory",
                                             "1 more agent message"],
                             ["bootlab-agent: no virtio-serial port"]),
    "truncated_before_init": (K.UNKNOWN, ["before init started", "Run /in"], ["Run /in"]),
    "truncated_in_panic": (K.NO_INIT, ["Failed to execute /init", "error -8", "No work"],
                           ["Failed to execute /init (error -8)"]),
    "empty": (K.UNKNOWN, ["empty console log"], []),
}


def test_every_fixture_is_listed() -> None:
    assert {p.stem for p in DATA.glob("*.log")} == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture(name: str) -> None:
    kind, in_reason, in_evidence = FIXTURES[name]
    outcome = analyze(load(name))
    check_shape(outcome)
    assert outcome.kind is kind, outcome.reason
    for fragment in in_reason:
        assert fragment in outcome.reason
    for fragment in in_evidence:
        assert any(fragment in line for line in outcome.evidence), outcome.evidence


def test_evidence_is_verbatim_without_timestamps() -> None:
    outcome = analyze(load("oops_module"))
    lines = load("oops_module").splitlines()
    for ev in outcome.evidence:
        assert not ev.startswith("[")
        assert any(line.rstrip("\r").endswith("] " + ev) for line in lines), ev


def test_bytes_are_accepted() -> None:
    assert analyze((DATA / "ok_hello.log").read_bytes()).kind is K.OK


# --- line endings, escapes, timestamps ---------------------------------------------------------

@pytest.mark.parametrize("name", ["dynamic_init_no_libs", "oops_module", "ok_hello", "init_exits"])
@pytest.mark.parametrize("ending", ["\n", "\r", "\r\r\n"])
def test_line_endings_do_not_matter(name: str, ending: str) -> None:
    text = load(name)
    converted = re.sub(r"\r\n|\r|\n", ending, text)
    assert analyze(converted) == analyze(text)


@pytest.mark.parametrize("name", ["init_text_no_shebang", "oops_then_panic", "agent_no_port"])
def test_without_printk_timestamps(name: str) -> None:
    text = load(name)
    bare = re.sub(r"^\[\s*\d+\.\d+\] ", "", text, flags=re.M)
    assert analyze(bare).kind is analyze(text).kind
    assert analyze(bare).reason == analyze(text).reason


def test_ansi_escapes_are_ignored() -> None:
    text = load("init_text_no_shebang")
    noisy = text.replace("Failed to execute", "\x1b[1;31mFailed to\x1b[0m execute\x1b]0;title\x07")
    assert analyze(noisy) == analyze(text)


def test_kernel_message_after_user_output_on_the_same_line() -> None:
    # A shell prompt, a terminal query, then a kernel message without a newline between them.
    text = "[    1.000000] Run /init as init process\n" \
           "/ # \x1b[6n[    2.000000] Kernel panic - not syncing: Fatal exception\n"
    outcome = analyze(text)
    assert outcome.kind is K.PANIC
    assert outcome.evidence == ["Kernel panic - not syncing: Fatal exception"]


def test_user_output_is_not_taken_for_kernel_messages() -> None:
    text = "[    1.000000] Run /init as init process\nBUG: my test found a bug\n" \
           "[    2.000000] reboot: Restarting system\n"
    assert analyze(text).kind is K.OK


def test_agent_line_without_timestamp() -> None:
    text = "[    1.000000] Run /init as init process\n" \
           "bootlab-agent: loading module /lib/modules/x/virtio.ko failed: Exec format error\n" \
           "[    2.000000] reboot: Restarting system\n"
    outcome = analyze(text)
    assert outcome.kind is K.AGENT_ERROR
    assert "Exec format error" in outcome.reason


def test_agent_power_off_notice_is_not_an_error() -> None:
    text = "[    1.000000] Run /init as init process\n" \
           "[    2.000000] bootlab-agent: host went away; powering off\n" \
           "[    2.100000] reboot: Restarting system\n"
    assert analyze(text).kind is K.OK


def test_agent_error_explains_init_exiting() -> None:
    text = "[    1.000000] Run /init as init process\n" \
           "[    1.100000] bootlab-agent: poll: Bad file descriptor\n" \
           "[    1.200000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
    outcome = analyze(text)
    assert outcome.kind is K.AGENT_ERROR
    assert "poll: Bad file descriptor" in outcome.reason
    assert any("Attempted to kill init" in line for line in outcome.evidence)


def test_other_panics_outrank_agent_errors() -> None:
    text = "[    1.100000] bootlab-agent: unknown frame type 9\n" \
           "[    1.200000] Kernel panic - not syncing: Out of memory and no killable processes...\n"
    outcome = analyze(text)
    assert outcome.kind is K.PANIC
    assert "Out of memory and no killable processes" in outcome.reason


def test_arm64_oops() -> None:
    # Synthetic, in the arm64 6.1 format: "Internal error: Oops:" and "pc : func+off/size".
    text = (
        "[    2.000000] Unable to handle kernel NULL pointer dereference at virtual address "
        "0000000000000000\n"
        "[    2.000001] Internal error: Oops: 96000005 [#1] PREEMPT SMP\n"
        "[    2.000002] CPU: 0 PID: 77 Comm: insmod Tainted: G           OE      6.1.0-56-arm64 #1\n"
        "[    2.000003] pc : bootlab_oops_poke+0x8/0x14 [bootlab_oops]\n"
        "[    2.000004] lr : bootlab_oops_init+0x1c/0x1000 [bootlab_oops]\n"
    )
    outcome = analyze(text)
    assert outcome.kind is K.OOPS
    assert "Unable to handle kernel NULL pointer dereference" in outcome.reason
    assert any("Internal error: Oops: 96000005" in line for line in outcome.evidence)
    assert "bootlab_oops_poke+0x8/0x14 [bootlab_oops]" in outcome.reason and "insmod" in outcome.reason


def test_general_protection_fault() -> None:
    text = (
        "[    3.100000] general protection fault, probably for non-canonical address "
        "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI\n"
        "[    3.100001] CPU: 0 PID: 42 Comm: modprobe Not tainted 6.1.0-56-amd64 #1\n"
        "[    3.100002] RIP: 0010:list_del+0x1a/0x60\n"
    )
    outcome = analyze(text)
    assert outcome.kind is K.OOPS
    assert "general protection fault" in outcome.reason
    assert "list_del+0x1a/0x60" in outcome.reason and "modprobe" in outcome.reason


def test_init_killed_by_signal() -> None:
    text = "[    1.000000] Run /init as init process\n" \
           "[    1.200000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    outcome = analyze(text)
    assert outcome.kind is K.INIT_EXITED
    assert "signal 11 (SIGSEGV)" in outcome.reason


def test_a_rebooting_guest_is_judged_on_its_first_boot() -> None:
    first = load("init_text_no_shebang")
    second = load("truncated_before_init")
    outcome = analyze(first + second)
    assert outcome == analyze(first)


def test_a_log_still_booting_ends_unknown() -> None:
    text = load("ok_hello")
    cut = text[: text.index("hello")]
    outcome = analyze(cut)
    assert outcome.kind is K.UNKNOWN
    assert "init /init started" in outcome.reason


# --- malformed input ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n\r\n", "   ", "\x00\x00\x00", "\x1b[2J\x1b[H"])
def test_empty_or_blank(text: str) -> None:
    outcome = analyze(text)
    check_shape(outcome)
    assert outcome.kind is K.UNKNOWN


def test_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(50):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000)))
        check_shape(analyze(blob.decode("utf-8", errors="replace")))


def test_no_kernel_messages() -> None:
    outcome = analyze("SeaBIOS (version 1.16.2)\nBooting from ROM...\n")
    assert outcome.kind is K.UNKNOWN
    assert "no kernel messages" in outcome.reason


def test_huge_line() -> None:
    text = load("dynamic_init_no_libs") + "x" * 5_000_000 + "\n"
    outcome = analyze(text)
    assert outcome.kind is K.NO_INIT
    huge_panic = "[    9.000000] Kernel panic - not syncing: " + "A" * 1_000_000
    outcome = analyze(huge_panic)
    assert outcome.kind is K.PANIC
    assert len(outcome.reason) <= 400 and all(len(e) <= 300 for e in outcome.evidence)


@pytest.mark.parametrize("line", [
    "Failed to execute /init (error -99999999999999999999)",
    "Kernel panic - not syncing: Attempted to kill init! exitcode=0xffffffffffffffff",
    "Kernel panic - not syncing: Requested init  failed (error -)",
    "Kernel panic - not syncing: VFS: Unable to mount root fs on ",
    "Kernel command line: root= rdinit= root",
    "RIP: 0010:",
    "CPU: 0 PID: 1 Comm:",
    "Kernel panic - not syncing: ",
    "bootlab-agent: ",
])
def test_odd_lines(line: str) -> None:
    for text in (line, f"[    1.000000] {line}\n", f"[    1.000000] Run /init as init process\n{line}"):
        check_shape(analyze(text))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_never_raises(text: str) -> None:
    check_shape(analyze(text))


_KERNELISH = st.sampled_from([
    "Run /init as init process", "Failed to execute /init (error -2)", "reboot: Restarting system",
    "Kernel panic - not syncing: No working init found.  Try passing init=",
    "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
    "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
    "Initramfs unpacking failed: junk", "BUG: kernel NULL pointer dereference, address: 0",
    "Oops: 0000 [#1] PREEMPT SMP NOPTI", "RIP: 0010:f+0x1/0x2", "RIP: 0033:0x1",
    "CPU: 0 PID: 1 Comm: init", "bootlab-agent: boom", "Linux version 6.1.0",
    "Kernel command line: rdinit=/x root=/dev/vda", "Trying to unpack rootfs image as initramfs...",
    "Starting init: /sbin/init exists but couldn't execute it (error -8)",
    "Kernel panic - not syncing: Requested init /x failed (error -13).",
    "No filesystem could mount root, tried: ", "VFS: Cannot open root device \"vda\"",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(_KERNELISH, st.text(max_size=40))), max_size=30),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_fuzz_kernel_like_logs(parts: list[tuple[bool, str]], ending: str) -> None:
    lines = [f"[    1.000000] {text}" if stamped else text for stamped, text in parts]
    check_shape(analyze(ending.join(lines)))
