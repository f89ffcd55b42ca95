"""What the engine reported, remembered per GPU model, engine version, variant, KV dtype and TP.

Plain JSON files under the user's state directory (QWENPLAN_STATE_DIR, else
$XDG_STATE_HOME/qwenplan, else ~/.local/state/qwenplan). The store is untrusted input to every
plan: a file that does not parse, has the wrong shape or holds a value no GPU could report is
set aside (renamed *.bad-TIME) and reported, never a crash. A report far from the prediction on
weights (another checkpoint, or a wrong log) is kept but changes no plan until a second report
agrees. Writers take a lock, so concurrent runs lose no report; a store that cannot be written
is a warning for the caller, never a failure of a running engine.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path

from qwenplan.launch.files import NotARegularFile, read_regular, write_atomic
from qwenplan.planner.hardware import MAX_GPU_MEMORY_BYTES
from qwenplan.planner.sizing import calibration_key

SCHEMA = "qwenplan.calibration/1"
MAX_OBSERVATIONS = 20
MAX_FILE_BYTES = 1 << 20
# policy: a report more than 25 % off the predicted weights is another checkpoint or a wrong
# log (issue 17); two reports agree when their weights are within 2 % (the same checkpoint
# loads the same bytes; the engines log GiB with two decimals).
WEIGHTS_TOLERANCE = 0.25
AGREEMENT = 0.02
# Figures of a report, by kind. Bytes must lie between 0 and the GPU's memory.
_BYTES = ("weights_bytes", "activation_bytes", "non_torch_bytes", "cudagraph_bytes", "cudagraph_estimate_bytes",
          "cudagraph_captured_bytes", "kv_cache_bytes", "requested_bytes", "kv_fit_bytes", "needed_bytes",
          "pre_load_bytes", "mamba_cache_bytes", "intermediate_bytes", "draft_kv_bytes", "available_after_start_bytes")
_COUNTS = ("kv_tokens", "concurrency_tokens", "block_size", "max_model_len_estimate", "mamba_cache_size",
           "max_running_requests", "context_len", "weights_loads", "max_prefill_tokens")
_SIGNED = ("chunked_prefill_size",)     # SGLang logs -1 for chunked prefill off
_REALS = ("max_concurrency", "memory_fraction", "init_seconds", "mem_fraction_static")
_TEXTS = ("engine", "version", "kv_cache_dtype")
_PREDICTED = ("weights_bytes", "activation_bytes", "non_torch_bytes", "cudagraph_bytes", "kv_cache_bytes",
              "kv_cache_tokens")


class BadRecord(ValueError):
    pass


def store_dir() -> Path:
    if os.environ.get("QWENPLAN_STATE_DIR"):
        return Path(os.environ["QWENPLAN_STATE_DIR"]) / "calibration"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "qwenplan" / "calibration"


def plan_key(plan: dict) -> str:
    gpu = (plan["memory"].get("gpus") or [{}])[0].get("name", "unknown")
    s = plan["settings"]
    return calibration_key(gpu, plan["engine"]["name"], plan["engine"]["version"], plan["variant"]["id"],
                           s.get("kv_cache_dtype") or "auto", plan["parallel"]["tensor"])


# --- the shape and the physics of a record ----------------------------------------------------

def _number(v, where: str, *, integer: bool, low: float = 0, high: float = math.inf, low_open: bool = False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise BadRecord(f"{where} is {type(v).__name__}, not a{'n integer' if integer else ' number'}")
    if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
        raise BadRecord(f"{where} = {v!r} is outside what a GPU can report")
    return v


def _check_parts(o, at: str) -> None:
    """The observation's containers and labels: the figure checks below index into them."""
    if not isinstance(o, dict):
        raise BadRecord(f"{at} is {type(o).__name__}, not a mapping")
    for part in ("settings", "predicted", "reported"):
        if not isinstance(o.get(part), dict):
            raise BadRecord(f"{at}.{part} is missing or not a mapping")
    for part in ("date", "source"):
        if not isinstance(o.get(part), str) or len(o[part]) > 200:
            raise BadRecord(f"{at}.{part} is missing or not a short string")


def _gpu_total(o: dict, at: str) -> int:
    """The GPU's memory as the observation states it (or the largest GPU): the ceiling for byte figures."""
    gpu = o.get("gpu") or {}
    if not isinstance(gpu, dict):
        raise BadRecord(f"{at}.gpu is not a mapping")
    total = MAX_GPU_MEMORY_BYTES
    if gpu.get("memory_total_bytes") is not None:
        total = _number(gpu["memory_total_bytes"], f"{at}.gpu.memory_total_bytes", integer=True, low=0,
                        high=MAX_GPU_MEMORY_BYTES, low_open=True)
    return total


