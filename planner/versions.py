"""Engine version strings: parse, compare, and match ranges like '>=0.19,<0.26'."""

from __future__ import annotations

import re
from functools import total_ordering

from .errors import InputError

_VERSION = re.compile(r"^[vb]?(\d+(?:\.\d+)*)(?:[.-]?(a|b|rc|alpha|beta|c)(\d*))?(?:[.-]?post(\d*))?(?:[.-]?dev(\d*))?(?:\+.*)?$")
_PRE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2}


@total_ordering
class Version:
    """A release number as pip orders them (enough of PEP 440 for engine releases); llama.cpp's
    build tags (b11312) read as the build number."""

    def __init__(self, text: str):
        m = _VERSION.match(str(text).strip())
        if not m:
            raise InputError(f"{text!r} is not a version number", "write it like 0.32.0 or 0.5.10.post1")
        self.text = str(text).strip().lstrip("v")
        nums = [int(x) for x in m.group(1).split(".")]
        while len(nums) > 1 and nums[-1] == 0:
            nums.pop()
        pre = (_PRE[m.group(2)], int(m.group(3) or 0)) if m.group(2) else (9, 0)
        post = int(m.group(4) or 0) if m.group(4) is not None else -1
        dev = int(m.group(5) or 0) if m.group(5) is not None else 10**9
        self.key = (tuple(nums), pre if m.group(5) is None or m.group(2) else (-1, 0), post, dev)

    @property
    def release(self) -> tuple[int, ...]:
        """(major, minor, patch), zero-padded."""
        nums = self.key[0]
        return tuple(nums) + (0,) * (3 - len(nums))

    def __eq__(self, other):
        return self.key == _v(other).key

    def __lt__(self, other):
        return self.key < _v(other).key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"Version({self.text!r})"

    def __str__(self):
        return self.text


def _v(x) -> Version:
    return x if isinstance(x, Version) else Version(x)


def in_range(version: str | Version, spec: str | None) -> bool:
    """'>=0.19,<0.26' style ranges; None or '' matches every version."""
    if not spec:
        return True
    v = _v(version)
    for part in spec.split(","):
        part = part.strip()
        m = re.match(r"^(>=|<=|==|!=|>|<)\s*(.+)$", part)
        if not m:
            raise InputError(f"version range {spec!r} is malformed", "write it like >=0.19,<0.26")
        op, other = m.group(1), _v(m.group(2))
        ok = {">=": v >= other, "<=": v <= other, "==": v == other, "!=": v != other,
              ">": v > other, "<": v < other}[op]
        if not ok:
            return False
    return True
