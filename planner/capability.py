"""Compute capability as NVML, profiles and hardware documents write it ("8.9", "12.0", "9"):
the one parser. Compared as (major, minor) tuples, never as floats ("8.10" is above "8.9")."""

from __future__ import annotations


def parse_cc(text: str | None) -> tuple[int, int] | None:
    """(major, minor), or None when `text` is empty or not of the form MAJOR[.MINOR]."""
    major, dot, minor = (text or "").strip().partition(".")
    if not major.isdigit() or (dot and not minor.isdigit()):
        return None
    return int(major), int(minor or 0)
