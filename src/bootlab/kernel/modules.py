"""Kernel modules: resolve names to files with their dependencies, from the kernel's modules.dep."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bootlab.errors import BadInput


def _canonical(name: str) -> str:
    # modprobe treats '-' and '_' alike in module names.
    return name.replace("-", "_")


def module_name(relpath: str) -> str:
    """The name modprobe knows a module file by: kernel/fs/ext4/ext4.ko.xz -> ext4."""
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
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # name -> "pre:" names or aliases
    _aliases: dict[str, list[str]] | None = None

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
            name = module_name(target)
            idx.paths[name] = target
            idx.raw_deps[name] = rest  # parsed only for the modules asked for
        softdep = root / "modules.softdep"
        if softdep.exists():
            for line in softdep.read_text().splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "softdep" and "pre:" in words:
                    pre = words[words.index("pre:") + 1:]
                    if "post:" in pre:
                        pre = pre[:pre.index("post:")]
                    idx.softdeps[_canonical(words[1])] = pre
        builtin = root / "modules.builtin"
        if builtin.exists():
            idx.builtin = {module_name(l.strip()) for l in builtin.read_text().splitlines() if l.strip()}
        return idx

    def aliases(self, alias: str) -> list[str]:
        """Modules providing a plain (wildcard-free) alias, as modules.alias lists them."""
        if self._aliases is None:
            self._aliases = {}
            f = self.root / "modules.alias"
            if f.exists():
                for line in f.read_text().splitlines():
                    w = line.split()
                    if len(w) == 3 and w[0] == "alias" and not any(c in w[1] for c in "*?["):
                        self._aliases.setdefault(w[1], []).append(_canonical(w[2]))
        return self._aliases.get(alias, [])

    def deps(self, name: str) -> list[str]:
        return [module_name(d) for d in self.raw_deps.get(name, "").split()]

    def closure(self, names: list[str]) -> list[str]:
        """Module paths to load, dependencies first, each once; built-in modules are skipped."""
        return self.resolve(names)[0]

    def resolve(self, names: list[str]) -> tuple[list[str], set[str]]:
        """(paths in load order, the subset wanted only as soft dependencies).

        Soft dependencies ("softdep ext4 pre: crypto-crc32c") are what modprobe loads first
        without a symbol needing them; ext4 cannot mount without a crc32c. An alias may name
        several providers (crc32c_intel, crc32c_generic): all come, and failing to load one of
        them (no SSE4.2 under TCG) is not an error."""
        order: list[str] = []
        seen: set[str] = set()
        hard: set[str] = set()

        def visit(name: str, chain: tuple[str, ...], soft: bool) -> None:
            if name in self.builtin or name in chain:
                return  # built in, or a cycle in modules.dep the kernel would refuse too
            if name not in self.paths:
                if soft:
                    return
                raise BadInput(f"module {name!r} not found in {self.root} (and not built in)")
            if not soft:
                hard.add(name)
            if name in seen:
                return
            seen.add(name)
            for pre in self.softdeps.get(name, []):
                for provider in ([_canonical(pre)] if _canonical(pre) in self.paths else self.aliases(pre)):
                    visit(provider, chain + (name,), True)
            for dep in self.deps(name):
                visit(dep, chain + (name,), soft)
            order.append(self.paths[name])

        for n in names:
            visit(_canonical(n), (), False)
        return order, {self.paths[n] for n in seen - hard}
