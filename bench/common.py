"""What the benchmarks share: a contender's results, and the check for the peers' host programs."""

from __future__ import annotations

import shutil
import statistics
import sys
from dataclasses import dataclass, field


@dataclass
class Result:
    """Wall times of a contender's successful runs, or why it failed."""

    name: str
    times: list[float] = field(default_factory=list)
    failure: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.failure else None


def check_host(programs: dict[str, str]) -> None:
    """Exit with the exact apt-get line if a program ({program: Debian package}) is missing."""
    missing = sorted({pkg for prog, pkg in programs.items() if not shutil.which(prog)})
    if missing:
        sys.exit(f"missing host programs; run: apt-get install -y {' '.join(missing)}")


def compile_bytecode() -> None:
    """Write bootlab's .pyc files before timing anything.

    An installed package ships them; an editable checkout gets them on first import, unless
    PYTHONDONTWRITEBYTECODE is set (some CI shells and containers set it), in which case every
    run recompiles every module and a 0.2 s command is timed 10 to 20 ms slow."""
    import compileall
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src" / "bootlab"
    if not compileall.compile_dir(str(src), quiet=1):
        sys.exit(f"could not compile {src}")
