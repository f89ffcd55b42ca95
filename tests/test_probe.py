"""The probe against real NVML answers (shared/fixtures/probes) and synthetic ones, replayed
behind a fake `pynvml` module; the probe's own code runs unchanged."""

import json

from qwenplan.planner import hardware

from tests.conftest import capture


def test_real_h100_capture(replay):
    hw = replay("h100-80gb-hbm3")
    (g,) = hw.gpus
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-0ee72fba-34c9-6465-4463-7743733cbc89"
    assert g.pci_bus_id == "00000000:00:06.0"
    assert g.memory_total_bytes == 85520809984
    assert g.memory_free_bytes == 85017493504
    # CUDA's total excludes the driver's reserve: exactly what torch reported on that machine
    assert g.cuda_total_bytes == capture("h100-80gb-hbm3")["torch"]["devices"][0]["mem_get_info"][1]
    assert g.compute_capability == "9.0"
    assert g.mig is False and g.nvlink_peers == []  # single GPU answers NotSupported for NVLink
    assert hw.driver == {"version": "580.159.04", "cuda": "13.0"}
    assert hw.host.ram_total_bytes == 135148564480
    assert hw.host.cpu_count == 16
    assert hw.host.shm_bytes == 137438953472
    assert hw.host.disk_free_bytes == 68702461952
    assert hw.host.swap_total_bytes == 0
    assert hw._nvml_calls == ["init", "shutdown"]


def test_no_driver_is_an_empty_list_and_a_note(replay):
    hw = replay("synthetic-no-driver")
    assert hw.gpus == []
    assert any("no NVIDIA driver" in n for n in hw.notes)
    assert hw.host.ram_total_bytes > 0  # the host is still probed


def test_nvlink_pair_from_link_state_and_p2p(replay):
    hw = replay("synthetic-2x-h200-nvlink")
    assert [g.nvlink_peers for g in hw.gpus] == [[1], [0]]


def test_nvlink_from_p2p_status_alone(replay):
    cap = capture("synthetic-2x-h200-nvlink")
    for d in cap["devices"]:
        d["nvlink"] = [{"link": 0, "state": {"error": "NVMLError_NotSupported"}}]
    hw = replay("", cap=cap)
    assert [g.nvlink_peers for g in hw.gpus] == [[1], [0]]


def test_mig_instances_are_devices(replay):
    hw = replay("synthetic-a100-mig")
    assert [g.name for g in hw.gpus] == ["NVIDIA A100-SXM4-40GB MIG 3g.20gb"] * 2
    assert all(g.mig and g.mig_profile == "3g.20gb" for g in hw.gpus)
    assert hw.gpus[0].memory_total_bytes == 20937965568
    assert hw.gpus[1].uuid.startswith("MIG-")
    assert any("MIG mode" in n for n in hw.notes)


def test_unified_memory_not_supported_is_the_hosts_memory_not_a_crash(replay):
    hw = replay("synthetic-gb10-unified")
    (g,) = hw.gpus
    assert g.name == "NVIDIA GB10"
    # NVML answers NotSupported; the GPU shares the host's memory (profiles/gpus.yaml unified_memory: shared)
    assert g.unified_memory and g.memory_total_bytes == 128849018880 and g.memory_free_bytes == 120000000000
    assert g.compute_capability == "12.1"
    assert any("shares the host's memory" in n for n in hw.notes)


def test_busy_gpu_reports_free_memory_and_processes(replay):
    (g,) = replay("synthetic-4090-busy").gpus
    assert g.memory_total_bytes - g.memory_free_bytes == 15569256448
    assert g.processes == 2


def test_cuda_visible_devices_by_uuid_sets_order(replay):
    env = {"CUDA_VISIBLE_DEVICES": "GPU-eeeeeeee-0000-0000-0000-000000000003,GPU-eeeeeeee-0000-0000-0000-000000000001"}
    hw = replay("synthetic-4x-3060", env=env)
    assert [g.uuid[-1] for g in hw.gpus] == ["3", "1"]
    assert [g.index for g in hw.gpus] == [0, 1]
    assert [g.nvml_index for g in hw.gpus] == [3, 1]


