"""The settings have one name each (planner/plan.py Settings), and profiles/ is the only place an
engine release's spelling lives: a new release that renames a flag is one flag file and one
engines.yaml entry, with no code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwenplan.planner import catalog
from qwenplan.planner.engines import ProfileError, engines, workarounds
from qwenplan.planner.plan import FLAG_SETTINGS, SETTING_NAMES

PROFILES = Path(catalog.profiles_dir())


def test_every_engine_spelling_and_workaround_names_a_setting():
    doc = yaml.safe_load((PROFILES / "engines.yaml").read_text())
    for eid, eng in doc["engines"].items():
        spelled = set(eng.get("args") or {}) - {"inherit"}
        assert spelled <= set(FLAG_SETTINGS), (eid, spelled - set(FLAG_SETTINGS))
    for w in doc["workarounds"]:
        assert set(w.get("set") or {}) <= set(SETTING_NAMES), w["id"]
    # and what is loaded is what the file says
    assert set(engines()) == set(doc["engines"]) and len(workarounds()) == len(doc["workarounds"])


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(PROFILES, root, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    return root


def _edit_engines(root: Path, edit) -> None:
    doc = yaml.safe_load((root / "engines.yaml").read_text())
    edit(doc)
    (root / "engines.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["engines"]["vllm"]["args"].update(max_num_seq=[{"argv": ["--max-num-seqs", "{value}"]}]),
     "max_num_seq"),
    (lambda d: d["workarounds"][0].update(set={"enforce_eagr": True}), "enforce_eagr"),
    (lambda d: d["engines"]["sglang"].update(defualts={}), "defualts"),
])
def test_a_misspelled_profile_key_fails_at_load(tmp_path, monkeypatch, edit, named):
    """Bug: a typo in engines.yaml was silently ignored (a flag never rendered, a workaround that
    changed nothing): loading now names the key."""
    root = _copy(tmp_path)
    _edit_engines(root, edit)
    monkeypatch.setenv(catalog.PROFILES_ENV, str(root))
    with pytest.raises(ProfileError, match=named):
        engines()


def _plan(root: Path, *args: str) -> tuple[int, dict, str]:
    env = {**os.environ, catalog.PROFILES_ENV: str(root), "XDG_CACHE_HOME": str(root.parent / "cache")}
    r = subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", "plan", "--json", "--gpu", "H100",
                        "--engine", "vllm", "--no-calibration", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else {}), r.stderr


def test_a_release_that_renames_a_flag_is_one_flag_file_and_one_entry(tmp_path):
    """A fake vLLM 0.99.0 spells --max-num-seqs as --max-sequences: its flag file and one
    spelling entry in engines.yaml make plans for it render the new flag, with no code change."""
    root = _copy(tmp_path)
    flags = (root / "flags" / "vllm-0.32.0.txt").read_text().splitlines()
    assert "--max-num-seqs" in flags
    (root / "flags" / "vllm-0.99.0.txt").write_text(
        "\n".join("--max-sequences" if f == "--max-num-seqs" else f for f in flags) + "\n")

    # The flag file alone: the old spelling is refused for 0.99.0, by the new file.
    rc, _, err = _plan(root, "--engine-version", "0.99.0")
    assert rc != 0 and "does not accept --max-num-seqs" in err and "0.99.0" in err

    _edit_engines(root, lambda d: d["engines"]["vllm"]["args"]["max_num_seqs"].insert(
        0, {"versions": ">=0.99.0", "argv": ["--max-sequences", "{value}"], "source": "a fake release (test)"}))
    rc, new, err = _plan(root, "--engine-version", "0.99.0")
    assert rc == 0, err
    argv = new["command"]["argv"]
    assert new["engine"]["version"] == "0.99.0" and new["command"]["flags_checked_against"] == "0.99.0"
    assert argv[argv.index("--max-sequences") + 1] == str(new["settings"]["max_num_seqs"])
    assert "--max-num-seqs" not in argv

    rc, old, err = _plan(root, "--engine-version", "0.32.0")   # earlier releases keep their spelling
    assert rc == 0 and "--max-num-seqs" in old["command"]["argv"] and "--max-sequences" not in old["command"]["argv"]
