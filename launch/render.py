"""A plan document -> the exact argv and environment for its engine version.

Spellings come from profiles/engines.yaml (per setting, per version range), never from code
branches; every flag is then checked against the version's real flag set (profiles/flags/).
The result is an argv list and an env dict — a shell line is only derived, for people.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from qwenplan.planner.engines import get_engine, pick
from qwenplan.planner.errors import InputError
from qwenplan.planner.flags import flag_set
from qwenplan.planner.plan import FLAG_SETTINGS
from qwenplan.planner.versions import in_range


# qwenplan's own option for a planned setting, named when an --extra-arg tries to set it.
OPTION_FOR = {"served_model_name": "--served-name", "host": "--host", "port": "--port",
              "tensor_parallel": "--gpu-ids (or --gpus)", "data_parallel": "--gpu-ids (or --gpus)",
              "pipeline_parallel": "--nodes", "max_model_len": "--context", "max_num_seqs": "--concurrency",
              "kv_cache_dtype": "--kv-dtype", "speculative": "--mtp / --no-mtp", "disable_vision": "--vision"}
# Options whose value is a credential: keys come from the environment or an env file only, so
# they never sit in a plan, a unit file, a process list or the shell history.
SECRET_FLAGS = ("--api-key", "--admin-api-key", "--hf-token")


class RenderError(InputError):
    pass


# qwenplan's own variable: a node's first data-parallel rank, computed by the node's shell when
# the rank itself is read at start (Kubernetes' LWS_WORKER_INDEX, a script's QWENPLAN_NODE_RANK)
DP_START_VAR = "QWENPLAN_DP_START_RANK"


@dataclass(frozen=True)
class Target:
    """Where a command runs. The default: this machine, one node. `head_addr` and `rank_ref` may
    be `${NAME}` words, read from the environment when the service starts."""

    nodes: int = 1
    node_rank: int = 0                 # 0 = the head, the node that serves HTTP
    head_addr: str | None = None
    rank_ref: str | None = None        # spelled in place of node_rank (e.g. ${LWS_WORKER_INDEX})
    container: bool = False
    backend: str = "mp"                # vLLM across nodes: its multiprocessing, or a Ray cluster

    @property
    def role(self) -> str:
        return "head" if self.node_rank == 0 else "worker"


LOCAL = Target()
CONTAINER_HOST = "0.0.0.0"   # policy: in a container the engine listens on every interface; the runtime publishes


@dataclass(frozen=True)
class TargetLaunch:
    """What a target adds to the plan's command: engine words after it, commands before it (Ray),
    or, for a Ray worker, a command in its place."""

    args: tuple[str, ...] = ()
    pre: tuple[tuple[str, ...], ...] = ()
    command: tuple[str, ...] | None = None
    wait_for_nodes: int = 0
    serves_http: bool = True


def _target_entry(engine_id: str, version: str, data: int, backend: str) -> dict:
    """The engines.yaml target_args entry for this version, backend and kind of multi-node plan."""
    engine = get_engine(engine_id)
    section = "multi_node_data_parallel" if data > 1 else "multi_node"
    entries = engine.target_args.get(section)
    if not entries:
        raise RenderError(f"{engine_id} has no multi-node launch qwenplan knows", "plan a single node for it")
    e = next((x for x in entries if in_range(version, x.get("versions"))
              and ("refuse" in x or backend in x.get("backends", ()))), None)
    if e is None:
        raise RenderError(f"{engine.name} has no {backend} backend for a multi-node"
                          + (" data-parallel" if data > 1 else "") + " plan",
                          f"use one of: {', '.join(b for x in entries for b in x.get('backends', ()))}")
    if "refuse" in e:
        raise RenderError(e["refuse"].format(data=data), e["fix"])
    return e


def target_launch(engine_id: str, version: str, parallel: dict, target: Target) -> TargetLaunch:
    """The words a multi-node target adds, spelled by profiles/engines.yaml `target_args` and
    checked against the version's flag file (which must exist: they cannot go unchecked)."""
    if target.nodes < 2:
        return TargetLaunch()
    data = int(parallel.get("data") or 1)
    e = _target_entry(engine_id, version, data, target.backend)
    per_node = data // target.nodes
    rank = target.rank_ref or str(target.node_rank)
    fields = {"nodes": target.nodes, "node_rank": rank, "head_addr": target.head_addr, "ranks_per_node": per_node,
              "dp_start_rank": f"${{{DP_START_VAR}}}" if target.rank_ref else str(target.node_rank * per_node)}
    fill = lambda items: tuple(str(t).format(**fields) for t in items)  # noqa: E731
    if target.role == "worker" and "worker_command" in e:
        return TargetLaunch(command=fill(e["worker_command"]), serves_http=False)
    args = fill(e[target.role] if target.role in e else e["head"])
    if flag_set(engine_id, version) is None:
        raise RenderError(f"there is no flag list on file for {engine_id} {version}, so the flags "
                          f"{', '.join(a for a in args if a.startswith('-'))} cannot be checked",
                          "plan for an engine version in profiles/flags/ (e.g. --engine-version 0.32.0)")
    check_flags(engine_id, version, list(args))
    head = target.role == "head"
    return TargetLaunch(args=args, pre=tuple(fill(c) for c in e.get("head_pre") or ()) if head else (),
                        wait_for_nodes=target.nodes if head and e.get("head_pre") else 0,
                        serves_http=head)


