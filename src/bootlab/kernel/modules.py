"""Kernel modules: resolve names to files with their dependencies, from the kernel's modules.dep."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bootlab.errors import BadInput


def _canonical(name: str) -> str:
    # modprobe treats '-' and '_' alike in module names.
    return name.replace("-", "_")


def _module_name(relpath: str) -> str:
    base = relpath[relpath.rfind("/") + 1:]
    end = base.find(".ko")
    return (base[:end] if end > 0 else base).replace("-", "_")


@dataclass
class ModuleIndex:
    """What /lib/modules/<release> says: each module's file, its dependencies, what is built in."""

    root: Path
    raw_deps: dict[str, str] = field(default_factory=dict)  # name -> its modules.dep right side
    paths: dict[str, str] = field(default_factory=dict)  # name -> path relative to root
    builtin: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, root: Path) -> "ModuleIndex":
        idx = cls(root)
        try:
            text = (root / "modules.dep").read_text()
        except FileNotFoundError:
            raise BadInput(f"{root}: no modules.dep (run depmod, or pass the right modules directory)") from None
        for line in text.splitlines():
            if ":" not in line:
                continue
            target, _, rest = line.partition(":")
            target = target.strip()
            if not target:
                continue
            name = _module_name(target)
            idx.paths[name] = target
            idx.raw_deps[name] = rest  # parsed only for the modules asked for
        builtin = root / "modules.builtin"
        if builtin.exists():
            idx.builtin = {_module_name(l.strip()) for l in builtin.read_text().splitlines() if l.strip()}
        return idx

    def deps(self, name: str) -> list[str]:
        return [_module_name(d) for d in self.raw_deps.get(name, "").split()]

    def closure(self, names: list[str]) -> list[str]:
        """Module paths to load, dependencies first, each once; built-in modules are skipped."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen or name in self.builtin:
                return
            if name not in self.paths:
                raise BadInput(f"module {name!r} not found in {self.root} (and not built in)")
            if name in chain:
                return  # a cycle in modules.dep; the kernel would refuse it too
            for dep in self.deps(name):
                visit(dep, chain + (name,))
            seen.add(name)
            order.append(self.paths[name])

        for n in names:
            visit(_canonical(n), ())
        return order
