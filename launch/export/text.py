"""Text every format shares: comments, YAML, bash words and the command's layout, health checks."""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml
from qwenplan.launch.export.view import EnvRef, Word
from qwenplan.launch.safe_text import CONTROL, printable


def probe_host(host: str) -> str:
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def health_python(url: str, loop: bool) -> str:
    if not loop:
        return f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"
    return ("import time, urllib.request\n"
            f"url = {url!r}\n"
            "while True:\n"
            "    try:\n"
            "        urllib.request.urlopen(url, timeout=5)\n"
            "        break\n"
            "    except Exception:\n"
            "        time.sleep(5)\n")


def comment(lines: list[str]) -> str:
    out = []
    for line in lines:
        for part in str(line).split("\n"):
            out.append(("# " + printable(part)).rstrip())
    return "\n".join(out) + "\n"


# Scalars a YAML 1.2 reader (Go's yaml.v3 in kubectl and docker compose v2) takes for something other
# than a string, which PyYAML (YAML 1.1) would write unquoted: 1e3, 0o17, 0x1F, +1, .5, ...
_YAML12_NOT_STR = re.compile(r"""^(?:
    ~|null|Null|NULL|true|True|TRUE|false|False|FALSE
  | [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+
  | [-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
  | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
)$""", re.X)


class _Dumper(yaml.SafeDumper):
    """safe_dump without anchors/aliases (a repeated probe or volume is written out again), quoting
    every string that a YAML 1.1 or 1.2 reader could take for a number, a boolean or null."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if _YAML12_NOT_STR.match(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    if CONTROL.search(data):       # double quotes escape them all (\e, \x9b, \L, ...): no raw ones
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return yaml.SafeDumper.represent_str(dumper, data)


_Dumper.add_representer(str, _represent_str)


def to_yaml(obj: Any, many: bool = False) -> str:
    kw = dict(Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10**9, allow_unicode=True)
    if many:
        return yaml.dump_all(obj, explicit_start=True, **kw)
    return yaml.dump(obj, **kw)


def sh_word(w: Word, *, required: bool = True) -> str:
    if isinstance(w, EnvRef):
        ref = f"${{{w.name}:?{w.name} is not set}}" if required else f"${{{w.name}}}"
        return (shlex.quote(w.prefix) if w.prefix else "") + f'"{ref}"' + (shlex.quote(w.suffix) if w.suffix else "")
    return shlex.quote(w)


def groups(argv: list[Word]) -> list[list[Word]]:
    """Layout only: the program with its subcommand or module and positional words, then each flag
    with its value. Joining the groups gives back argv unchanged."""
    n = len(argv)
    first = [argv[0]]
    i = 1
    if n > 2 and argv[1] == "-m":
        first += argv[1:3]
        i = 3
    while i < n and not (isinstance(argv[i], str) and argv[i].startswith("-")):
        first.append(argv[i])
        i += 1
    groups = [first]
    while i < n:
        group = [argv[i]]
        if i + 1 < n and not (isinstance(argv[i + 1], str) and argv[i + 1].startswith("-")):
            group.append(argv[i + 1])
        groups.append(group)
        i += len(group)
    return groups


def sh_command(argv: list[Word], indent: str = "  ") -> str:
    return " \\\n".join((indent if i else "") + " ".join(sh_word(w) for w in g)
                          for i, g in enumerate(groups(argv)))


def sh_path(path: str) -> str:
    """A path as one bash word; a leading ~/ is the user's home, the rest is literal."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def sc2016(argv: list[Word], indent: str) -> list[str]:
    """shellcheck flags `$` (SC2016) or a backslash (SC1003) in single quotes as a likely mistake;
    here they are literal text, on purpose."""
    codes = []
    if any(isinstance(w, str) and ("$" in w or "`" in w) for w in argv):
        codes.append("SC2016")
    if any(isinstance(w, str) and "\\" in w for w in argv):
        codes.append("SC1003")
    if codes:
        return [indent + f"# shellcheck disable={','.join(codes)}  # literal $, ` or \\ in single quotes, on purpose"]
    return []
