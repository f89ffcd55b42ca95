"""Engines (profiles/engines.yaml): versions, install, defaults and flag spellings per version."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache

from .catalog import load_profile, profiles_dir
from .errors import InputError
from .flags import nearest_note
from .plan import FLAG_SETTINGS, SETTING_NAMES
from .versions import Version, in_range

ENGINE_IDS = ("vllm", "vllm-offload", "sglang")


@dataclass(frozen=True, eq=False)
class Engine:
    """One engine of profiles/engines.yaml. Every key the file may give is a field here: an
    unknown key, or an `args:` setting that is not a planner/plan.py Settings field, fails at load."""

    id: str
    name: str
    package: str
    supports_model_from: str
    supports_source: str
    default_version: str
    newest_known: str
    versions: tuple[str, ...]
    versions_source: str
    install: str
    install_source: str
    entry: tuple[dict, ...]
    args: dict = field(default_factory=dict)          # setting -> spellings per version ({inherit: engine})
    parsers: dict = field(default_factory=dict)       # reasoning/tool-call parsers, speculative method
    defaults: dict = field(default_factory=dict)      # version-dependent defaults, each with a source
    recommended_from: str | None = None
    recommended_source: str | None = None
    post_install: tuple[dict, ...] = ()
    image_template: str | None = None    # YAML `image`, {version} filled in by image()
    image_source: str | None = None
    image_cpu: str | None = None
    image_entrypoint: tuple[str, ...] | None = None
    base_image: str | None = None
    base_image_source: str | None = None
    runtimes: tuple[dict, ...] = ()                 # YAML `runtime`, per version range
    min_compute_capabilities: tuple[dict, ...] = ()  # YAML `min_compute_capability`
    fails_on: tuple[dict, ...] = ()
    device_id_rules: tuple[dict, ...] = ()          # YAML `device_ids`
    api_key_env: str | None = None
    api_key_flag_env: str | None = None   # an engine that reads its key only from --api-key (SGLang)
    api_key_source: str | None = None
    without_tokenizer_rules: tuple[dict, ...] | None = None   # YAML `without_tokenizer`
    fork_of: str | None = None
    branch: str | None = None
    expert_cache: dict | None = None       # the expert-offload fork's cache facts
    health_path: str | None = None
    target_args: dict = field(default_factory=dict)   # multi-node launch words per backend (launch/render.py Target)
    raw: dict = field(default_factory=dict, repr=False)   # the YAML as read, for launch/export.py

    @property
    def key_env(self) -> str | None:
        """The variable the API key comes from (as an env var, or passed as --api-key at start)."""
        return self.api_key_env or self.api_key_flag_env

    @property
    def base(self) -> "Engine | None":
        return get_engine(self.fork_of) if self.fork_of else None

    def arg_spellings(self, setting: str) -> list[dict] | None:
        """The spellings of one plan setting; a fork inherits those it does not redefine."""
        args = self.args
        if setting in args:
            return args[setting]
        if args.get("inherit"):
            return get_engine(args["inherit"]).arg_spellings(setting)
        return None

    def parser(self, key: str) -> dict:
        parsers = self.parsers
        if key in parsers:
            return parsers[key]
        return get_engine(parsers["inherit"]).parser(key)

    def without_tokenizer(self, version: str) -> dict | None:
        """What a start without tokenizer files (--skip-tokenizer-init) leaves out: the rule of
        `without_tokenizer` for this version ({drop, reason, source}); a fork uses its base's."""
        rules = self.without_tokenizer_rules
        if rules is None and self.base is not None:
            return self.base.without_tokenizer(version)
        return pick(rules or [], version)

    def default(self, key: str, version: str):
        """(value, source) of a version-dependent default."""
        entry = self.defaults.get(key)
        if isinstance(entry, list):
            entry = pick(entry, version)
        if not entry:
            return None, None
        return entry.get("value"), entry.get("source")

    def install_command(self, version: str) -> str:
        cmd = self.install.format(version=version)
        for step in self.post_install:
            if in_range(version, step["versions"]):
                cmd += f" && {step['command']}"
        return cmd

    def image(self, version: str) -> str | None:
        return self.image_template.format(version=version) if self.image_template else None

    def runtime(self, version: str) -> dict | None:
        return pick(self.runtimes, version)

    def min_compute_capability(self, version: str) -> tuple[str, str] | None:
        e = pick(self.min_compute_capabilities, version)
        return (e["value"], e["source"]) if e else None

    def device_ids(self, version: str) -> str:
        """How CUDA_VISIBLE_DEVICES names GPUs for this version: 'uuid' or 'index'."""
        e = pick(self.device_id_rules, version)
        return e["value"] if e else "uuid"

    def entry_argv(self, version: str) -> list[str]:
        e = pick(self.entry, version)
        if not e:
            raise InputError(f"{self.name} {version} has no known entry point", "pick a newer --engine-version")
        return list(e["argv"])


