"""The flags an engine version accepts, read from that version's own `--help`.

profiles/flags/ENGINE-VERSION.txt holds one flag a line (with its choices where the parser
restricts them), extracted from the full help of the real program (shared/engines/). A flag
that is not listed is not accepted by that version: its parser exits "unrecognized arguments".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .catalog import profiles_dir
from .versions import Version

_OPTION_LINE = re.compile(r"^ {2}(-{1,2}[A-Za-z0-9][^\s,]*)")
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][A-Za-z0-9_.-]*)")
_CHOICES = re.compile(r"\{([^{}]*)\}")


def parse_help(text: str) -> dict[str, tuple[str, ...] | None]:
    """Every option the help lists (aliases and --no- forms too), with its choices or None."""
    out: dict[str, tuple[str, ...] | None] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not _OPTION_LINE.match(line):
            i += 1
            continue
        # an option's head may wrap: "{a,b,\n c}" continues on the next, deeper-indented line
        head = line.strip()
        while head.count("{") > head.count("}") and i + 1 < len(lines):
            i += 1
            head += lines[i].strip()
        head = re.split(r"\s{2,}", head, maxsplit=1)[0]  # drop the description on the same line
        choices = None
        m = _CHOICES.search(head)
        if m:
            choices = tuple(c.strip() for c in m.group(1).split(",") if c.strip())
        for flag in _FLAG.findall(_CHOICES.sub("", head)):
            if flag.upper() == flag and not flag.startswith("--"):
                continue
            out[flag] = choices
        i += 1
    return out


_LLAMA_CHOICES = re.compile(r"\[([A-Za-z0-9_.+-]+(?:\|[A-Za-z0-9_.+-]+)+)\]")
_LLAMA_ALLOWED = re.compile(r"^\s+allowed values: (.+?)\s*$")


def parse_llama_help(text: str) -> dict[str, tuple[str, ...] | None]:
    """llama.cpp's `--help` (common/arg.cpp common_arg::to_string): an option starts at column 0
    with its spellings and value hint, its help is indented 40 columns; choices are the
    '[a|b|c]' of the hint or the help's 'allowed values: a, b, c' line."""
    out: dict[str, tuple[str, ...] | None] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("-"):
            # the help starts at column 40 after padding; a longer head has the line to itself
            head = line[:40] if len(line) > 40 and line[37:40] == "   " else line
            m = _LLAMA_CHOICES.search(head)
            choices = tuple(m.group(1).split("|")) if m else None
            current = _FLAG.findall(_LLAMA_CHOICES.sub("", head))
            for flag in current:
                out[flag] = choices
            continue
        m = _LLAMA_ALLOWED.match(line)
        if m and current:
            for flag in current:
                out[flag] = tuple(v.strip() for v in m.group(1).split(",") if v.strip())
    return out


def render_flag_file(flags: dict[str, tuple[str, ...] | None], header: str) -> str:
    lines = [f"# {header}"]
    for flag in sorted(flags):
        choices = flags[flag]
        lines.append(f"{flag} {{{','.join(choices)}}}" if choices else flag)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FlagSet:
    engine: str
    version: str
    flags: dict

    def accepts(self, flag: str) -> bool:
        return flag in self.flags

    def choices(self, flag: str) -> tuple[str, ...] | None:
        return self.flags.get(flag)


def _read(engine: str, version: str) -> FlagSet | None:
    name = f"flags/{engine}-{version}.txt"
    try:
        text = (profiles_dir() / name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    flags: dict[str, tuple[str, ...] | None] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        flag, _, rest = line.partition(" ")
        flags[flag] = tuple(rest.strip("{}").split(",")) if rest else None
    return FlagSet(engine, version, flags)


def versions_on_file(engine: str) -> list[str]:
    prefix = f"{engine}-"
    names = [p.name for p in (profiles_dir() / "flags").iterdir()]
    out = [n[len(prefix):-4] for n in names if n.startswith(prefix) and n.endswith(".txt")]
    return sorted((v for v in out if v.lstrip("b")[:1].isdigit()), key=Version)


@lru_cache(maxsize=None)
def flag_set(engine: str, version: str) -> FlagSet | None:
    """The flags of this release: its own parser's dump, or that of the nearest earlier release
    on file (a post or patch release maps to its base: patch releases did not change flags in
    any dumped pair, e.g. 0.17.0/0.17.1; a version newer than every file to the newest), or
    None when every file is newer. `FlagSet.version` says which file was used."""
    exact = _read(engine, version)
    if exact:
        return exact
    want = Version(version)
    earlier = [v for v in versions_on_file(engine) if Version(v) <= want]
    return _read(engine, earlier[-1]) if earlier else None


def nearest_note(engine: str, version: str) -> str | None:
    """A sentence when `version` has no flag file of its own: which file stands in for it."""
    fs = flag_set(engine, version)
    if fs is None or fs.version == version:
        return None
    same_minor = Version(fs.version).release[:2] == Version(version).release[:2]
    return (f"{engine} {version} has no flag file: flags are checked against {fs.version}'s "
            + ("(its base release)" if same_minor else
               "(the nearest earlier release, another minor version: `qwenplan doctor` runs the installed "
               "engine's own parser)"))
