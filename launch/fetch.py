"""Getting a checkpoint into the normal Hugging Face cache, and knowing when one is already there.

huggingface_hub is imported inside the functions only: planning never imports it. The cache is
the hub's own (HF_HUB_CACHE, else HF_HOME/hub), so vLLM and SGLang find the files without a
path. HF_TOKEN, HF_HUB_OFFLINE and HF_ENDPOINT are read when called, not at import, so a
process that changes them (tests, `qwenplan auto` in a wrapper) gets what it asked for.

A snapshot counts as complete only when every file of the repo's file list is present at its
full size; where the hub kept no file list, when config.json and every shard the safetensors
index names are there and each safetensors file is as long as its own header says. The hub
writes each file under a temporary name and renames it when done, so a half-written file never
sits under its real name; the checks above make sure a missing one is never taken for done.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from qwenplan.planner.errors import QwenplanError

GiB = 1 << 30
# Room kept beyond the checkpoint: the hub's temporary file, the engine's compile cache, logs.
DISK_MARGIN_BYTES = 1 * GiB
_COMMIT = len("0123456789abcdef0123456789abcdef01234567")


class CheckpointError(QwenplanError):
    """The checkpoint cannot be had: offline, gated, not found, interrupted."""


class DiskSpaceError(QwenplanError):
    """Not enough free disk where the files must go."""


@dataclass(frozen=True)
class CachedCheckpoint:
    repo: str
    commit: str
    refs: tuple[str, ...]
    path: Path            # the snapshot folder (what the engine is given)
    size_bytes: int


# --- where things are ----------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The hub's cache folder, by the hub's own rules (planner/probe.py), read from the environment now."""
    from qwenplan.planner.probe import hf_cache_dir

    return hf_cache_dir(os.environ)


def _endpoint() -> str | None:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def _token() -> str | None:
    # None lets the hub use a token saved by `hf auth login`; an HF_TOKEN set now wins.
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _storage(repo: str, cache_dir: Path) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def _existing(path: Path) -> Path:
    """The nearest folder that exists at or above `path` (the cache may not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(_existing(Path(path))).free


def check_disk(path: str | Path, needed_bytes: int, what: str, fix: str | None = None) -> int:
    """Raise DiskSpaceError unless `needed_bytes` (plus a margin) fit at `path`; returns free bytes."""
    free = free_bytes(path)
    if needed_bytes > 0 and free < needed_bytes + DISK_MARGIN_BYTES:
        where = _existing(Path(path))
        raise DiskSpaceError(
            f"{what} needs {_gib(needed_bytes + DISK_MARGIN_BYTES)} free at {where} (with {_gib(DISK_MARGIN_BYTES)} "
            f"to spare), {_gib(free)} free",
            fix or "free disk space there, or point HF_HUB_CACHE at a bigger disk")
    return free


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


# --- what is in the cache ------------------------------------------------------------------


def _safetensors_complete(path: Path) -> bool:
    """A safetensors file is as long as its header says: 8 + header + the largest data end."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > 100 * (1 << 20) or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _matches(path: str, patterns) -> bool:
    if patterns is None:
        return True
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.rstrip("/") + "/*") for p in patterns)


