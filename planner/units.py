"""Byte sizes: parsing what people type, printing what people read."""

import re

from .errors import InputError

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10

_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "ki": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mi": MiB, "mib": MiB, "mb": 1000**2,
    # A bare "G" means GiB, as in `free -g` and docker's --memory: what people mean by "64G of RAM".
    # "Gi" is how Kubernetes writes it.
    "g": GiB, "gi": GiB, "gib": GiB, "gb": 1000**3,
    "t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
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


def parse_box_size(text: str, what: str) -> int:
    """A RAM or disk size typed on the command line: a unit is required (a bare `--ram 64` would
    be 64 bytes) and less than 1 GiB is refused."""
    m = _SIZE.match(str(text))
    if m and not m.group(2):
        raise InputError(f"{what} {text!r} has no unit", f"write it like {what} {m.group(1)}G (GiB) or {m.group(1)}GB")
    n = parse_size(text, what)
    if n < GiB:
        raise InputError(f"{what} {text!r} is less than 1 GiB", f"write it like {what} 64G")
    return n


def gib(n: float | int | None, digits: int = 2) -> str:
    """Bytes as GiB for people; None as 'unknown'."""
    if n is None:
        return "unknown"
    return f"{n / GiB:.{digits}f} GiB"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