def _check_reported_figure(k: str, v, where: str, total: int) -> None:
    """One reported figure, by its kind: only names an engine reports, each within what it can report."""
    if k in _BYTES:
        _number(v, where, integer=True, high=total, low_open=k == "weights_bytes")
    elif k in _COUNTS:
        _number(v, where, integer=True, high=1 << 40)
    elif k in _SIGNED:
        _number(v, where, integer=True, low=-1, high=1 << 40)
    elif k in _REALS:
        _number(v, where, integer=False, high=1 << 40)
    elif k in _TEXTS:
        if not isinstance(v, str) or len(v) > 64:
            raise BadRecord(f"{where} is not a short string")
    else:
        raise BadRecord(f"{where} is not a figure an engine reports")


def _check_reported(rep: dict, at: str, total: int) -> None:
    """Every reported figure, and weights_bytes present: calibration compares plans against it."""
    for k, v in rep.items():
        if v is not None:
            _check_reported_figure(k, v, f"{at}.reported.{k}", total)
    if rep.get("weights_bytes") is None:
        raise BadRecord(f"{at}.reported has no weights_bytes")


def _check_speed(o: dict, at: str) -> None:
    """The measured speeds, when given: plain numbers within reason."""
    speed = o.get("speed", {})
    if not isinstance(speed, dict):
        raise BadRecord(f"{at}.speed is not a mapping")
    for k, v in speed.items():
        _number(v, f"{at}.speed.{k}", integer=False, high=1e6)


def _check_fits(rep: dict, at: str, total: int) -> None:
    """The reported parts together must fit on the GPU they were reported from."""
    used = sum(rep.get(k) or 0 for k in ("weights_bytes", "activation_bytes", "non_torch_bytes", "kv_cache_bytes"))
    if used > total:
        raise BadRecord(f"{at}.reported adds up to {used:,} bytes, more than the GPU's {total:,}")


def _check_predicted(pred: dict, at: str) -> None:
    """The plan's predictions: byte counts, when present."""
    for k, v in pred.items():
        if v is not None:
            _number(v, f"{at}.predicted.{k}", integer=True, high=1 << 50)


def _check_settings(st: dict, at: str) -> None:
    """The settings the engine ran with: the ones calibration reads must have their proper types."""
    for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if st.get(k) is not None:
            _number(st[k], f"{at}.settings.{k}", integer=True, high=1 << 40)
    if st.get("gpu_memory_utilization") is not None:
        _number(st["gpu_memory_utilization"], f"{at}.settings.gpu_memory_utilization", integer=False, high=1)
    if not isinstance(st.get("enforce_eager", False), (bool, type(None))):
        raise BadRecord(f"{at}.settings.enforce_eager is not true or false")
    spec = st.get("speculative")
    if spec is not None and not (isinstance(spec, dict) and isinstance(spec.get("num_speculative_tokens", 0), int)
                                 and not isinstance(spec.get("num_speculative_tokens", 0), bool)):
        raise BadRecord(f"{at}.settings.speculative is not a speculative config")


def check_observation(o, i: int) -> None:
    """Raise BadRecord unless `o` is an observation whose figures a real engine could have logged."""
    at = f"observations[{i}]"
    _check_parts(o, at)
    total = _gpu_total(o, at)
    rep = o["reported"]
    _check_reported(rep, at, total)
    _check_speed(o, at)
    _check_fits(rep, at, total)
    _check_predicted(o["predicted"], at)
    _check_settings(o["settings"], at)


def check_record(d) -> dict:
    if not isinstance(d, dict):
        raise BadRecord(f"the file holds a {type(d).__name__}, not a calibration record")
    if d.get("schema") != SCHEMA:
        raise BadRecord(f"schema is {str(d.get('schema'))[:40]!r}, not {SCHEMA!r}")
    if not isinstance(d.get("key"), str) or not d["key"]:
        raise BadRecord("key is missing or not a string")
    obs = d.get("observations")
    if not isinstance(obs, list) or len(obs) > MAX_OBSERVATIONS:
        raise BadRecord(f"observations is not a list of at most {MAX_OBSERVATIONS}")
    for i, o in enumerate(obs):
        check_observation(o, i)
    return d