def pick(entries: list[dict], version: str) -> dict | None:
    """The first entry whose `versions` range holds this version (no range: every version)."""
    for e in entries:
        if in_range(version, e.get("versions")):
            return e
    return None


# YAML keys whose field is named apart from the method that reads them for one version.
_RENAMED = {"image": "image_template", "runtime": "runtimes", "min_compute_capability": "min_compute_capabilities",
            "device_ids": "device_id_rules", "without_tokenizer": "without_tokenizer_rules"}
_TUPLES = {f.name for f in fields(Engine) if str(f.type).startswith("tuple")}
_ENGINE_KEYS = {_RENAMED.get(k, k) for k in {f.name for f in fields(Engine)} - {"id", "raw"}} | set(_RENAMED)
_ENGINE_KEYS -= set(_RENAMED.values())


class ProfileError(InputError):
    """profiles/engines.yaml names something the code does not know: a typo would otherwise be
    silently ignored (a setting never rendered, a workaround never applied)."""


def _engine(engine_id: str, d: dict) -> Engine:
    unknown = set(d) - _ENGINE_KEYS
    if unknown:
        raise ProfileError(f"profiles/engines.yaml: engine {engine_id} has unknown key(s) {', '.join(sorted(unknown))}",
                           f"use the fields of planner/engines.py Engine ({', '.join(sorted(_ENGINE_KEYS))})")
    not_settings = set(d.get("args") or {}) - {"inherit"} - set(FLAG_SETTINGS)
    if not_settings:
        raise ProfileError(f"profiles/engines.yaml: {engine_id} args spell {', '.join(sorted(not_settings))}, "
                           "which no plan sets", "add the setting to planner/plan.py Settings, or drop the entry")
    values = {_RENAMED.get(k, k): v for k, v in d.items()}
    values = {k: (tuple(v) if k in _TUPLES and v is not None else v) for k, v in values.items()}
    return Engine(id=engine_id, raw=d, **values)


def _check_workarounds(entries: list[dict]) -> list[dict]:
    for w in entries:
        unknown = set(w.get("set") or {}) - set(SETTING_NAMES)
        if unknown:
            raise ProfileError(f"profiles/engines.yaml: workaround {w.get('id')} sets {', '.join(sorted(unknown))}, "
                               "which is not a plan setting", "name a field of planner/plan.py Settings")
    return entries


def engines() -> dict[str, Engine]:
    return _engines(profiles_dir())


@lru_cache(maxsize=4)
def _engines(_root) -> dict[str, Engine]:
    doc = load_profile("engines.yaml")
    _check_workarounds(doc.get("workarounds") or [])
    return {k: _engine(k, v) for k, v in doc["engines"].items()}


def get_engine(engine_id: str) -> Engine:
    try:
        return engines()[engine_id]
    except KeyError:
        raise InputError(f"unknown engine {engine_id!r}", f"use one of: auto, {', '.join(engines())}") from None


def workarounds() -> list[dict]:
    engines()   # checks them
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
    rec = engine.recommended_from
    if rec and v < Version(rec):
        warnings.append(f"{engine.name} {version} works but {rec}+ is recommended ({engine.recommended_source})")
    return warnings
