"""Reading a failed start: which known failure it was, the fix, and a safer plan to retry with.

The signatures are data (profiles/failures.yaml). Where the engine states the number that would
have worked — vLLM's "the estimated maximum model length is 169184", "exceeds available Mamba
cache blocks (135)" — the next attempt uses that number instead of halving blindly.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

CONTEXT_STEP = 1024          # a context from the log is rounded down to this
MIN_CONTEXT = 4096           # below this a "safer" plan is no longer worth serving
MIN_UTILIZATION = 0.30
MAX_UTILIZATION = 0.97
MAX_RETRIES = 4              # however many --retry asks for, no more relaunches than this
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Signature:
    id: str
    engine: str
    match: re.Pattern
    explain: str
    fix: str
    adjust: tuple[dict, ...]
    source: str
    after: re.Pattern | None = None
    not_after: re.Pattern | None = None


@dataclass
class Diagnosis:
    id: str
    explain: str                 # one line, figures filled in
    fix: str
    line: str                    # the log line that matched
    values: dict[str, Any]       # figures read from the log
    adjust: tuple[dict, ...]
    source: str

    @property
    def message(self) -> str:
        """Problem and fix, one line."""
        return f"{self.explain}: {self.fix}"

    @property
    def has_safer_plan(self) -> bool:
        return bool(self.adjust)


@lru_cache(maxsize=None)
def signatures() -> tuple[Signature, ...]:
    from qwenplan.planner.catalog import load_profile

    out = []
    for d in load_profile("failures.yaml")["failures"]:
        out.append(Signature(
            id=d["id"], engine=d.get("engine", "any"), match=re.compile(d["match"]), explain=d["explain"],
            fix=d["fix"], adjust=tuple(d.get("adjust") or ()), source=d["source"],
            after=re.compile(d["after"]) if d.get("after") else None,
            not_after=re.compile(d["not_after"]) if d.get("not_after") else None))
    return tuple(out)


def _value(text: str) -> Any:
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+\.\d*", text):
        return float(text)
    return text.strip()


class _Fill(dict):
    def __missing__(self, key):
        return "?"


def diagnose(lines) -> Diagnosis | None:
    """The first known signature (in the file's order) that the log shows, or None."""
    lines = [_ANSI.sub("", str(x)).rstrip("\n") for x in lines]
    for sig in signatures():
        for i, line in enumerate(lines):
            m = sig.match.search(line)
            if not m:
                continue
            before = lines[:i]
            if sig.after and not any(sig.after.search(x) for x in before):
                continue
            if sig.not_after and any(sig.not_after.search(x) for x in before):
                continue
            values = {k: _value(v) for k, v in m.groupdict().items() if v is not None}
            return Diagnosis(id=sig.id, explain=sig.explain.format_map(_Fill(values)),
                             fix=sig.fix.format_map(_Fill(values)), line=line.strip(), values=values,
                             adjust=sig.adjust, source=sig.source)
    return None


# --- the safer plan --------------------------------------------------------------------------

# The plan options a failure rule may change (profiles/failures.yaml `adjust:`), each with the
# setting of the served plan its current value is read from. The planner makes the safer plan.
OPTIONS = {"context": "max_model_len", "concurrency": "max_num_seqs", "eager": "enforce_eager",
           "utilization": "gpu_memory_utilization", "mtp": "speculative", "parsers": "reasoning_parser"}
_LOGGED = {"context": "max_model_len", "concurrency": "max_num_seqs"}   # the log's name of the figure


class _No(Exception):
    """This adjustment cannot be made (no figure in the log, nothing lower left)."""


def served_options(plan: dict) -> dict:
    """The adjustable options as the served plan has them. SGLang's plans leave
    gpu_memory_utilization to the engine: their fraction is the plan's budget over the GPU."""
    s, m = plan["settings"], plan.get("memory") or {}
    fraction = s.get("gpu_memory_utilization")
    if fraction is None and m.get("per_gpu_budget_bytes"):
        fraction = round(m["per_gpu_budget_bytes"] / (m["per_gpu_budget_bytes"] + (m.get("headroom_bytes") or 0)), 2)
    return {"context": s.get("max_model_len"), "concurrency": s.get("max_num_seqs"),
            "eager": bool(s.get("enforce_eager")), "utilization": fraction, "mtp": bool(s.get("speculative")),
            "parsers": bool(s.get("reasoning_parser") or s.get("tool_call_parser"))}


def _from_log(key: str, current, values: dict) -> Any:
    if key == "context":
        if "max_model_len" not in values:
            raise _No
        v = int(values["max_model_len"]) // CONTEXT_STEP * CONTEXT_STEP
        if v < MIN_CONTEXT:
            raise _No
    elif key == "utilization":
        if "free_gib" not in values or not values.get("total_gib"):
            raise _No
        v = math.floor(float(values["free_gib"]) / float(values["total_gib"]) * 100) / 100 - 0.01
        v = round(v, 2)
        if v < MIN_UTILIZATION:
            raise _No
    elif _LOGGED.get(key, key) in values:
        v = values[_LOGGED.get(key, key)]
        if isinstance(v, int) and v < 1:
            raise _No
    else:
        raise _No
    if isinstance(current, (int, float)) and not isinstance(current, bool) and v >= current:
        raise _No                    # not smaller than what already failed
    return v


def _half(key: str, current) -> Any:
    if not isinstance(current, int) or isinstance(current, bool):
        raise _No                    # the engine's default is not known here
    if key == "context":
        v = current // 2 // CONTEXT_STEP * CONTEXT_STEP
        if v < MIN_CONTEXT:
            raise _No
        return v
    v = max(1, current // 2)
    if v >= current:
        raise _No
    return v


def _delta(key: str, current, delta: float) -> Any:
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        raise _No                    # nothing to lower from (a llama.cpp plan has no fraction)
    if key == "utilization":
        v = round(current + delta, 2)
        if not MIN_UTILIZATION <= v <= MAX_UTILIZATION:
            raise _No
        return v
    return type(current)(current + delta)


def _apply(key: str, rule, current, values: dict) -> Any:
    if rule == "from_log":
        return _from_log(key, current, values)
    if rule == "half":
        return _half(key, current)
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return _delta(key, current, rule)
    return rule                      # true / false: set


def safer_options(served: dict, diagnosis: Diagnosis | None) -> list[dict]:
    """The rule's alternatives as changed plan options ({"context": 168960}), in the rule's order;
    those that cannot be made or change nothing are left out."""
    out = []
    for alternative in diagnosis.adjust if diagnosis else ():
        try:
            change = {k: _apply(k, rule, served.get(k), diagnosis.values) for k, rule in alternative.items()}
        except _No:
            continue
        change = {k: v for k, v in change.items() if v != served.get(k)}
        if change:
            out.append(change)
    return out


def safer_plan(plan: dict, diagnosis: Diagnosis | None, replan: Callable[[dict, str], dict | None],
               tried: list[dict] = ()) -> dict | None:
    """The planner's plan for the first alternative of the rule that it can make and that was not
    tried: `replan(options, because)` plans with the served options changed (None: nothing fits)."""
    served = served_options(plan)
    for change in safer_options(served, diagnosis):
        because = (f"the last start failed ({diagnosis.id}: {diagnosis.explain}); "
                   f"retried with {describe_change(served, change)}")
        new = replan({**served, **change}, because)
        if new is not None and new["settings"] not in tried:
            return new
    return None


def describe_change(old: dict, new: dict) -> str:
    """'max_model_len 262144 -> 168960, enforce_eager False -> True' for people."""
    def show(v):
        return "off" if v is None else json.dumps(v) if isinstance(v, dict) else str(v)
    return ", ".join(f"{k} {show(old.get(k))} -> {show(new[k])}" for k in new if old.get(k) != new[k])


# --- the attempt loop ------------------------------------------------------------------------


@dataclass
class Attempt:
    number: int
    plan: dict                             # the plan document served in this attempt
    log_path: Path
    ok: bool
    stage: str
    failure: str | None
    message: str
    exit_code: int | None
    diagnosis: Diagnosis | None = None
    next_plan: dict | None = None          # the safer plan offered (and served, when retrying)
    seconds: float = 0.0

    @property
    def settings(self) -> dict:
        return self.plan["settings"]

    @property
    def next_settings(self) -> dict | None:
        return self.next_plan["settings"] if self.next_plan else None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("plan", "next_plan", "diagnosis")}
        d.update(log_path=str(self.log_path), settings=self.settings, next_settings=self.next_settings)
        if self.diagnosis:
            d["diagnosis"] = {k: v for k, v in asdict(self.diagnosis).items() if k != "adjust"}
        return d


@dataclass
class Outcome:
    engine: Any                  # the running Engine when the last attempt is ready, else the stopped one
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].ok

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]