def _file_list(repo: str, commit: str, cache_dir: Path) -> dict[str, int] | None:
    """{path: size} from the file list the hub cached at download time (hub >= 1.x), else None."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:
        return None
    try:
        return {f.path: f.size for f in get_cached_repo_tree(repo, revision=commit, cache_dir=str(cache_dir))}
    except Exception:  # no listing cached for this commit (downloaded by an older hub, or by hand)
        return None


def snapshot_complete(repo: str, snapshot: Path, *, commit: str | None = None, cache_dir: Path | None = None,
                      allow_patterns=None) -> bool:
    """Whether every file of the repo (those `allow_patterns` select) is in `snapshot`, whole."""
    cache_dir = cache_dir or hub_cache_dir()
    listing = _file_list(repo, commit or snapshot.name, cache_dir)
    if listing is not None:
        for name, size in listing.items():
            if not _matches(name, allow_patterns):
                continue
            f = snapshot / name
            if not f.is_file() or (size is not None and f.stat().st_size != size):
                return False
            if name.endswith(".safetensors") and not _safetensors_complete(f):
                return False
        return True
    # No listing: judge by the model's own manifest (config + the index's shards).
    if not (snapshot / "config.json").is_file():
        return False
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
    else:
        shards = {p.name for p in snapshot.glob("*.safetensors")}
        if not shards and _matches("model.safetensors", allow_patterns):
            return False
    if any(_matches(s, allow_patterns) and not _safetensors_complete(snapshot / s) for s in shards):
        return False
    # An old hub's resumable partial in this repo's blobs means a download that never finished.
    blobs = _storage(repo, cache_dir) / "blobs"
    return not any(blobs.glob("*.incomplete"))


def _scan(cache_dir: Path):
    from huggingface_hub import scan_cache_dir

    try:
        return scan_cache_dir(str(cache_dir))
    except Exception:  # CacheNotFound, or an unreadable cache: nothing cached as far as we can tell
        return None


def cached_checkpoints(repos=None, *, cache_dir: str | Path | None = None, allow_patterns=None) -> list[CachedCheckpoint]:
    """Every complete cached snapshot (of `repos`, when given), newest first."""
    cache_dir = Path(cache_dir) if cache_dir else hub_cache_dir()
    info = _scan(cache_dir)
    if info is None:
        return []
    wanted = set(repos) if repos is not None else None
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or (wanted is not None and repo.repo_id not in wanted):
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if snapshot_complete(repo.repo_id, Path(rev.snapshot_path), commit=rev.commit_hash, cache_dir=cache_dir,
                                 allow_patterns=allow_patterns):
                found.append(CachedCheckpoint(repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)),
                                              Path(rev.snapshot_path), rev.size_on_disk))
    return found


def cached_snapshot(repo: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
                    allow_patterns=None) -> Path | None:
    """The folder of a complete cached snapshot of `repo` at `revision`, or None.

    `revision` is a commit hash or a ref (branch/tag); None means `main`, or else the newest
    complete snapshot (a copy fetched at some commit is still that checkpoint).
    """
    snaps = cached_checkpoints([repo], cache_dir=cache_dir, allow_patterns=allow_patterns)
    if revision and len(revision) == _COMMIT and all(c in "0123456789abcdef" for c in revision):
        snaps = [s for s in snaps if s.commit == revision]
    elif revision and revision != "main":
        snaps = [s for s in snaps if revision in s.refs]
    else:
        snaps.sort(key=lambda s: "main" not in s.refs)   # stable: main first, then newest
    return snaps[0].path if snaps else None


def downloaded_bytes(repo: str, cache_dir: str | Path | None = None) -> int:
    """Bytes of this repo already complete in the cache (finished blobs only: partials are not counted)."""
    blobs = _storage(repo, Path(cache_dir) if cache_dir else hub_cache_dir()) / "blobs"
    if not blobs.is_dir():
        return 0
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file() and not p.name.endswith(".incomplete"))


# --- getting it ------------------------------------------------------------------------------


def _quiet_tqdm():
    from tqdm.auto import tqdm

    class Quiet(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _scrub(text: str) -> str:
    token = _token()
    text = text.replace(token, "***") if token else text
    return " ".join(text.split())[:300]


def _hub_error(repo: str, err: BaseException) -> QwenplanError:
    """One line (problem: fix) for whatever the hub raised; never the token."""
    import huggingface_hub.errors as he

    where = _endpoint() or "huggingface.co"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return DiskSpaceError(f"the disk filled up while downloading {repo}",
                              "free disk space (completed files are kept) and run again")
    if isinstance(err, getattr(he, "GatedRepoError", ())):
        return CheckpointError(f"{repo} is gated and this token has no access",
                               f"accept its licence on https://huggingface.co/{repo} and set HF_TOKEN")
    if isinstance(err, getattr(he, "RevisionNotFoundError", ())):
        return CheckpointError(f"{repo} has no such revision on {where}", "check the revision, or leave it out for main")
    if isinstance(err, getattr(he, "RepositoryNotFoundError", ())):
        return CheckpointError(f"{repo} was not found on {where} (or it is private)",
                               "check the repo name and HF_ENDPOINT; a private repo needs HF_TOKEN")
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return CheckpointError(f"{where} refused access to {repo} (HTTP {status})",
                               "set HF_TOKEN to a token that can read it")
    if isinstance(err, getattr(he, "LocalEntryNotFoundError", ())) or "connect" in type(err).__name__.lower():
        return CheckpointError(f"cannot reach {where} to download {repo}",
                               "check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only cached files")
    return CheckpointError(f"the download of {repo} stopped ({type(err).__name__}: {_scrub(str(err))})",
                           "run again: finished files are kept and only the rest is fetched")


def ensure_checkpoint(repo: str, revision: str | None = None, *, needed_bytes: int, allow_patterns=None,
                      progress: bool = True, cache_dir: str | Path | None = None, max_workers: int = 8) -> Path:
    """The local snapshot folder of `repo`, downloading what is missing; raises QwenplanError subclasses.

    A complete cached copy is used as it is, without asking the hub. Otherwise free disk at the
    cache is checked against `needed_bytes` less what is already downloaded, before any file is
    fetched.
    """
    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    found = cached_snapshot(repo, revision, cache_dir=cache, allow_patterns=allow_patterns)
    if found is not None:
        return found
    if offline():
        raise CheckpointError(f"{repo} is not (completely) in the cache at {cache} and HF_HUB_OFFLINE is set",
                              "unset HF_HUB_OFFLINE to download it, or copy the checkpoint into that cache")
    missing = max(0, needed_bytes - downloaded_bytes(repo, cache))
    check_disk(cache, missing, f"downloading {repo}")

    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo, revision=revision, cache_dir=str(cache), allow_patterns=allow_patterns, token=_token(),
            endpoint=_endpoint(), max_workers=max_workers, tqdm_class=None if progress else _quiet_tqdm())
    except QwenplanError:
        raise
    except Exception as err:  # every hub/network/disk failure becomes one line
        raise _hub_error(repo, err) from None
    path = Path(path)
    if not snapshot_complete(repo, path, cache_dir=cache, allow_patterns=allow_patterns):
        raise CheckpointError(f"the download of {repo} finished but files are missing or short in {path}",
                              "run again to fetch the rest")
    return path


def config_only(repo: str, revision: str | None = None, *, files=("config.json",),
                cache_dir: str | Path | None = None) -> Path:
    """config.json of `repo` (and any other small `files`), for `--load-format dummy` runs.

    Returns the path of config.json; its folder is what the engine is given as the model.
    """
    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    paths = []
    for name in files:
        hit = try_to_load_from_cache(repo, name, cache_dir=str(cache), revision=revision)
        if isinstance(hit, str):
            paths.append(Path(hit))
            continue
        if offline():
            raise CheckpointError(f"{name} of {repo} is not in the cache at {cache} and HF_HUB_OFFLINE is set",
                                  "unset HF_HUB_OFFLINE to fetch it (a few KB)")
        try:
            paths.append(Path(hf_hub_download(repo, name, revision=revision, cache_dir=str(cache), token=_token(),
                                              endpoint=_endpoint())))
        except Exception as err:
            raise _hub_error(repo, err) from None
    return paths[0]
