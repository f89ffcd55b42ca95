"""Rendering: every example plan, every engine version, checked against the real flag sets."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from qwenplan.launch.render import RenderError, check_flags, render
from qwenplan.planner import hardware
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.decide import PlanOptions, make_plan
from qwenplan.planner.engines import get_engine
from qwenplan.planner.errors import InputError
from qwenplan.planner.flags import parse_help

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "hardware"
ENGINE_HELP = Path(__file__).parent / "fixtures" / "engines"   # the real --help (README.md there)
BOXES = sorted(p.stem for p in EXAMPLES.glob("*.json") if p.stem != "no-gpu")


def plan_doc(box, **opts):
    hw = hardware.load(EXAMPLES / f"{box}.json", lookup=find_gpu)
    return make_plan(hw, PlanOptions(**opts)).to_dict()


def matrix():
    for box in BOXES:
        for engine, version in (("auto", None), ("vllm", "0.32.0"), ("sglang", "0.5.23")):
            yield box, engine, version


def help_flags(name):
    return parse_help((ENGINE_HELP / name).read_text())


@pytest.mark.parametrize("box,engine,version", list(matrix()))
def test_example_matrix_renders_flags_the_engine_accepts(box, engine, version):
    doc = plan_doc(box, engine=engine, engine_version=version)
    if doc["status"] != "ok":
        assert doc["requirements"]
        return
    cmd = render(doc)
    eng = doc["engine"]["name"]
    assert cmd["flags_checked_against"] is not None
    # Independently of profiles/flags/: the real --help on file for the two reference versions.
    if (eng, doc["engine"]["version"]) in (("vllm", "0.32.0"), ("sglang", "0.5.23")):
        name = "vllm-0.32.0-serve-help-all.txt" if eng == "vllm" else "sglang-0.5.23-launch-server-help.txt"
        known = help_flags(name)
        flags = [a.split("=")[0] for a in cmd["argv"] if a.startswith("--")]
        assert [f for f in flags if f not in known] == []


def test_shell_line_round_trips_json_arguments():
    doc = plan_doc("h200")
    cmd = render(doc)
    words = shlex.split(cmd["shell"])
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert argv == cmd["argv"] and env == cmd["env"]
    spec = argv[argv.index("--speculative-config") + 1]
    assert json.loads(spec) == {"method": "mtp", "num_speculative_tokens": 2}
    # and through a real shell
    out = subprocess.run(["bash", "-c", "printf '%s\\n' " + " ".join(shlex.quote(a) for a in argv[3:])],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == argv[3:]


def test_versions_change_spellings_from_data():
    # MTP asked for: the mamba strategy flag is rendered with it (SGLang's state slots make MTP
    # too costly for the balanced plan on 12 GB cards, planner/sglang.py)
    sg10 = render(plan_doc("4x-rtx3060-12gb", engine="sglang", engine_version="0.5.10", mtp=True))
    sg23 = render(plan_doc("4x-rtx3060-12gb", engine="sglang", engine_version="0.5.23", mtp=True))
    assert "--mamba-scheduler-strategy" in sg10["argv"] and sg10["env"]["SGLANG_ENABLE_SPEC_V2"] == "1"
    assert "--mamba-radix-cache-strategy" in sg23["argv"] and "SGLANG_ENABLE_SPEC_V2" not in sg23["env"]
    assert "--quantization" in sg23["argv"] and "moe_wna16" in sg23["argv"]
    v19 = render(plan_doc("h100-80gb", engine="vllm", engine_version="0.19.1"))
    assert "--gpu-memory-utilization" in v19["argv"]
    assert v19["argv"][v19["argv"].index("--gpu-memory-utilization") + 1] == "0.9"   # 0.92 only from 0.20
    v17 = render(plan_doc("h100-80gb", engine="vllm", engine_version="0.17.0"))
    assert "--max-cudagraph-capture-size" in v17["argv"]                             # vLLM PR #34571


def test_sm120_fp8_gets_deepgemm_off_on_new_vllm_only():
    new = render(plan_doc("rtx-pro-6000", variant="fp8", engine="vllm", engine_version="0.26.0"))
    old = render(plan_doc("rtx-pro-6000", variant="fp8", engine="vllm", engine_version="0.23.0"))
    assert new["env"].get("VLLM_USE_DEEP_GEMM") == "0"
    assert "VLLM_USE_DEEP_GEMM" not in old["env"]


def test_a_flag_the_version_lacks_is_refused():
    with pytest.raises(RenderError, match="does not accept --mamba-scheduler-strategy"):
        check_flags("sglang", "0.5.23", ["--mamba-scheduler-strategy", "extra_buffer"])
    with pytest.raises(RenderError, match="does not accept --gdn-prefill-backend"):
        check_flags("vllm", "0.17.0", ["--gdn-prefill-backend", "triton"])
    with pytest.raises(RenderError, match="not one of its choices"):
        check_flags("vllm", "0.32.0", ["--kv-cache-dtype", "fp9"])
    with pytest.raises(RenderError):
        render(plan_doc("h100-80gb"), extra_args=("--swap-space", "4"))   # removed in vLLM 0.18


def test_versions_are_checked():
    with pytest.raises(InputError, match="support starts at 0.17.0"):
        plan_doc("h100-80gb", engine="vllm", engine_version="0.16.0")
    with pytest.raises(InputError, match="not a version"):
        plan_doc("h100-80gb", engine="vllm", engine_version="latest")
    with pytest.raises(InputError, match="unknown engine"):
        plan_doc("h100-80gb", engine="tgi")
    newer = make_plan(hardware.load(EXAMPLES / "h100-80gb.json", lookup=find_gpu),
                      PlanOptions(engine="vllm", engine_version="0.40.0"))
    assert any("newer than the newest" in w for w in newer.warnings)


def test_variant_the_engine_cannot_load_is_rejected_with_the_reason():
    doc = plan_doc("h100-80gb", engine="sglang", variant="w4a16-88plug")
    assert doc["status"] == "infeasible"
    assert any("SGLang cannot load it" in r for r in doc["requirements"])


def test_api_keys_never_appear_in_the_command(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-secret-value")
    cmd = render(plan_doc("h100-80gb"))
    assert "VLLM_API_KEY" in cmd["secret_env"] and "VLLM_API_KEY" not in cmd["env"]
    assert "--api-key" not in cmd["argv"]          # vLLM reads the key from its environment, by name
    sg = render(plan_doc("h100-80gb", engine="sglang"))
    assert sg["secret_args"] == [{"flag": "--api-key", "env": "SGLANG_API_KEY"}]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_every_setting_spelling_exists_in_some_release(engine):
    """A spelling no release on file accepts is a typo in profiles/engines.yaml."""
    from qwenplan.planner.flags import flag_set, versions_on_file

    eng = get_engine(engine)
    all_flags = set()
    for v in versions_on_file(engine):
        all_flags |= set(flag_set(engine, v).flags)
    for key, entries in eng.raw["args"].items():
        for e in entries:
            for tok in e["argv"]:
                if tok.startswith("--"):
                    assert tok in all_flags, (key, tok)


# --- targets: where the command runs (issue 18, item 2) -----------------------------------------

def _multinode(engine: str, goal: str = "long-context") -> dict:
    from click.testing import CliRunner

    from qwenplan.launch.cli import cli
    r = CliRunner().invoke(cli, ["plan", "--json", "--gpu", "H100", "--gpus", "4", "--nodes", "2", "--goal", goal,
                                 "--engine", engine])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_the_default_target_is_the_plan_command_and_a_node_adds_only_its_own_words():
    from qwenplan.launch.render import Target
    doc = _multinode("sglang")
    local = render(doc)["argv"]
    worker = render(doc, target=Target(nodes=2, node_rank=1, head_addr="10.0.0.5"))["argv"]
    assert worker[:len(local)] == local
    assert worker[len(local):] == ["--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "10.0.0.5:20000"]
    container = render(doc, target=Target(container=True))["argv"]
    assert container[container.index("--host") + 1] == "0.0.0.0" and len(container) == len(local)


def test_a_release_that_renames_a_multinode_flag_takes_data_only(monkeypatch):
    """A fake vLLM release renames --master-addr: one engines.yaml entry and its flag file, no code."""
    from qwenplan.launch import render as r
    from qwenplan.launch.render import Target
    from qwenplan.planner.flags import flag_set as real_flag_set
    doc = _multinode("vllm")
    doc["engine"]["version"] = "0.99.0"
    raw = get_engine("vllm").raw
    entries = raw["target_args"]["multi_node"]
    renamed = {**entries[0], "versions": ">=0.99.0",
               "worker": [t.replace("--master-addr", "--head-address") for t in entries[0]["worker"]]}
    monkeypatch.setitem(raw["target_args"], "multi_node", [renamed] + entries)
    base = real_flag_set("vllm", "0.32.0")
    fake = type(base)(base.engine, "0.99.0", {**{k: v for k, v in base.flags.items() if k != "--master-addr"},
                                               "--head-address": base.flags["--master-addr"]})
    monkeypatch.setattr(r, "flag_set", lambda e, v: fake)
    argv = r.target_launch("vllm", "0.99.0", doc["parallel"], Target(nodes=2, node_rank=1, head_addr="h")).args
    assert argv[argv.index("--head-address") + 1] == "h" and "--master-addr" not in argv
    # the old spelling against the new release's flags is refused, not silently written
    monkeypatch.setitem(raw["target_args"], "multi_node", entries)
    with pytest.raises(RenderError, match="does not accept --master-addr"):
        r.target_launch("vllm", "0.99.0", doc["parallel"], Target(nodes=2, node_rank=1, head_addr="h"))