def _fill(template: str, value: Any, settings: dict) -> str:
    fields = {"value": value, "json": json.dumps(value, separators=(",", ":"))}
    if isinstance(value, dict):
        fields.update(value)
        if "num_speculative_tokens" in value:
            fields["draft_tokens"] = value["num_speculative_tokens"] + 1
    fields["ep_size"] = settings.get("tensor_parallel", 1) * settings.get("data_parallel", 1)
    fields["max_num_seqs"] = settings.get("max_num_seqs")
    return template.format(**fields)


def spell(engine_id: str, version: str, key: str, value: Any, settings: dict) -> list[str]:
    """The argv one setting becomes in this engine version ([] when it is the default or n/a)."""
    if value is None:
        return []
    entries = get_engine(engine_id).arg_spellings(key)
    if not entries:
        return []
    e = pick(entries, version)
    if e is None:
        raise RenderError(f"{engine_id} {version} has no spelling for {key}", "pick another --engine-version")
    if "omit_if" in e and value == e["omit_if"]:
        return []
    if isinstance(value, (str, int, float, bool)):
        value = (e.get("values") or {}).get(value, value)
    return [_fill(t, value, settings) for t in e["argv"]]


def _flag_name(arg: str) -> str:
    """'--max_model_len=5' -> '--max-model-len' (the engines' parsers take either spelling)."""
    flag = arg.partition("=")[0]
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def planned_flags(engine_id: str, version: str, settings: dict) -> dict[str, str]:
    """{flag: setting} for every flag that spells a setting this plan decides, in this version:
    the rendered spelling, the parser's aliases for it and its --no- form (rendered or left at
    the engine's default, the setting is the plan's), plus the flags of the plan's workarounds."""
    engine = get_engine(engine_id)
    out: dict[str, str] = {}
    for key in FLAG_SETTINGS:
        if key not in settings:
            continue
        e = pick(engine.arg_spellings(key) or [], version)
        for token in (e["argv"] + list(e.get("aliases") or ())) if e else ():
            if token.startswith("-") and not token.startswith("-{"):
                flag = _flag_name(token)
                out[flag] = key
                if flag.startswith("--"):
                    out["--no-" + flag[2:]] = key
    for token in settings.get("extra_args") or ():
        if token.startswith("-"):
            out.setdefault(_flag_name(token), "workaround")
    return out


def check_extra_args(engine_id: str, version: str, settings: dict, extra_args) -> None:
    """Refuse an --extra-arg that carries a credential or sets what the plan already sets: the
    engine's parser takes the last value, so it would silently override the plan (and what the
    plan says about exposure and memory would no longer be true)."""
    planned = planned_flags(engine_id, version, settings)
    engine = get_engine(engine_id)
    key_env = engine.key_env or "the API key variable"
    for arg in extra_args:
        if not arg.startswith("-"):
            continue
        flag = _flag_name(arg)
        if flag in SECRET_FLAGS:
            raise RenderError(f"--extra-arg {flag} would write a credential into the plan, exported files and the "
                              "process list", f"set {key_env if flag != '--hf-token' else 'HF_TOKEN'} in the "
                              "environment (or the export's --env-file) instead")
        setting = planned.get(flag)
        if setting is None:
            continue
        value = settings.get(setting)
        shown = ("the engine's default" if value is None else
                 json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value))
        what = (f"the plan's {setting} ({shown})" if setting != "workaround"
                else "a workaround the plan applies (see `qwenplan explain`)")
        own = OPTION_FOR.get(setting)
        fix = (f"use qwenplan's {own} instead, so the plan is made for it" if own else
               "qwenplan sizes this from its memory model; drop the extra arg (or pass --variant, --context, "
               "--concurrency to change the plan)")
        raise RenderError(f"--extra-arg {arg} would override {what}", fix)


