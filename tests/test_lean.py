"""bootlab.lean.Record: typing.NamedTuple's class syntax, giving the same kind of class."""

from __future__ import annotations

import pickle
from typing import NamedTuple

import pytest

from bootlab.image.cpio import Member
from bootlab.lean import TYPE_CHECKING, Record


class Point(Record):
    """A point."""

    x: int
    y: int = 0
    label: str | None = None

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)


class TypedPoint(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str | None = None


def test_record_is_what_typing_namedtuple_makes() -> None:
    for cls in (Point, TypedPoint):
        assert issubclass(cls, tuple) and cls._fields == ("x", "y", "label")
        assert cls._field_defaults == {"y": 0, "label": None}
        assert cls.__doc__ == "A point." and cls.__qualname__ == cls.__name__
        assert cls.__module__ == __name__ and not hasattr(cls(1), "__dict__")
        assert list(cls.__annotations__) == ["x", "y", "label"]
    assert Point.__qualname__ == "Point" and Point(3) == TypedPoint(3) == (3, 0, None)


def test_record_keeps_the_body_and_pickles() -> None:
    p = Point(3, -4, label="a")
    assert p.norm1 == 7 and p.moved(1) == Point(4, -4, "a") and type(p.moved(1)) is Point
    assert repr(p) == "Point(x=3, y=-4, label='a')"
    assert pickle.loads(pickle.dumps(p)) == p
    assert Member._field_defaults == {"link": None} and Member._fields[0] == "name"


def test_a_default_before_a_field_without_one_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(Record):
            a: int = 1
            b: int


def test_type_checking_is_false_at_run_time() -> None:
    assert TYPE_CHECKING is False
