"""User strings an export writes (paths, names, addresses, sizes): refused, in one line, when they
cannot be written safely in the target format (module docstring of the package: the sources)."""

from __future__ import annotations

import os
import re
from typing import Any

from qwenplan.launch.safe_text import CONTROL, printable
from qwenplan.planner.errors import InputError

MAX_OPTION_CHARS = 1024      # a path, a name, an address, an image reference
MAX_ARG_CHARS = 32 * 1024    # one engine argument; systemd refuses unit lines over 1 MiB (LONG_LINE_MAX)
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
# host folders an HF cache must not be (or be inside): the container writes there as root
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                 "/sbin", "/sys", "/usr")
_SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib")


def user_str(value: Any, option: str, limit: int = MAX_OPTION_CHARS) -> str:
    """A user-given option value: no control characters, a bounded length."""
    s = str(value)
    m = CONTROL.search(s)
    if m:
        raise InputError(f"{option} contains a control character ({printable(m.group())})",
                         f"give {option} as plain text")
    if len(s) > limit:
        raise InputError(f"{option} is {len(s):,} characters long", f"give at most {limit:,}")
    if not s.strip():
        raise InputError(f"{option} is empty", f"give a value, or leave {option} out")
    return s


def no_space(value: str, option: str, what: str) -> str:
    if any(c.isspace() for c in value) or value.startswith("-"):
        raise InputError(f"{option} {printable(value)!r} is not {what}",
                         f"give {what} (no spaces, not starting with -)")
    return value


def dns_subdomain(value: str, option: str) -> str:
    """DNS-1123 subdomain (Secret, PersistentVolumeClaim and StorageClass names)."""
    user_str(value, option)
    if len(value) > 253 or not all(_DNS1123_LABEL.fullmatch(p) for p in value.split(".")):
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes name",
                         "use at most 253 lower-case letters, digits, '-' and '.', starting and ending "
                         "with a letter or digit (DNS-1123), e.g. qwenplan-hf")
    return value


def dns_label(value: str, option: str) -> str:
    """DNS-1123 label (namespaces)."""
    user_str(value, option)
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes namespace name",
                         "use at most 63 lower-case letters, digits and '-', starting and ending with a "
                         "letter or digit (DNS-1123 label), e.g. llm")
    return value


def quantity(value: str, option: str) -> str:
    """A positive Kubernetes quantity with a size suffix (Gi, Ti, G, ...) or none (bytes)."""
    user_str(value, option)
    if not _QUANTITY.fullmatch(value) or not re.search(r"[1-9]", value.rstrip("KMGTPEik")):
        hint = f"{value[:-1]}i or {value[:-1]}" if re.fullmatch(r"[0-9.]+[KMGTPE]B", value) else "e.g. 200Gi"
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes size",
                         f"give a positive number with Ki/Mi/Gi/Ti (powers of 1024) or k/M/G/T: {hint}")
    return value


def host_folder(path: str, option: str) -> str:
    """A host folder to mount: a path (not a bare name), no ':', not a system folder."""
    user_str(path, option)
    if ":" in path:
        raise InputError(f"{option} {printable(path)!r} contains ':'",
                         "give one host folder; the container side is chosen by qwenplan")
    if not path.startswith(("/", "~/", "./", "../")) and path != "~":
        raise InputError(f"{option} {path!r} is not a folder path (a bare name would be a named volume)",
                         f"give an absolute path, e.g. {option} /srv/hf, or ./{path}")
    if path.startswith("/"):
        norm = os.path.normpath(path)
        norm = "/" if norm.startswith("//") and norm.strip("/") == "" else norm
        if norm in _SYSTEM_FOLDERS or norm in _SYSTEM_TREES or any(
                norm.startswith(t + "/") for t in _SYSTEM_TREES):
            raise InputError(f"{option} {path} is a system folder: the engine would write into it as root",
                             "give a folder of its own, e.g. /srv/hf or ~/.cache/huggingface")
    return path


def absolute_plain_path(path: str, option: str) -> str:
    """For systemd's EnvironmentFile=: absolute (a relative one is ignored), no leading `-` (read as
    'optional'), no trailing backslash (a line continuation)."""
    user_str(path, option)
    if not path.startswith("/"):
        raise InputError(f"{option} {path!r} is not an absolute path (systemd would ignore it)",
                         "give it as /path/to/qwen.env")
    if "\\" in path:
        raise InputError(f"{option} {path!r} contains a backslash (systemd would read an escape, or at the "
                         "end join the next line)", "give a plain path")
    return path
