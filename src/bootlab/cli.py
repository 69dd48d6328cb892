"""The command line: parse, call the library, print, map outcomes to exit codes like `docker run`."""

from __future__ import annotations

import argparse
import errno
import gc
import os
import re
import signal
import sys
import time

from bootlab import __version__
from bootlab.errors import BadInput, BootlabError, Timeout, VMFailed
from bootlab.lean import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any, BinaryIO

    from bootlab.image.entry import Entry
    from bootlab.vm.machine import Disk
    from bootlab.vm.vm import VM

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_FAILED = 125

RUN_EXAMPLES = """\
examples:
  bootlab run -- uname -a                    newest /boot kernel, busybox guest
  bootlab run --kernel arch/x86/boot/bzImage -- dmesg
  echo hi | bootlab run -- cat               host stdin is the command's stdin
  bootlab run --module ext4 -- lsmod         load modules (and their dependencies) first
  bootlab run                                an interactive shell; `exit` powers off
  bootlab run --dry-run -- true              print the QEMU command line

exit status: the command's own; 124 timeout; 125 the VM failed (panic, no init,
QEMU error: the reason is printed); 126 not executable; 127 not found; 2 bad usage.
"""


def _memory(value: str) -> str:
    size = re.fullmatch(r"(\d+)[KMGT]?", value, re.IGNORECASE)
    if size is None or not int(size.group(1)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a size like 512M or 2G")
    return value.upper()


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        s = -1
    if not s > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return s


def _path(value: str) -> Path:
    """A path argument. pathlib is imported only when one is given: `initramfs ls FILE` takes
    its FILE as a plain string and skips pathlib's 4 ms."""
    from pathlib import Path

    return Path(value)


def _output(value: str) -> Path:
    """-o: the file to write. pathlib drops a trailing slash, which would turn `-o new/` (a
    directory meant) into a file named `new`."""
    if value.endswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r} names a directory; give the file to write")
    return _path(value)