def check_flags(engine_id: str, version: str, args: list[str]) -> str | None:
    """Refuse flags (and choice values) this version's parser does not accept. Returns the
    version whose flag set was used, or None when none is on file."""
    fs = flag_set(engine_id, version)
    if fs is None:
        return None
    for i, a in enumerate(args):
        if not a.startswith("-") or a == "-":
            continue
        flag, eq, inline = a.partition("=")
        if not fs.accepts(flag):
            raise RenderError(f"{engine_id} {version} does not accept {flag} (checked against {fs.version}'s flags)",
                              "drop it, or plan for a version that has it")
        choices = fs.choices(flag)
        value = inline if eq else (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None)
        if choices and value is not None and value not in choices:
            raise RenderError(f"{engine_id} {version}: {flag} {value!r} is not one of its choices",
                              f"use one of: {', '.join(choices)}")
    return fs.version


def render(plan: dict, extra_args: tuple[str, ...] = (), target: Target = LOCAL) -> dict:
    """{'argv', 'env', 'secret_env', 'secret_args', 'shell', 'flags_checked_against'} for a plan document,
    where `target` runs it (default: this machine, one node)."""
    if plan.get("status") != "ok":
        raise RenderError("this plan is infeasible and has no command", "see its requirements (qwenplan explain)")
    eng_doc, settings = plan["engine"], plan["settings"]
    engine = get_engine(eng_doc["name"])
    version = eng_doc["version"]
    argv = [t.format(model=settings["model"]) for t in engine.entry_argv(version)]
    args: list[str] = []
    left_out = set(tokenizer_settings(engine.id, version)) if settings.get("skip_tokenizer_init") else set()
    here = {**settings, "host": CONTAINER_HOST} if target.container and settings.get("host") else settings
    for key in FLAG_SETTINGS:   # planner/plan.py Settings: every setting, in the order flags appear
        if key not in left_out:
            args += spell(engine.id, version, key, here.get(key), here)
    args += list(settings.get("extra_args") or ())
    check_extra_args(engine.id, version, settings, extra_args)
    args += list(extra_args)
    launch = target_launch(engine.id, version, plan["parallel"], target)
    args += list(launch.args)
    checked = check_flags(engine.id, version, args)
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if plan["parallel"].get("gpu_ids") else {}
    gpus = _visible_devices(plan["parallel"], engine.device_ids(version))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env.update({k: str(v) for k, v in (settings.get("env") or {}).items()})
    secret_env, secret_args = ["HF_TOKEN"], []
    if engine.api_key_env:
        secret_env.append(engine.api_key_env)
    elif engine.api_key_flag_env:
        # SGLang reads its key only from --api-key: the launcher adds it from this variable at
        # start, so the key never sits in a plan, a unit file or the shell history.
        secret_args.append({"flag": "--api-key", "env": engine.api_key_flag_env})
    full = argv + args
    return {"argv": full, "env": env, "secret_env": secret_env, "secret_args": secret_args,
            "shell": shell_line(full, env), "flags_checked_against": checked, "extra_args": list(extra_args)}


def tokenizer_settings(engine_id: str, version: str) -> list[str]:
    """Plan settings a start without a tokenizer (--skip-tokenizer-init) leaves out (profiles/engines.yaml)."""
    rule = get_engine(engine_id).without_tokenizer(version)
    return list(rule["drop"]) if rule else []


def tokenizer_flags(engine_id: str, version: str) -> list[tuple[str, int]]:
    """The same rule as flags, for an argv rendered elsewhere (benchmarks/gpu/runner.py): each
    flag those settings are spelled with in this version, and how many values follow it."""
    out = []
    for key in tokenizer_settings(engine_id, version):
        e = pick(get_engine(engine_id).arg_spellings(key) or [], version)
        items = e["argv"] if e else []
        for i, item in enumerate(items):
            if item.startswith("-"):
                n = 0
                while i + 1 + n < len(items) and not items[i + 1 + n].startswith("-"):
                    n += 1
                out.append((item, n))
    return out


def _visible_devices(parallel: dict, naming: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries: UUIDs, or PCI-order indices for engine versions that parse
    the variable with int() (profiles/engines.yaml device_ids)."""
    if naming == "uuid" and parallel.get("gpu_uuids"):
        return list(parallel["gpu_uuids"])
    return [str(i) for i in parallel.get("gpu_pci_indices") or parallel.get("gpu_ids") or ()]


def shell_line(argv: list[str], env: dict[str, str]) -> str:
    """A copy-pasteable POSIX shell line (JSON arguments single-quoted intact)."""
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join(assigns + [shlex.quote(a) for a in argv])


def with_command(plan_obj, extra_args: tuple[str, ...] = ()):
    """Render a Plan object in place (plan --json and explain show the command)."""
    if plan_obj.status == "ok":
        plan_obj.command = render(plan_obj.to_dict(), extra_args)
    return plan_obj
