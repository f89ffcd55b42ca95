"""Engines (profiles/engines.yaml): versions, install, defaults and flag spellings per version."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .catalog import load_profile
from .errors import InputError
from .flags import nearest_note
from .versions import Version, in_range

ENGINE_IDS = ("vllm", "vllm-offload", "sglang")


@dataclass(frozen=True)
class Engine:
    id: str
    raw: dict

    def __getattr__(self, key):
        try:
            return self.raw[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def base(self) -> "Engine | None":
        return get_engine(self.raw["fork_of"]) if self.raw.get("fork_of") else None

    def arg_spellings(self, setting: str) -> list[dict] | None:
        """The spellings of one plan setting; a fork inherits those it does not redefine."""
        args = self.raw.get("args", {})
        if setting in args:
            return args[setting]
        if args.get("inherit"):
            return get_engine(args["inherit"]).arg_spellings(setting)
        return None

    def parser(self, key: str) -> dict:
        parsers = self.raw.get("parsers", {})
        if key in parsers:
            return parsers[key]
        return get_engine(parsers["inherit"]).parser(key)

    def without_tokenizer(self, version: str) -> dict | None:
        """What a start without tokenizer files (--skip-tokenizer-init) leaves out: the rule of
        `without_tokenizer` for this version ({drop, reason, source}); a fork uses its base's."""
        rules = self.raw.get("without_tokenizer")
        if rules is None and self.base is not None:
            return self.base.without_tokenizer(version)
        return pick(rules or [], version)

    def default(self, key: str, version: str):
        """(value, source) of a version-dependent default."""
        entry = self.raw.get("defaults", {}).get(key)
        if isinstance(entry, list):
            entry = pick(entry, version)
        if not entry:
            return None, None
        return entry.get("value"), entry.get("source")

    def install_command(self, version: str) -> str:
        cmd = self.raw["install"].format(version=version)
        for step in self.raw.get("post_install") or ():
            if in_range(version, step["versions"]):
                cmd += f" && {step['command']}"
        return cmd

    def image(self, version: str) -> str | None:
        tpl = self.raw.get("image")
        return tpl.format(version=version) if tpl else None

    def runtime(self, version: str) -> dict | None:
        return pick(self.raw.get("runtime") or [], version)

    def min_compute_capability(self, version: str) -> tuple[str, str] | None:
        e = pick(self.raw.get("min_compute_capability") or [], version)
        return (e["value"], e["source"]) if e else None

    def device_ids(self, version: str) -> str:
        """How CUDA_VISIBLE_DEVICES names GPUs for this version: 'uuid' or 'index'."""
        e = pick(self.raw.get("device_ids") or [], version)
        return e["value"] if e else "uuid"

    def entry_argv(self, version: str) -> list[str]:
        e = pick(self.raw["entry"], version)
        if not e:
            raise InputError(f"{self.name} {version} has no known entry point", "pick a newer --engine-version")
        return list(e["argv"])


def pick(entries: list[dict], version: str) -> dict | None:
    """The first entry whose `versions` range holds this version (no range: every version)."""
    for e in entries:
        if in_range(version, e.get("versions")):
            return e
    return None


@lru_cache(maxsize=None)
def engines() -> dict[str, Engine]:
    return {k: Engine(k, v) for k, v in load_profile("engines.yaml")["engines"].items()}


def get_engine(engine_id: str) -> Engine:
    try:
        return engines()[engine_id]
    except KeyError:
        raise InputError(f"unknown engine {engine_id!r}", f"use one of: auto, {', '.join(engines())}") from None


def workarounds() -> list[dict]:
    return load_profile("engines.yaml").get("workarounds") or []


def check_version(engine: Engine, version: str) -> list[str]:
    """Refuse versions that cannot serve the model; warn about ones newer than known.
    Returns warnings."""
    v = Version(version)   # raises a clear InputError on a malformed string
    first = engine.supports_model_from
    if v < Version(first):
        newest = engine.default_version
        raise InputError(
            f"{engine.name} {version} cannot serve Qwen3.6-35B-A3B: support starts at {first}",
            f"upgrade: {engine.install_command(newest)}  (or plan for it with --engine-version {newest})")
    warnings = []
    if v > Version(engine.newest_known):
        warnings.append(f"{engine.name} {version} is newer than the newest release qwenplan knows "
                        f"({engine.newest_known})")
    elif version not in engine.versions and not v.text.count("+"):
        warnings.append(f"{engine.name} {version} is not a release qwenplan knows")
    note = nearest_note(engine.id, version)
    if note:
        warnings.append(note)
    rec = engine.raw.get("recommended_from")
    if rec and v < Version(rec):
        warnings.append(f"{engine.name} {version} works but {rec}+ is recommended ({engine.recommended_source})")
    return warnings