def _set_aside(path: Path, why: str, problems: list[str]) -> None:
    bad = path.with_name(f"{path.stem}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.rename(bad)
        where = f"set aside as {bad.name}"
    except OSError:
        where = "left where it is (the store is not writable); it is ignored"
    problems.append(f"calibration file {path.name} is unusable ({why}); {where}")


def _read(path: Path, problems: list[str]) -> dict | None:
    """The record in `path`, or None (and a line in `problems`) when it cannot be trusted."""
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except NotARegularFile as e:
        problems.append(f"calibration entry {path.name} {e}; ignored")
        return None
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.append(f"calibration file {path.name} cannot be read ({e.strerror or type(e).__name__}); ignored")
        return None
    try:
        return check_record(json.loads(data))
    except (ValueError, RecursionError) as e:       # BadRecord and JSON errors alike
        _set_aside(path, str(e)[:200], problems)
        return None


# --- which report may change a plan ------------------------------------------------------------

def _weights_miss(o: dict) -> float | None:
    p, r = (o["predicted"].get("weights_bytes"), o["reported"]["weights_bytes"])
    return abs(r - p) / p if p else None


def trusted(observations: list[dict]) -> tuple[dict | None, dict | None]:
    """(the latest report plans may use, the latest one held back). A report within 25 % of its
    own prediction on weights is used; one further off only once an earlier report agrees."""
    held = None
    for i in range(len(observations) - 1, -1, -1):
        o = observations[i]
        miss = _weights_miss(o)
        w = o["reported"]["weights_bytes"]
        if (miss is not None and miss <= WEIGHTS_TOLERANCE) or any(
                abs(e["reported"]["weights_bytes"] - w) <= AGREEMENT * w for e in observations[:i]):
            return o, held
        held = held or o
    return None, held


def records() -> tuple[list[tuple[Path, dict]], list[str]]:
    """Every record of the store that can be trusted, with its file; and the problems met."""
    out, problems = [], []
    directory = store_dir()
    try:
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    except OSError as e:
        return out, [f"the calibration store {directory} cannot be read ({e.strerror}); plans use the formula"]
    for path in paths:
        d = _read(path, problems)
        if d and d["observations"]:
            out.append((path, d))
    return out, problems


def lookup_all() -> tuple[dict[str, dict], list[str]]:
    """{key: the report plans may use, with its 'file'} and the problems met reading the store."""
    out = {}
    found, problems = records()
    for path, d in found:
        use, held = trusted(d["observations"])
        if held is not None:
            miss = _weights_miss(held)
            off = f"{miss:.0%} off the predicted weights" if miss is not None else "without a prediction"
            problems.append(f"the engine report of {held['date']} in {path} is {off} (another checkpoint or a "
                            "wrong log?); kept, but no plan uses it until a second report agrees")
        if use is not None:
            out[d["key"]] = dict(use, file=str(path))
    return out, problems


# --- writing ----------------------------------------------------------------------------------

class _Lock:
    """An exclusive lock on the store while a record is read, extended and replaced."""

    def __init__(self, directory: Path):
        self.path = directory / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def record(plan: dict, reported: dict, source: str, speed: dict | None = None) -> Path:
    """Add one observation (the plan's prediction beside what the engine reported, and the smoke
    test's speed beside the predicted one) for the GPU the plan was made for. OSError when the
    store cannot be written (the caller warns)."""
    key = plan_key(plan)
    directory = store_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    m = plan["memory"]
    gpu = (m.get("gpus") or [{}])[0]
    uuids = [g.get("uuid") for g in (plan.get("hardware") or {}).get("gpus") or [] if g.get("uuid")]
    obs = {
        "date": time.strftime("%Y-%m-%d"), "source": source,
        "gpu": {"name": gpu.get("name"), "memory_total_bytes": gpu.get("total_bytes"), "uuids": uuids},
        "settings": {k: plan["settings"].get(k) for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                                          "gpu_memory_utilization", "enforce_eager", "speculative")},
        "predicted": {k: m.get(k) for k in _PREDICTED},
        "reported": reported,
    }
    if speed:
        obs["speed"] = speed
    with _Lock(directory):
        problems: list[str] = []
        d = (_read(path, problems) if path.exists() else None) or {"schema": SCHEMA, "key": key, "observations": []}
        d["observations"] = (d["observations"] + [obs])[-MAX_OBSERVATIONS:]
        write_atomic(path, json.dumps(d, indent=2), mode=0o600)
    return path


def clear() -> tuple[int, list[str]]:
    """Remove the store's records and set-aside files; (how many, what was left and why)."""
    n, left = 0, []
    directory = store_dir()
    if not directory.is_dir():
        return 0, left
    for path in directory.iterdir():
        if not (path.suffix == ".json" or ".bad-" in path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            left.append(f"{path.name} is a folder; left alone")
            continue
        try:
            path.unlink()
            n += 1
        except OSError as e:
            left.append(f"{path.name}: {e.strerror}")
    return n, left


def compare(predicted: dict, reported: dict, tolerance: float = 0.10) -> list[str]:
    """Lines naming each figure that missed by more than the tolerance."""
    pairs = (("weights_bytes", "weights_bytes"), ("activation_bytes", "activation_bytes"),
             ("kv_cache_bytes", "kv_cache_bytes"), ("kv_cache_tokens", "kv_tokens"))
    # An SGLang plan's kv_cache_bytes is its whole pool (KV + DeltaNet states); SGLang reports the
    # KV tensors apart ('KV Cache is allocated'): the plan's own KV part is the figure to compare.
    sgl_kv = (predicted.get("sglang") or {}).get("kv_bytes")
    out = []
    for p_key, r_key in pairs:
        p, r = predicted.get(p_key), reported.get(r_key)
        if p_key == "kv_cache_bytes" and sgl_kv is not None:
            p = sgl_kv
        if p and r and abs(p - r) / r > tolerance:
            out.append(f"{p_key}: predicted {p:,}, the engine reported {r:,} ({(p - r) / r:+.0%})")
    return out