class _Help(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter (examples keep their lines), given the terminal's width. Left to find
    the width itself, argparse imports shutil, which imports bz2 and lzma: 3 ms of every command."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # examples: their lines as written
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)  # a description: wrapped

    def add_argument(self, action: argparse.Action) -> None:
        # argparse measures subcommands without the indent it then prints them with, and so
        # pushed the help of the longest (`initramfs`) onto a line of its own.
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS and isinstance(action, argparse._SubParsersAction):
            longest = max((len(self._format_action_invocation(a)) for a in action._get_subactions()), default=0)
            self._action_max_length = max(self._action_max_length,
                                          longest + self._current_indent + self._indent_increment)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size gives it: $COLUMNS, else stdout's
    terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kw: Any) -> None:
        super().__init__(formatter_class=_Help, **kw)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and status 2, like every other bad input."""
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


COMMANDS = {  # name: the line `bootlab --help` shows for it
    "run": "boot a kernel and run a command in it",
    "initramfs": "list, examine and extract any initramfs",
    "rootfs": "build root filesystem images, without root",
    "kernel": "get kernels to boot",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or, given `command`, one where only that command has its
    arguments: `initramfs ls` should not spend milliseconds describing `run`'s twenty options."""
    p = _Parser(prog="bootlab", description="Boot and debug Linux kernels in QEMU: one line, rootless, fast.",
                epilog="examples:\n  bootlab run -- uname -a\n\nrun `bootlab run --help` for more.")
    p.add_argument("--version", action="version", version=f"bootlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    adders = {"run": _add_run, "initramfs": _add_initramfs, "rootfs": _add_rootfs, "kernel": _add_kernel}
    for name, add in adders.items():
        if command in (None, name):
            add(sub)
        else:
            sub.add_parser(name, help=COMMANDS[name])
    return p


def _add_run(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help=COMMANDS["run"],
                         description="Boot a kernel with a minimal busybox guest and run CMD in it; "
                                     "its stdout, stderr and exit status come back as if it ran here.",
                         epilog=RUN_EXAMPLES)
    run.add_argument("--kernel", type=_path, metavar="PATH",
                     help="kernel image (bzImage, vmlinux, arm64 Image); default: the newest "
                          "/boot/vmlinuz-*, or for another --arch Debian's kernel, fetched once")
    run.add_argument("--arch", metavar="ARCH", help="x86_64 or aarch64 (default: the host's)")
    run.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                     help="accelerator; auto uses KVM only if a quick probe shows it works (default: auto)")
    run.add_argument("-m", "--memory", type=_memory, default="512M", help="guest memory (default: 512M)")
    run.add_argument("--cpus", type=_positive_int, default=1, help="virtual CPUs (default: 1)")
    run.add_argument("--append", action="append", default=[], metavar="ARGS",
                     help="extra kernel command-line arguments (repeatable)")
    run.add_argument("--module", action="append", default=[], metavar="NAME",
                     help="load this kernel module and its dependencies before CMD (repeatable)")
    run.add_argument("--busybox", type=_path, metavar="PATH", help="static busybox to use (default: /bin/busybox)")
    run.add_argument("--add", action="append", default=[], metavar="HOST[:GUEST]",
                     help="put a host file or tree in the guest (its ELF libraries come along; repeatable)")
    run.add_argument("--spec", type=_path, metavar="FILE",
                     help="add what an initramfs spec describes; a spec with its own init is booted as it is")
    run.add_argument("--disk", action="append", default=[], metavar="IMG[,ro]",
                     help="attach a disk image as /dev/vda, /dev/vdb ... (,ro: read-only; "
                          ",format=qcow2 for QEMU's own format; repeatable)")
    run.add_argument("--root", metavar="DEV",
                     help="switch into this disk (e.g. /dev/vda) and run CMD there (no CMD: its /sbin/init)")
    run.add_argument("--rootfstype", metavar="TYPE", help="the root's filesystem (default: read from the disk)")
    run.add_argument("--share", action="append", default=[], metavar="HOST[:GUEST][,rw]",
                     help="share a host directory over virtio-9p, read-only unless ,rw; "
                          "GUEST defaults to the same path (repeatable)")
    run.add_argument("--host-root", action="store_true",
                     help="the host's / as the guest's root, read-only under a tmpfs overlay: "
                          "host programs run in the guest")
    run.add_argument("--net", action="store_true",
                     help="a network card on QEMU user networking (NAT to the host's network)")
    run.add_argument("--ssh", type=int, metavar="PORT",
                     help="forward 127.0.0.1:PORT to the guest's port 22 and authorize your ~/.ssh/id_*.pub "
                          "and bootlab's key (~/.cache/bootlab/ssh/id_ed25519) for root; implies --net")
    run.add_argument("--initrd", type=_path, metavar="FILE",
                     help="boot this initramfs as it is, with its own /init and the console attached")
    run.add_argument("--timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                     help="give up after this long, boot included; exit status 124 (default: 3600)")
    run.add_argument("-v", "--verbose", action="store_true", help="show the kernel console live on stderr")
    run.add_argument("--console-log", type=_path, metavar="FILE",
                     help="save the kernel console here (default: a file under ~/.cache/bootlab/logs)")
    run.add_argument("--dry-run", action="store_true", help="print the QEMU command line and exit")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                     help="the command to run; none: an interactive shell on the console")