def run_with_retries(make_command: Callable[[dict], tuple[list[str], dict]], plan: dict, *,
                     replan: Callable[[dict, str], dict | None], retries: int = 2, log_dir: str | Path,
                     on_attempt: Callable[[Attempt], None] | None = None, launch: Callable | None = None,
                     **launch_kwargs) -> Outcome:
    """Serve `plan`; on a known failure the planner makes the safer plan, which is served next (at
    most `retries` times).

    `make_command(plan) -> (argv, env)` renders a plan document; `replan(options, because)` is
    the planner with the served plan's options changed as the failure rule says (`safer_plan`).
    Each attempt logs to `log_dir/attempt-N.log`; `log_dir/attempts.json` sums them up. With
    retries=0 the safer plan is still made and offered in the attempt's `next_plan`.
    """
    if launch is None:
        from qwenplan.launch.runner import launch
    log_dir = Path(log_dir)
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    retries = max(0, min(retries, MAX_RETRIES))
    tried: list[dict] = []
    outcome = Outcome(engine=None)
    current = plan
    for n in range(1, retries + 2):
        argv, env = make_command(current)
        log_path = log_dir / f"attempt-{n}.log"
        t0 = time.monotonic()
        engine = launch(argv, env, log_path=log_path, **launch_kwargs)
        res = engine.result
        attempt = Attempt(number=n, plan=current, log_path=log_path, ok=res.ok, stage=res.stage,
                          failure=res.failure, message=res.message, exit_code=res.exit_code,
                          seconds=round(time.monotonic() - t0, 1))
        tried.append(current["settings"])
        if not res.ok and res.failure != "interrupted":
            attempt.diagnosis = diagnose(res.lines)
            attempt.next_plan = safer_plan(current, attempt.diagnosis, replan, tried)
        outcome.engine = engine
        outcome.attempts.append(attempt)
        _note(attempt)
        if on_attempt:
            on_attempt(attempt)
        if res.ok or attempt.next_plan is None or n > retries:
            break
        current = attempt.next_plan
    (log_dir / "attempts.json").write_text(json.dumps([a.to_dict() for a in outcome.attempts], indent=2, default=str))
    return outcome


def _note(attempt: Attempt) -> None:
    """The outcome at the end of the attempt's own log, so each log file stands alone."""
    lines = [f"# qwenplan: attempt {attempt.number}: {'ready' if attempt.ok else 'failed'}: {attempt.message}"]
    if attempt.diagnosis:
        lines.append(f"# qwenplan: diagnosis {attempt.diagnosis.id}: {attempt.diagnosis.message}")
    if attempt.next_plan:
        lines.append(f"# qwenplan: safer plan: {describe_change(attempt.settings, attempt.next_settings)}")
    with open(attempt.log_path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