def test_cuda_visible_devices_uuid_prefix_and_index(replay):
    hw = replay("synthetic-4x-3060", env={"CUDA_VISIBLE_DEVICES": "2,GPU-eeeeeeee-0000-0000-0000-000000000000"})
    assert [g.nvml_index for g in hw.gpus] == [2, 0]


def test_cuda_visible_devices_stops_at_invalid_entry(replay):
    hw = replay("synthetic-4x-3060", env={"CUDA_VISIBLE_DEVICES": "1,7,2"})
    assert [g.nvml_index for g in hw.gpus] == [1]
    assert any("'7' names no device" in n for n in hw.notes)


def test_cuda_visible_devices_empty_hides_all(replay):
    hw = replay("synthetic-4x-3060", env={"CUDA_VISIBLE_DEVICES": ""})
    assert hw.gpus == []


def test_fastest_first_vs_pci_bus_order(replay):
    default = replay("synthetic-3060-3090-mixed")
    assert [g.name[-4:] for g in default.gpus] == ["3090", "3060"]
    assert any("CUDA_DEVICE_ORDER" in n for n in default.notes)
    pci = replay("synthetic-3060-3090-mixed", env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert [g.name[-4:] for g in pci.gpus] == ["3060", "3090"]
    # index 0 in CUDA_VISIBLE_DEVICES means CUDA's first device: the 3090 under the default order
    first = replay("synthetic-3060-3090-mixed", env={"CUDA_VISIBLE_DEVICES": "0"})
    assert [g.name[-4:] for g in first.gpus] == ["3090"]


def test_cgroup_v2_limit_below_host_ram(replay, tmp_path):
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/kubepods/pod1/ctr\n")
    node = root / "sys/fs/cgroup/kubepods/pod1/ctr"
    node.mkdir(parents=True)
    (node / "memory.max").write_text("max\n")
    (node.parent / "memory.max").write_text(str(16 << 30) + "\n")
    hw = replay("h100-80gb-hbm3", sysroot=root)
    assert hw.host.cgroup_memory_limit_bytes == 16 << 30
    assert hw.host.usable_ram_bytes == 16 << 30
    assert any("cgroup" in n for n in hw.notes)


def test_cgroup_v1_unlimited_is_none(replay, tmp_path):
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("5:memory:/\n")
    (root / "sys/fs/cgroup/memory").mkdir(parents=True)
    (root / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert replay("h100-80gb-hbm3", sysroot=root).host.cgroup_memory_limit_bytes is None


def test_hf_cache_location_respects_env(replay, tmp_path):
    hw = replay("h100-80gb-hbm3", env={"HF_HOME": str(tmp_path / "hf")})
    assert hw.host.disk_path == str(tmp_path / "hf" / "hub")
    hw = replay("h100-80gb-hbm3", env={"HF_HOME": "/x", "HF_HUB_CACHE": str(tmp_path / "c")})
    assert hw.host.disk_path == str(tmp_path / "c")


def test_probe_json_round_trips_through_hardware_file(replay, tmp_path):
    for name in ("h100-80gb-hbm3", "synthetic-2x-h200-nvlink", "synthetic-a100-mig", "synthetic-gb10-unified"):
        doc = replay(name).to_dict()
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        again = hardware.load(path).to_dict()
        again["origin"] = doc["origin"]
        assert again == doc


def test_installed_engines_are_read_as_importlib_metadata_reads_them(tmp_path, monkeypatch):
    """The probe reads engine versions off the .dist-info folders (no importlib.metadata import):
    the same answers, the offload fork told apart by its direct_url.json."""
    import sys

    from qwenplan.planner import probe

    site = tmp_path / "site"
    for name, version, origin in (("vllm", "0.32.0", '{"url": "https://github.com/x/vllm-expert-offload"}'),
                                  ("sglang", "0.5.23", None)):
        d = site / f"{name}-{version}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if origin:
            (d / "direct_url.json").write_text(origin)
    monkeypatch.setattr(sys, "path", [str(site)] + [p for p in sys.path if "site-packages" not in p])
    assert probe.installed_engines() == {"vllm": None, "vllm-offload": "0.32.0", "sglang": "0.5.23"}
    assert probe._metadata_dists(("vllm", "sglang")) == {"vllm": ("0.32.0", (site / "vllm-0.32.0.dist-info" / "direct_url.json").read_text()), "sglang": ("0.5.23", "")}
