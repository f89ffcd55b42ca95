"""launch/fetch.py against a local fake hub (HF_ENDPOINT) and a temporary HF cache.

The fake hub serves what huggingface_hub's snapshot_download asks for: the revision info
(`/api/models/{repo}/revision/{rev}`), the file list (`/api/models/{repo}/tree/{rev}`) and the
files (`/{repo}/resolve/{rev}/{file}`, HEAD and GET, with ETag, X-Repo-Commit, Content-Length
and Range), and can drop a file half-way, refuse a token, or hold a gated repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwenplan.launch import fetch
from qwenplan.planner.errors import QwenplanError

REPO = "acme/Tiny-Qwen"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_SeCrEt_token_value_123"


def safetensors_bytes(n_floats: int, seed: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    header += b" " * (-len(header) % 8)
    data = bytes((seed + i) % 251 for i in range(4 * n_floats))
    return struct.pack("<Q", len(header)) + header + data


def make_files() -> dict[str, bytes]:
    shards = {f"model-0000{i}-of-00002.safetensors": safetensors_bytes(40_000, i) for i in (1, 2)}
    index = {"metadata": {"total_size": 320000}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                "b": "model-00002-of-00002.safetensors"}}
    return {"config.json": json.dumps({"model_type": "qwen3_5_moe"}).encode(),
            "model.safetensors.index.json": json.dumps(index).encode(),
            "tokenizer.json": b"{}", **shards}


Hit = namedtuple("Hit", "method path range auth")


class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.hits: list[Hit] = []
        self.drop: set[str] = set()        # files whose body is cut half-way (and then refused)
        self.need_token: str | None = None
        self.gated = False
        hub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _err(self, code: int, error_code: str, msg: str = "error"):
                data = json.dumps({"error": msg}).encode()
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", msg)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(data)

            def _serve(self, body: bool):
                path = self.path.split("?")[0]
                hub.hits.append(Hit(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
                if hub.need_token and self.headers.get("Authorization") != f"Bearer {hub.need_token}":
                    return self._err(401, "RepoNotFound", "Invalid credentials")
                if hub.gated:
                    return self._err(403, "GatedRepo", "Access to this model is restricted")
                m = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
                if m:
                    if m.group(1) != REPO:
                        return self._err(404, "RepoNotFound", "Repository not found")
                    return self._json({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": f} for f in hub.files]})
                m = re.fullmatch(r"/api/models/(.+)/tree/([^/]+)(/.*)?", path)
                if m:
                    if m.group(1) != REPO:
                        return self._err(404, "RepoNotFound", "Repository not found")
                    return self._json([{"type": "file", "path": f, "size": len(d), "oid": hub.blob_id(d)}
                                       for f, d in hub.files.items()])
                m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path)
                if not m or m.group(1) != REPO:
                    return self._err(404, "RepoNotFound", "Repository not found")
                name = m.group(3)
                if name not in hub.files:
                    return self._err(404, "EntryNotFound", "Entry not found")
                data = hub.files[name]
                start = 0
                rng = self.headers.get("Range")
                if body and name in hub.drop and rng:
                    return self._err(500, "Internal", "the fake hub is down for this file")
                if rng:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                self.send_response(206 if rng else 200)
                self.send_header("ETag", f'"{hub.blob_id(data)}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if name in hub.drop:   # half the body, then the connection goes away
                    self.wfile.write(data[start:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def blob_id(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def file_gets(self) -> list[str]:
        return [h.path.rsplit("/", 1)[-1] for h in self.hits if h.method == "GET" and "/resolve/" in h.path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    files = make_files()
    h = FakeHub(files)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The hub retries a dropped body after a 1 s pause; nothing to wait for on loopback.
    import huggingface_hub.file_download as fd
    monkeypatch.setattr(fd, "time", type("T", (), {"sleep": staticmethod(lambda s: None),
                                                    "time": staticmethod(__import__("time").time)}))
    yield h
    h.close()


def total(files) -> int:
    return sum(len(d) for d in files.values())


def test_planning_never_imports_the_hub():
    import subprocess
    code = ("import sys; import qwenplan.launch.fetch, qwenplan.launch.runner, qwenplan.launch.diagnose; "
            "print('huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_download_then_reuse_without_asking_the_hub(hub):
    path = fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    assert path.name == COMMIT and path.is_dir()
    for name, data in hub.files.items():
        assert (path / name).read_bytes() == data
    assert fetch.cached_snapshot(REPO) == path
    assert fetch.cached_snapshot(REPO, COMMIT) == path
    n = len(hub.hits)
    again = fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    assert again == path and len(hub.hits) == n          # the hub was not asked again
    [c] = fetch.cached_checkpoints([REPO])
    assert c.commit == COMMIT and "main" in c.refs and c.size_bytes == total(hub.files)


def test_interrupted_download_is_never_taken_for_complete_and_resumes(hub):
    hub.drop = {"model-00002-of-00002.safetensors"}
    with pytest.raises(fetch.CheckpointError) as e:
        fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    assert "run again" in str(e.value) and "\n" not in str(e.value)
    # The hub retried the cut file in-call (with a Range where it had kept bytes), then gave up;
    # nothing half-written counts as there.
    assert hub.file_gets().count("model-00002-of-00002.safetensors") > 1
    assert fetch.cached_snapshot(REPO) is None
    snap = fetch.hub_cache_dir() / "models--acme--Tiny-Qwen" / "snapshots" / COMMIT
    assert not (snap / "model-00002-of-00002.safetensors").exists()
    done_before = set(hub.file_gets()) - hub.drop
    hub.drop = set()
    hub.hits.clear()
    path = fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    assert (path / "model-00002-of-00002.safetensors").read_bytes() == hub.files["model-00002-of-00002.safetensors"]
    assert not (set(hub.file_gets()) & done_before)       # finished files were not fetched again
    assert fetch.cached_snapshot(REPO) == path


def test_a_truncated_file_in_the_cache_is_not_complete(hub):
    path = fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    shard = (path / "model-00001-of-00002.safetensors").resolve()
    shard.write_bytes(shard.read_bytes()[:1000])          # e.g. a copy that was cut short
    assert fetch.cached_snapshot(REPO) is None


def test_full_disk_is_refused_before_any_download(hub, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 200 << 20))
    with pytest.raises(fetch.DiskSpaceError) as e:
        fetch.ensure_checkpoint(REPO, needed_bytes=30 << 30, progress=False)
    msg = str(e.value)
    assert "30.0 GiB" not in msg and "31.0 GiB" in msg and "0.2 GiB free" in msg and "HF_HUB_CACHE" in msg
    assert hub.hits == []


def test_disk_check_counts_what_is_already_downloaded(hub, monkeypatch):
    fetch.ensure_checkpoint(REPO, allow_patterns=["*.json"], needed_bytes=0, progress=False)
    have = fetch.downloaded_bytes(REPO)
    assert have == sum(len(d) for n, d in hub.files.items() if n.endswith(".json"))
    seen = []
    monkeypatch.setattr(fetch, "check_disk", lambda path, need, what, fix=None: seen.append(need))
    fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    assert seen == [total(hub.files) - have]


def test_offline_uses_the_cache_or_says_what_to_do(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(fetch.CheckpointError) as e:
        fetch.ensure_checkpoint(REPO, needed_bytes=1, progress=False)
    assert "HF_HUB_OFFLINE" in str(e.value) and hub.hits == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hits.clear()
    assert fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=False) == path
    assert fetch.config_only(REPO) == path / "config.json"
    assert hub.hits == []


def test_token_is_sent_but_never_shown(hub, monkeypatch, capsys):
    hub.need_token = TOKEN
    with pytest.raises(QwenplanError) as e:
        fetch.ensure_checkpoint(REPO, needed_bytes=1, progress=False)
    assert "HF_TOKEN" in str(e.value) and TOKEN not in str(e.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.hits.clear()
    fetch.ensure_checkpoint(REPO, needed_bytes=total(hub.files), progress=True)
    assert hub.hits and all(h.auth == f"Bearer {TOKEN}" for h in hub.hits)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_gated_and_unknown_repos_are_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.gated = True
    with pytest.raises(fetch.CheckpointError) as e:
        fetch.ensure_checkpoint(REPO, needed_bytes=1, progress=False)
    assert "gated" in str(e.value) or "refused" in str(e.value)
    assert TOKEN not in str(e.value) and "\n" not in str(e.value)
    hub.gated = False
    with pytest.raises(fetch.CheckpointError) as e:
        fetch.ensure_checkpoint("acme/Nope", needed_bytes=1, progress=False)
    assert "acme/Nope" in str(e.value) and "\n" not in str(e.value)


def test_config_only_fetches_just_the_config(hub):
    path = fetch.config_only(REPO)
    assert path.name == "config.json" and json.loads(path.read_text())["model_type"] == "qwen3_5_moe"
    assert hub.file_gets() == ["config.json"]
    assert fetch.cached_snapshot(REPO) is None              # a config alone is not a checkpoint


def test_hub_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fetch.hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    assert fetch.hub_cache_dir() == tmp_path / "h" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert fetch.hub_cache_dir() == tmp_path / "c"


def test_snapshot_without_a_file_list_is_judged_by_its_index(tmp_path):
    files = make_files()
    snap = tmp_path / "models--acme--Tiny-Qwen" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        if name != "model-00002-of-00002.safetensors":
            (snap / name).write_bytes(data)
    assert not fetch.snapshot_complete(REPO, snap, cache_dir=tmp_path)
    (snap / "model-00002-of-00002.safetensors").write_bytes(files["model-00002-of-00002.safetensors"][:-10])
    assert not fetch.snapshot_complete(REPO, snap, cache_dir=tmp_path)
    (snap / "model-00002-of-00002.safetensors").write_bytes(files["model-00002-of-00002.safetensors"])
    assert fetch.snapshot_complete(REPO, snap, cache_dir=tmp_path)
    blobs = tmp_path / "models--acme--Tiny-Qwen" / "blobs"
    blobs.mkdir()
    (blobs / "abc.incomplete").write_bytes(b"x")             # an old hub's unfinished download
    assert not fetch.snapshot_complete(REPO, snap, cache_dir=tmp_path)


def test_disk_full_during_download_is_one_line():
    import errno
    err = fetch._hub_error(REPO, OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(err, fetch.DiskSpaceError) and "completed files are kept" in str(err)
