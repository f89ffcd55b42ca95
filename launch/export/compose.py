"""Export as a docker compose file."""

from __future__ import annotations

import ipaddress
from typing import Any

from qwenplan.launch.export.checks import host_folder, user_str
from qwenplan.launch.export.text import comment, health_python, probe_host, sh_word, to_yaml
from qwenplan.launch.export.view import (ENV_FILE_NAME, HEALTH_PATH, HF_CACHE_IN_CONTAINER, START_ALLOWANCE_S, EnvRef,
                                         NodeLaunch, View,
                                         container_argv, container_env, container_program, gpu_device_ids,
                                         gpu_summary, image_for, multinode_summary, one_node, plan_view)
from qwenplan.launch.safe_text import printable
from qwenplan.planner.errors import InputError

def _compose_escape(obj: Any) -> Any:
    """Compose interpolates `$VAR` in every string: a literal `$` is written `$$`."""
    if isinstance(obj, str):
        return obj.replace("$", "$$")
    if isinstance(obj, list):
        return [_compose_escape(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _compose_escape(x) for k, x in obj.items()}
    return obj


def _publish_address(host: str, option: str) -> str:
    """The address compose publishes the port on: an IP address; `localhost` is 127.0.0.1."""
    if host in ("", "0.0.0.0", "::"):
        return host
    if host.lower() == "localhost":
        return "127.0.0.1"        # the one name that means the same on every host (RFC 6761, 6.3)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or getattr(ip, "scope_id", None):
        raise InputError(f"{option} {printable(host)!r} is not an IP address: compose publishes a port on an "
                         "address of this host" + (", and Docker takes no IPv6 zone (%...)" if ip else ""),
                         f"give {option} as an IP address, e.g. 127.0.0.1 (this host only) or 0.0.0.0 (all)")
    return str(ip)


# the container's HF cache from the host's HF_HOME when the compose file is used, else the default
HF_CACHE_DEFAULT = "${HF_HOME:-~/.cache/huggingface}"


def _header(v: View, launch: NodeLaunch | None, node_rank: int | None, env_file: str, hf_cache: str | None,
            img: str, bind: str, probe: str, serves_http: bool) -> list[str]:
    """The file's comment: what it runs, where secrets and the cache come from, health."""
    head = [f"qwenplan: {v.title}",
            f"GPUs: {gpu_summary(v)}" + (f"; node {node_rank} of {v.nodes} ({launch.role})" if launch else ""),
            "Start: docker compose up -d    (NVIDIA Container Toolkit required)",
            f"Secrets ({', '.join(v.secrets) or 'none'}) come from {env_file} beside this file (env_file:), never",
            "from here: it must exist, lines of NAME=value; `qwenplan export -o` writes it with the names (no",
            "values, mode 600) when it is absent.",
            f"Image {img}: its `{container_program(v.argv[0])}` replaces the host command's program.",
            "HF cache: " + (hf_cache if hf_cache else "$HF_HOME when set where compose runs, else ~/.cache/huggingface")
            + f", mounted on {HF_CACHE_IN_CONTAINER}."]
    if launch is None:
        head += [f"The engine listens on 0.0.0.0 inside the container (--host rewritten from {v.host}); the port is",
                 f"published on {bind or '0.0.0.0'} only. CUDA_VISIBLE_DEVICES is not set: device_ids picks the planned GPUs,",
                 "which the container sees as 0..n-1."]
    else:
        head += ["Host networking (the nodes talk NCCL/torch.distributed over many ports); set",
                 "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME in the env file if the nodes have several interfaces."]
    if serves_http:
        head += [f"Health: {probe} (python3 in the image; no curl needed). start_period allows",
                 f"{START_ALLOWANCE_S // 60} min for the first start: 138 s to load on an H100 with the weights cached",
                 "(measured by qwenplan), plus the download. `restart` acts when the engine exits; compose does not",
                 "restart an unhealthy container by itself."]
    if launch is not None:
        head += [f"Multi-node: {v.nodes} nodes x {v.gpus} GPUs ({multinode_summary(v)})."]
    return head


def render_compose(plan: Any, *, image: str | None = None, env_file: str = ENV_FILE_NAME,
                   hf_cache: str | None = None, publish_host: str | None = None,
                   service: str = "qwen", node_rank: int | None = None, head_addr: str | None = None,
                   backend: str = "mp") -> str:
    """A compose file: the engine's official image, the planned GPUs, the HF cache as a volume, the port
    published on the plan's host (127.0.0.1 by default), secrets from `env_file` (relative to the compose
    file; it must exist, it may be empty), a healthcheck on /health and a restart policy.

    A multi-node plan gives the file of one node (node_rank, head_addr), on the host network.
    """
    v = plan_view(plan)
    img = image_for(v, image)
    user_str(env_file, "--env-file")
    if hf_cache is not None:
        host_folder(hf_cache, "--hf-cache")
    # host networking across nodes: the engine keeps the plan's --host; only the program is the image's
    launch = one_node(v, node_rank, head_addr, backend, "compose", "compose file",
                      [container_program(v.argv[0])] + v.argv[1:])
    argv = launch.argv if launch else container_argv(v, v.argv)
    serves_http = launch is None or launch.serves_http
    bind = ""
    if launch is None:
        bind = _publish_address(user_str(publish_host, "--publish-host"), "--publish-host") \
            if publish_host is not None else _publish_address(v.host, "--host")
    probe = f"http://127.0.0.1:{v.port}{HEALTH_PATH}" if launch is None else \
        f"http://{probe_host(v.host)}:{v.port}{HEALTH_PATH}"

    svc: dict[str, Any] = {"image": img}
    if any(isinstance(w, EnvRef) for w in argv):
        # a secret in the argv: the container's shell expands it from the env_file's variables
        svc["entrypoint"] = ["/bin/sh", "-c", "exec " + " ".join(sh_word(w) for w in argv)]
        svc["command"] = []
    else:
        svc["entrypoint"] = [argv[0]]
        svc["command"] = list(argv[1:])
    env = container_env(v)
    if env:
        svc["environment"] = env
    svc["env_file"] = [env_file]
    if launch is None:
        host_part = f"[{bind}]" if ":" in bind else bind
        svc["ports"] = [f"{host_part}:{v.port}:{v.port}" if bind not in ("0.0.0.0", "") else f"{v.port}:{v.port}"]
    else:
        svc["network_mode"] = "host"
    svc["volumes"] = [f"{hf_cache}:{HF_CACHE_IN_CONTAINER}" if hf_cache else None]   # set after escaping
    if v.gpus > 1 or v.nodes > 1:
        svc["ipc"] = "host"
    if v.engine == "sglang":
        svc["ulimits"] = {"memlock": -1, "stack": 67108864}
    if v.gpus:
        svc["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": gpu_device_ids(v) if v.nodes == 1 else [str(i) for i in range(v.gpus)],
             "capabilities": ["gpu"]}]}}}
    if serves_http:
        # llama.cpp's images have curl and no Python (their own HEALTHCHECK uses curl)
        test = (["CMD", "curl", "-fsS", probe] if v.engine == "llamacpp" else
                ["CMD", "python3", "-c", health_python(probe, loop=False)])
        svc["healthcheck"] = {"test": test,
                              "interval": "30s", "timeout": "10s", "retries": 3,
                              "start_period": f"{START_ALLOWANCE_S // 60}m"}
    svc["restart"] = "unless-stopped"

    head = _header(v, launch, node_rank, env_file, hf_cache, img, bind, probe, serves_http)
    out = _compose_escape(svc)
    out["volumes"] = [out["volumes"][0] or f"{HF_CACHE_DEFAULT}:{HF_CACHE_IN_CONTAINER}"]   # interpolated
    doc = {"services": {service: out}}
    return comment(head) + to_yaml(doc)
