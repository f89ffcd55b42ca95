"""Byte sizes: parsing what people type, printing what people read."""

import re

from .errors import InputError

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10

_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    # A bare "G" means GiB, as in `free -g` and docker's --memory: what people mean by "64G of RAM".
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, what: str = "size") -> int:
    """'24GB' -> 24e9, '24GiB' or '24G' -> 24*2^30, '1024' -> 1024 bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise InputError(f"{what} {text!r} is not a size", "write it like 64G, 64GiB, 500GB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def gib(n: float | int | None, digits: int = 2) -> str:
    """Bytes as GiB for people; None as 'unknown'."""
    if n is None:
        return "unknown"
    return f"{n / GiB:.{digits}f} GiB"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
