"""A plan document -> the exact argv and environment for its engine version.

Spellings come from profiles/engines.yaml (per setting, per version range), never from code
branches; every flag is then checked against the version's real flag set (profiles/flags/).
The result is an argv list and an env dict — a shell line is only derived, for people.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from qwenplan.planner.engines import get_engine, pick
from qwenplan.planner.errors import InputError
from qwenplan.planner.flags import flag_set

# The order flags appear in: what is served and where first, then capacity, then behaviour.
ORDER = ("served_model_name", "host", "port", "tensor_parallel", "pipeline_parallel", "data_parallel",
         "expert_parallel", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype",
         "gpu_memory_utilization", "mem_fraction_static", "kv_cache_memory_bytes", "enforce_eager", "speculative",
         "mamba_cache_strategy", "expert_cache_size", "disable_vision", "hf_overrides", "reasoning_parser",
         "tool_call_parser", "chat_template_kwargs", "load_format", "skip_tokenizer_init", "gdn_prefill_backend",
         # llama.cpp (llama-server): the GGUF, then placement, cache, threads, behaviour
         "hf_repo", "hf_file", "model_path", "mmproj", "ctx_size", "parallel", "n_gpu_layers", "n_cpu_moe",
         "cache_type_k", "cache_type_v", "flash_attn", "threads", "ubatch_size", "load_mode", "fit",
         "ctx_checkpoints", "cache_ram_mib", "jinja", "reasoning_format", "log_verbosity")


class RenderError(InputError):
    pass


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
                              f"drop it, or plan for a version that has it")
        choices = fs.choices(flag)
        value = inline if eq else (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None)
        if choices and value is not None and value not in choices:
            raise RenderError(f"{engine_id} {version}: {flag} {value!r} is not one of its choices",
                              f"use one of: {', '.join(choices)}")
    return fs.version


def render(plan: dict, extra_args: tuple[str, ...] = ()) -> dict:
    """{'argv', 'env', 'secret_env', 'secret_args', 'shell', 'flags_checked_against'} for a plan document."""
    if plan.get("status") != "ok":
        raise RenderError("this plan is infeasible and has no command", "see its requirements (qwenplan explain)")
    eng_doc, settings = plan["engine"], plan["settings"]
    engine = get_engine(eng_doc["name"])
    version = eng_doc["version"]
    argv = [t.format(model=settings["model"]) for t in engine.entry_argv(version)]
    args: list[str] = []
    for key in ORDER:
        args += spell(engine.id, version, key, settings.get(key), settings)
    args += list(settings.get("extra_args") or ())
    args += list(extra_args)
    checked = check_flags(engine.id, version, args)
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if plan["parallel"].get("gpu_ids") else {}
    gpus = plan["parallel"].get("gpu_uuids") or [str(i) for i in plan["parallel"].get("gpu_ids") or ()]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env.update({k: str(v) for k, v in (settings.get("env") or {}).items()})
    secret_env, secret_args = ["HF_TOKEN"], []
    if engine.raw.get("api_key_env"):
        secret_env.append(engine.raw["api_key_env"])
    elif engine.raw.get("api_key_flag_env"):
        # SGLang reads its key only from --api-key: the launcher adds it from this variable at
        # start, so the key never sits in a plan, a unit file or the shell history.
        secret_args.append({"flag": "--api-key", "env": engine.raw["api_key_flag_env"]})
    full = argv + args
    return {"argv": full, "env": env, "secret_env": secret_env, "secret_args": secret_args,
            "shell": shell_line(full, env), "flags_checked_against": checked}


def shell_line(argv: list[str], env: dict[str, str]) -> str:
    """A copy-pasteable POSIX shell line (JSON arguments single-quoted intact)."""
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join(assigns + [shlex.quote(a) for a in argv])


def with_command(plan_obj, extra_args: tuple[str, ...] = ()):
    """Render a Plan object in place (plan --json and explain show the command)."""
    if plan_obj.status == "ok":
        plan_obj.command = render(plan_obj.to_dict(), extra_args)
    return plan_obj
