"""What the engine reported, remembered per GPU model, engine version, variant, KV dtype and TP.

Plain JSON files under the user's state directory (QWENPLAN_STATE_DIR, else
$XDG_STATE_HOME/qwenplan, else ~/.local/state/qwenplan), written atomically; a file that does
not parse is set aside (renamed *.bad) and reported, never a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from qwenplan.planner.sizing import calibration_key

SCHEMA = "qwenplan.calibration/1"


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


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path: Path, problems: list[str]) -> dict | None:
    try:
        d = json.loads(path.read_text())
        if d.get("schema") != SCHEMA or not isinstance(d.get("observations"), list):
            raise ValueError("not a calibration record")
        return d
    except (OSError, ValueError) as e:
        bad = path.with_suffix(f".bad-{int(time.time())}")
        try:
            path.rename(bad)
        except OSError:
            pass
        problems.append(f"calibration file {path.name} was unreadable ({e}); set aside as {bad.name}")
        return None


def record(plan: dict, reported: dict, source: str) -> Path:
    """Add one observation (the plan's prediction beside what the engine reported)."""
    key = plan_key(plan)
    path = store_dir() / f"{key}.json"
    problems: list[str] = []
    d = (_read(path, problems) if path.exists() else None) or {"schema": SCHEMA, "key": key, "observations": []}
    m = plan["memory"]
    d["observations"].append({
        "date": time.strftime("%Y-%m-%d"), "source": source,
        "settings": {k: plan["settings"].get(k) for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                                          "gpu_memory_utilization", "enforce_eager", "speculative")},
        "predicted": {k: m.get(k) for k in ("weights_bytes", "activation_bytes", "non_torch_bytes", "cudagraph_bytes",
                                            "kv_cache_bytes", "kv_cache_tokens")},
        "reported": reported,
    })
    d["observations"] = d["observations"][-20:]
    _write_atomic(path, d)
    return path


def lookup_all() -> tuple[dict[str, dict], list[str]]:
    """{key: latest observation} and the problems met reading the store."""
    out, problems = {}, []
    directory = store_dir()
    if not directory.is_dir():
        return out, problems
    for path in sorted(directory.glob("*.json")):
        d = _read(path, problems)
        if d and d["observations"]:
            out[d["key"]] = d["observations"][-1]
    return out, problems


def clear() -> int:
    n = 0
    directory = store_dir()
    if directory.is_dir():
        for path in directory.iterdir():
            if path.suffix == ".json" or ".bad-" in path.name:
                path.unlink()
                n += 1
    return n


def compare(predicted: dict, reported: dict, tolerance: float = 0.10) -> list[str]:
    """Lines naming each figure that missed by more than the tolerance."""
    pairs = (("weights_bytes", "weights_bytes"), ("activation_bytes", "activation_bytes"),
             ("kv_cache_bytes", "kv_cache_bytes"), ("kv_cache_tokens", "kv_tokens"))
    out = []
    for p_key, r_key in pairs:
        p, r = predicted.get(p_key), reported.get(r_key)
        if p and r and abs(p - r) / r > tolerance:
            out.append(f"{p_key}: predicted {p:,}, the engine reported {r:,} ({(p - r) / r:+.0%})")
    return out
