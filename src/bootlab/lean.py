"""typing's TYPE_CHECKING and NamedTuple for the modules on the way to `initramfs ls`.

That path (the CLI, the cpio and compression readers) needs nothing else from typing, whose
import is 2-3 ms of its start-up: a fiftieth of listing Debian's initrd. Those modules import
typing only under TYPE_CHECKING, and declare named tuples with `Record`:

    class Point(Record):
        x: int
        y: int = 0

        def norm(self) -> int: ...

gives a plain collections.namedtuple with the body's methods, properties and docstring, as
typing.NamedTuple does. Type checkers see typing.NamedTuple itself.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING at run time; type checkers take it as True

if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:

    class _RecordType(type):
        def __new__(mcls, name: str, bases: tuple[type, ...], body: dict[str, object]) -> type:
            if not bases:  # Record itself
                return super().__new__(mcls, name, bases, body)
            fields = list(body.get("__annotations__", {}))
            defaults = [body[f] for f in fields if f in body]
            if any(f in body for f in fields[:len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = namedtuple(name, fields, defaults=defaults, module=body["__module__"])
            for key, value in body.items():
                if key not in fields and key not in ("__module__", "__qualname__", "__annotations__"):
                    setattr(cls, key, value)
            cls.__qualname__ = body.get("__qualname__", name)
            cls.__annotations__ = body.get("__annotations__", {})
            return cls

    class Record(metaclass=_RecordType):
        """Subclass it as typing.NamedTuple; what comes out is a collections.namedtuple."""