def _add_rootfs(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rfs = sub.add_parser("rootfs", help=COMMANDS["rootfs"],
                         epilog="examples:\n  bootlab rootfs build mytree/ -o root.img\n"
                                "  bootlab rootfs build spec.toml -o root.img --size 256M\n"
                                "  bootlab rootfs debootstrap bookworm -o debian.img --include openssh-server\n"
                                "  bootlab run --disk debian.img --root /dev/vda -- cat /etc/debian_version\n")
    rsub = rfs.add_subparsers(dest="rootfs_command", metavar="ACTION", parser_class=_Parser)
    rb = _action(rsub, "build", "an ext4 image from a directory or a spec (owners, modes, nodes exact)",
                 ["bootlab rootfs build mytree/ -o root.img", "bootlab rootfs build spec.toml -o root.img --size 256M"])
    rb.add_argument("source", type=_path, metavar="SRC", help="a directory, or a TOML spec (see the README)")
    rb.add_argument("-o", "--output", type=_output, required=True, metavar="IMG")
    rb.add_argument("--size", default="auto", metavar="SIZE", help="e.g. 512M, 2G, or auto (default)")
    rb.add_argument("--label", metavar="LABEL", help="filesystem label")
    rb.add_argument("--keep-owners", action="store_true",
                    help="a directory's owners as they are on the host (default: root)")
    rd = _action(rsub, "debootstrap", "a Debian root filesystem image, cached by its inputs",
                 ["bootlab rootfs debootstrap bookworm -o debian.img --include openssh-server",
                  "bootlab rootfs debootstrap bookworm --arch aarch64 -o arm64.img"])
    rd.add_argument("suite", metavar="SUITE", help="e.g. bookworm")
    rd.add_argument("-o", "--output", type=_output, required=True, metavar="IMG")
    rd.add_argument("--variant", default="minbase", help="minbase (default), buildd, important, standard")
    rd.add_argument("--include", default="", metavar="PKG,...", help="more packages, comma-separated")
    rd.add_argument("--size", default="auto", metavar="SIZE", help="e.g. 2G, or auto (default)")
    rd.add_argument("--arch", default=None, metavar="ARCH", help="x86_64 or aarch64 (default: the host's)")


def _add_kernel(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kern = sub.add_parser("kernel", help=COMMANDS["kernel"],
                          epilog="examples:\n  bootlab kernel fetch --arch aarch64\n"
                                 "  bootlab kernel fetch linux-image-6.1.0-56-amd64\n")
    ksub = kern.add_subparsers(dest="kernel_command", metavar="ACTION", parser_class=_Parser)
    fetch = _action(ksub, "fetch", "download a Debian kernel package into the cache (no install)",
                    ["bootlab kernel fetch --arch aarch64", "bootlab kernel fetch linux-image-6.1.0-56-amd64"])
    fetch.add_argument("--arch", default=None, metavar="ARCH", help="x86_64 or aarch64 (default: the host's)")
    fetch.add_argument("package", nargs="?", metavar="PACKAGE",
                       help="a linux-image package (default: linux-image-<debian arch>, the newest)")


INITRAMFS_EXAMPLES = """\
examples:
  bootlab initramfs ls /boot/initrd.img-$(uname -r)          every entry of every segment
  bootlab initramfs ls -l initrd.img                           like ls -l; --json for scripts
  bootlab initramfs examine /boot/initrd.img-$(uname -r)     one row per segment
  bootlab initramfs extract initrd.img -C out/                 no root needed
  bootlab initramfs extract initrd.img -C out/ --segment 1 'usr/lib/modules/*'
"""


def _action(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str],  # type: ignore[type-arg]
            **kw: object) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with examples."""
    return sub.add_parser(name, help=help, description=kw.pop("description", help[:1].upper() + help[1:] + "."),
                          epilog="examples:\n" + "".join(f"  {e}\n" for e in examples))


def _add_initramfs(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ini = sub.add_parser("initramfs", help=COMMANDS["initramfs"],
                         description="Read initramfs images the way the kernel does: every segment "
                                     "(early microcode, several compressed archives), without root.",
                         epilog=INITRAMFS_EXAMPLES)
    isub = ini.add_subparsers(dest="initramfs_command", metavar="ACTION", parser_class=_Parser)
    ls = _action(isub, "ls", "list every entry of every segment",
                 ["bootlab initramfs ls /boot/initrd.img-$(uname -r)", "bootlab initramfs ls -l --json initrd.img"])
    ls.add_argument("file", metavar="FILE")  # a str, not _path: see _path
    ls.add_argument("-l", "--long", action="store_true", help="mode, links, owner, size or device, mtime, link target")
    ls.add_argument("--json", action="store_true", help="one JSON array of entries")
    ex = _action(isub, "examine", "one row per segment: offset, compression, sizes, entries",
                 ["bootlab initramfs examine /boot/initrd.img-$(uname -r)"])
    ex.add_argument("file", metavar="FILE")
    ex.add_argument("--json", action="store_true")
    xt = _action(isub, "extract", "unpack into a directory, without root",
                 ["bootlab initramfs extract initrd.img -C out/",
                  "bootlab initramfs extract initrd.img -C out/ --segment 1 'usr/lib/modules/*'"])
    xt.add_argument("file", metavar="FILE")
    xt.add_argument("-C", "--directory", type=_path, required=True, metavar="DIR", help="destination")
    xt.add_argument("--segment", type=int, metavar="N", help="only segment N (see examine)")
    xt.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help="only names matching these globs (each must match something)")
    bd = _action(isub, "build", "build an initramfs from a TOML spec, rootless and reproducible",
                 ["bootlab initramfs build spec.toml -o initrd.img",
                  "bootlab initramfs build spec.toml -o initrd.img --compress zstd --early microcode/"],
                 description="Build an initramfs from a TOML spec (see the README for the format). "
                             "SOURCE_DATE_EPOCH (default 0) makes the output byte-identical.")
    bd.add_argument("spec", type=_path, metavar="SPEC")
    bd.add_argument("-o", "--output", type=_output, required=True, metavar="OUT")
    bd.add_argument("--compress", metavar="ALG",
                    help="none, gzip, bzip2, lzma, xz, lzo, lz4 or zstd (default: the spec's, else gzip)")
    bd.add_argument("--early", type=_path, metavar="SPEC_OR_DIR",
                    help="an uncompressed first segment (e.g. CPU microcode): a directory or a spec")


def cmd_initramfs(args: argparse.Namespace) -> int:
    from bootlab.image import initramfs, listing

    action = args.initramfs_command
    if action is None:
        raise BadInput("initramfs: say what to do: ls, examine, extract or build (see --help)")
    if action == "build":
        from bootlab.image import build, spec

        out = build.build(spec.load(args.spec), args.output, algorithm=args.compress, early=args.early)
        _err(f"wrote {out} ({out.stat().st_size} bytes)")
        return 0
    if action == "extract":
        from bootlab.image.extract import MANIFEST, extract

        report = extract(initramfs.map_image(args.file), args.directory, args.patterns, args.segment)
        if report.not_applied:
            _err(f"{len(report.not_applied)} entries could not be fully created without root (device nodes, "
                 f"owners); recorded in {args.directory / MANIFEST}")
        if report.skipped:
            _err(f"{len(report.skipped)} entries skipped (unsafe, such as names escaping {args.directory} or "
                 f"writing through symlinks, or impossible here); recorded with why in {args.directory / MANIFEST}")
        return 0
    segments = initramfs.load(args.file)
    out = sys.stdout
    if hasattr(out, "reconfigure"):  # names that are not UTF-8 come out as the bytes they were
        out.reconfigure(errors="surrogateescape")
    if action == "ls":
        if args.json:
            import json

            json.dump([listing.member_json(s, m) for s in segments for m in s.members], out, indent=1)
            out.write("\n")
        else:
            lines = (listing.long_line(s, m) if args.long else m.name
                     for s in segments for m in s.members)
            out.write("".join(line + "\n" for line in lines))
        return 0
    if action == "examine":
        rows = [listing.segment_row(s) for s in segments]
        if args.json:
            import json

            json.dump(rows, out, indent=1)
            out.write("\n")
            return 0
        head = ("segment", "offset", "end", "compression", "compressed", "uncompressed", "entries")
        table = [head] + [tuple(str(r[k]) for k in ("segment", "offset", "end", "compression",
                                                       "compressed_size", "size", "entries")) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for row in table:
            out.write("  ".join(c.rjust(w) if i != 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip() + "\n")
        return 0
    raise AssertionError(f"unknown initramfs action {action!r}")


def cmd_rootfs(args: argparse.Namespace) -> int:
    from bootlab.image.ext4 import parse_size, write_ext4

    if args.rootfs_command is None:
        raise BadInput("rootfs: say what to do: build or debootstrap (see --help)")
    from bootlab.image import build

    size = parse_size(args.size)
    out: Path = args.output
    build.check_output(out, getattr(args, "source", None))
    if args.rootfs_command == "build":
        from bootlab.image import spec
        from bootlab.image.entry import Tree

        src: Path = args.source
        if src.is_dir():
            tree = Tree()
            tree.extend(spec.host_tree(src, "", keep_owners=args.keep_owners))
            entries = tree.sorted()
        elif src.is_file():
            entries = build.resolve(spec.load(src))
        else:
            raise BadInput(f"{src}: no such directory or spec file")
        write_ext4(entries, out, size=size, label=args.label)
        _err(f"wrote {out} ({out.stat().st_size >> 20} MiB)")
    else:
        from bootlab.image.debian import debian_rootfs
        from bootlab.vm import arch as arches

        include = [p for p in args.include.split(",") if p]
        arch = arches.get(args.arch).debian_arch if args.arch else None  # mmdebstrap speaks Debian's names
        debian_rootfs(args.suite, out, variant=args.variant, include=include, size=size, arch=arch,
                      progress=lambda line: _err(line))  # its progress ends with the "wrote" line
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    from bootlab.kernel import fetch
    from bootlab.vm import arch as arches

    if args.kernel_command is None:
        raise BadInput("kernel: say what to do: fetch (see --help)")
    name = arches.get(args.arch).name
    got = fetch.fetch_kernel(name, args.package, progress=lambda line: _err(line))
    busybox = fetch.fetch_busybox(name, progress=lambda line: _err(line))
    print(f"kernel  {got.kernel}\nmodules {got.modules_dir}\nbusybox {busybox}\n"
          f"release {got.release} ({got.package} {got.version})")
    return 0


def _err(message: str) -> None:
    try:
        print(f"bootlab: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass  # (stderr itself is what failed: the exit status still tells)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_run(args: argparse.Namespace) -> int:
    import shlex

    from bootlab.vm.vm import VM

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    append = [word for a in args.append for word in shlex.split(a)]
    if args.console_log is not None:
        if args.console_log.is_dir():
            raise BadInput(f"--console-log {args.console_log}: is a directory")
        if not args.console_log.parent.is_dir():
            raise BadInput(f"--console-log {args.console_log}: directory {args.console_log.parent} does not exist")
    initrd, extra = _guest_content(args)
    if initrd is not None and cmd:
        raise BadInput("--initrd/--spec with an init boots that image's own /init: "
                       "a command cannot be run in it (drop the CMD, or the init)")
    vm = VM(args.kernel, memory=args.memory, cpus=args.cpus, accel=args.accel, append=append,
            modules=args.module, busybox=args.busybox, console_log=args.console_log,
            live_console=args.verbose, boot_timeout=args.timeout, interactive=not cmd,
            initrd=initrd, extra_entries=extra, disks=[_disk(d) for d in args.disk],
            root=args.root, rootfstype=args.rootfstype, shares=[_share(v) for v in args.share],
            host_root=args.host_root, arch=args.arch, net=args.net, ssh_port=args.ssh)
    if args.dry_run:  # (a path's bytes as they are, whatever the encoding of stdout)
        sys.stdout.buffer.write(os.fsencode(shlex.join(vm.machine().argv())) + b"\n")
        return 0
    if not cmd:
        return _interactive(vm, args.timeout)
    start = time.monotonic()
    with vm:
        _notice(vm, args.verbose)
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
        out, err = _writer(sys.stdout.buffer, "stdout"), _writer(sys.stderr.buffer, "stderr")
        remaining = max(0.1, args.timeout - (time.monotonic() - start))
        r = vm.run(cmd, input=stdin, stdout=out, stderr=err, timeout=remaining)
    if r.exec_errno is not None:
        what = "command not found" if r.returncode == 127 else os.strerror(r.exec_errno).lower()
        _err(f"{cmd[0]}: {what} in the guest")
    return r.returncode


def _writer(stream: BinaryIO, name: str) -> Callable[[bytes], None]:
    """Where the command's output goes. A full disk or a failing device is one line from
    bootlab (exit 125); a closed pipe stays BrokenPipeError, which main turns into 141."""
    def write(data: bytes) -> None:
        try:
            stream.write(data)
            stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise BootlabError(f"cannot write the command's {name} here: {e.strerror or e}") from None

    return write


def _disk(value: str) -> Disk:
    """IMG[,ro|rw][,format=F]"""
    from bootlab.vm.machine import Disk

    path, *opts = value.split(",")
    readonly, fmt = False, "raw"
    for o in opts:
        if o in ("ro", "rw"):
            readonly = o == "ro"
        elif o.startswith("format=") and re.fullmatch(r"format=(raw|qcow2)", o):
            fmt = o.split("=", 1)[1]
        else:
            raise BadInput(f"--disk {value!r}: unknown option {o!r} (known: ro, rw, format=raw|qcow2)")
    if not path:
        raise BadInput(f"--disk {value!r}: no image path")
    return Disk(_path(path), readonly, fmt)


def _share(value: str) -> tuple[Path, str, bool]:
    """HOST[:GUEST][,rw|ro]"""
    spec, _, opt = value.partition(",")
    if opt not in ("", "rw", "ro"):
        raise BadInput(f"--share {value!r}: unknown option {opt!r} (known: rw, ro)")
    host, _, guest = spec.partition(":")
    if not host:
        raise BadInput(f"--share {value!r}: expected HOST[:GUEST][,rw]")
    path = _path(os.path.expanduser(host)).resolve()
    return path, guest or str(path), opt == "rw"


def _guest_content(args: argparse.Namespace) -> tuple[Path | None, list[Entry]]:
    """(--initrd or a spec's own image, entries to add to bootlab's guest)."""
    from bootlab.image import adds

    if args.initrd is not None and args.spec is not None:
        raise BadInput("give --initrd or --spec, not both")
    if args.initrd is not None:
        if not args.initrd.is_file():
            raise BadInput(f"--initrd {args.initrd}: no such file")
        if args.add or args.module:
            raise BadInput("--initrd boots an image as it is: --add and --module cannot change it")
        return args.initrd, []
    extra = [e for spec in args.add for e in adds.add_entries(spec)]
    if args.spec is not None:
        from bootlab.image import build, spec

        s = spec.load(args.spec)
        if any(e.path == "init" for e in s.entries):
            image = adds.cached_spec_image(s, args.module)
            return image, []
        extra = build.resolve(s) + extra
    return None, extra


def _notice(vm: VM, verbose: bool) -> None:
    accel = vm.accel
    if accel is not None and accel.notice and (verbose or (accel.probed and sys.stderr.isatty())):
        _err(accel.notice)


def _interactive(vm: VM, timeout: float) -> int:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C belongs to the guest's shell
    try:
        vm.start()
        _notice(vm, True)
        status = vm.wait_interactive(timeout)
    finally:
        signal.signal(signal.SIGINT, previous)
        vm.close()
    if status is None:
        raise Timeout(f"the guest was still running after {timeout:g} s (console log: {vm.console_log})")
    outcome = vm.console_outcome()
    if outcome.failed:
        _err(f"{outcome.reason} (console log: {vm.console_log})")
        return EXIT_FAILED
    if status != 0:
        _err(f"QEMU exited with status {status} (console log: {vm.console_log})")
        return EXIT_FAILED
    return 0


def _parse(argv: list[str]) -> argparse.Namespace | None:
    """The command line, parsed; None when it names no command (the help is printed then)."""
    first = next((a for a in argv if not a.startswith("-")), None)  # the top level has no option values
    parser = build_parser(first if first in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse fills a list of positionals (extract's PATTERNs) only from the words before the
        # first option; the README's `extract IMG -C DIR 'usr/lib/modules/*'` puts them after.
        if getattr(args, "patterns", None) is None or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.patterns += extra
    if args.command is None:
        parser.print_help()
        return None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # The modules loaded by now live until exit. Moved out of the cyclic collector's sight, they
    # are not walked again by each full collection and the one at exit (2 ms of `initramfs ls`).
    gc.freeze()
    try:
        args = _parse(sys.argv[1:] if argv is None else list(argv))  # (--help > /dev/full: below)
        if args is None:
            return EXIT_USAGE
        signal.signal(signal.SIGTERM, _on_sigterm)
        if args.command == "initramfs":
            return cmd_initramfs(args)
        if args.command == "kernel":
            return cmd_kernel(args)
        if args.command == "rootfs":
            return cmd_rootfs(args)
        return cmd_run(args)
    except BadInput as e:
        _err(f"error: {e}")
        return EXIT_USAGE
    except Timeout as e:
        _err(f"timeout: {e}")
        return EXIT_TIMEOUT
    except VMFailed as e:
        _err(f"the VM failed: {e}")
        return EXIT_FAILED
    except BootlabError as e:
        _err(f"error: {e}")
        return e.exit_status
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # stdout's reader has gone (`| head`): quietly, with SIGPIPE's status
        try:  # (else the flush at exit fails once more, loudly)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass  # stdout is no file of ours (the API's caller redirected it)
        return 141
    except OSError as e:
        if e.errno in _WRITE_ERRNOS and e.filename is None:  # our output: > /dev/full, a full disk
            _err(f"error: writing failed: {e.strerror}")
            return EXIT_FAILED
        if e.errno != errno.ENAMETOOLONG:
            raise
        name = str(e.filename)  # a path given, or one made from it
        _err(f"error: file name too long: {name if len(name) <= 80 else name[:60] + '...'}")
        return EXIT_USAGE


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
