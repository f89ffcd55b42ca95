"""Export as Kubernetes manifests (a Deployment, or a LeaderWorkerSet for several nodes)."""

from __future__ import annotations

import math
import shlex
from typing import Any

from qwenplan.launch.export.checks import dns_label, dns_subdomain, host_folder, quantity, user_str
from qwenplan.launch.export.text import comment, sh_word, to_yaml
from qwenplan.launch.export.view import (DEFAULT_SHM, HEALTH_PATH, HF_CACHE_IN_CONTAINER, START_ALLOWANCE_S, EnvRef,
                                         View, Word, container_argv, container_env, dp_start_shell, gpu_summary,
                                         image_for, multinode_summary, node_launch_of, plan_view, slug)

def _k8s_word(w: Word) -> str:
    """Kubernetes expands `$(VAR)` in command/args and reads `$$` as `$`: every literal `$` is `$$`."""
    if isinstance(w, EnvRef):
        return w.prefix.replace("$", "$$") + f"$({w.name})" + w.suffix.replace("$", "$$")
    return w.replace("$", "$$")


def _storage_size(v: View) -> str:
    size = (v.plan.get("variant") or {}).get("size_bytes") or 0
    gib = max(100, math.ceil(size * 1.5 / (1 << 30) / 10) * 10) if size else 200
    return f"{gib}Gi"


def _check_options(namespace: str | None, storage_size: str | None, storage_class: str | None,
                   hf_cache: str | None, shm_size: str) -> None:
    """Refuse what the API server would: DNS-1123 names, quantities, a hostPath outside system folders."""
    if namespace is not None:
        dns_label(namespace, "--namespace")
    if storage_size is not None:
        quantity(storage_size, "--storage-size")
    if storage_class is not None:
        dns_subdomain(storage_class, "--storage-class")
    if hf_cache is not None:
        if hf_cache.startswith("/"):
            host_folder(hf_cache, "--hf-cache")
        else:
            dns_subdomain(hf_cache, "--hf-cache (a PersistentVolumeClaim name, or an absolute hostPath)")
    if shm_size != DEFAULT_SHM:
        quantity(shm_size, "--shm-size")


def render_k8s(plan: Any, *, image: str | None = None, name: str | None = None, namespace: str | None = None,
               secret_name: str | None = None, hf_cache: str | None = None, storage_size: str | None = None,
               storage_class: str | None = None, node_selector: dict[str, str] | None = None,
               shm_size: str = DEFAULT_SHM, backend: str = "mp") -> str:
    """Kubernetes manifests: a PersistentVolumeClaim for the HF cache (or `hf_cache` as an absolute
    hostPath, or the name of an existing claim), a Deployment (one node) or a LeaderWorkerSet
    (leaderworkerset.x-k8s.io/v1, several nodes), and a Service. GPUs through `nvidia.com/gpu`,
    startup/readiness/liveness probes on /health, /dev/shm as a memory emptyDir, secrets from the
    Secret `secret_name` (default qwenplan-<model>) through secretKeyRef; no Secret object is
    written (it would carry the values).
    """
    v = plan_view(plan)
    img = image_for(v, image)
    nm = slug(user_str(name, "--name")) if name else f"qwenplan-{v.slug}"
    secret = dns_subdomain(secret_name, "--secret-name") if secret_name is not None else nm
    _check_options(namespace, storage_size, storage_class, hf_cache, shm_size)
    labels = {"app.kubernetes.io/name": nm, "app.kubernetes.io/managed-by": "qwenplan"}
    meta = {"name": nm, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    docs: list[dict] = []

    claim = None
    if hf_cache and hf_cache.startswith("/"):
        cache_vol = {"name": "hf-cache", "hostPath": {"path": hf_cache, "type": "DirectoryOrCreate"}}
    else:
        claim = hf_cache or f"{nm}-hf-cache"
        cache_vol = {"name": "hf-cache", "persistentVolumeClaim": {"claimName": claim}}
        if not hf_cache:
            pvc_spec: dict[str, Any] = {
                "accessModes": ["ReadWriteMany" if v.nodes > 1 else "ReadWriteOnce"],
                "resources": {"requests": {"storage": storage_size or _storage_size(v)}}}
            if storage_class:
                pvc_spec["storageClassName"] = storage_class
            docs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {**meta, "name": claim}, "spec": pvc_spec})
    volumes = [cache_vol, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]

    def container(argv: list[Word], http: bool, cname: str) -> dict:
        env = [{"name": k, "value": val} for k, val in container_env(v).items()]
        env += [{"name": s, "valueFrom": {"secretKeyRef": {"name": secret, "key": s}}} for s in v.secrets]
        c: dict[str, Any] = {"name": cname, "image": img,
                             "command": [_k8s_word(argv[0])], "args": [_k8s_word(w) for w in argv[1:]]}
        if env:
            c["env"] = env
        if http:
            c["ports"] = [{"name": "http", "containerPort": v.port, "protocol": "TCP"}]
        if v.gpus:
            c["resources"] = {"limits": {"nvidia.com/gpu": v.gpus}}
        c["volumeMounts"] = [{"name": "hf-cache", "mountPath": HF_CACHE_IN_CONTAINER},
                             {"name": "dshm", "mountPath": "/dev/shm"}]
        if http:
            get = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
            c["startupProbe"] = {**get, "periodSeconds": 10, "timeoutSeconds": 5,
                                 "failureThreshold": START_ALLOWANCE_S // 10}
            c["readinessProbe"] = {**get, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
            c["livenessProbe"] = {**get, "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 3}
        return c

    def pod_spec(c: dict) -> dict:
        spec: dict[str, Any] = {"containers": [c], "volumes": volumes, "terminationGracePeriodSeconds": 60}
        if node_selector:
            spec["nodeSelector"] = dict(node_selector)
        return spec

    head = [f"qwenplan: {v.title}",
            f"GPUs: {gpu_summary(v)}; image {img}",
            "Apply: kubectl apply -f THIS_FILE",
            f"Secrets ({', '.join(v.secrets) or 'none'}) come from the Secret {secret!r}, never from here; create it first",
            f"(values may be empty): kubectl create secret generic {shlex.quote(secret)}"
            + (f" --namespace {shlex.quote(namespace)}" if namespace else "") + " "
            + " ".join(f"--from-literal={s}=..." for s in v.secrets),
            f"The engine listens on 0.0.0.0 in the pod (--host rewritten from {v.host}); the Service is ClusterIP only:",
            f"  kubectl port-forward svc/{nm} {v.port}:{v.port}",
            f"Probes: GET {HEALTH_PATH} (no API key needed). The startupProbe allows {START_ALLOWANCE_S // 60} min before",
            "liveness counts: 138 s to load on an H100 with the weights cached (measured by qwenplan), plus the download.",
            "HF cache: " + (f"hostPath {hf_cache}" if claim is None else f"PersistentVolumeClaim {claim}")
            + ("; shared by all nodes of the group (ReadWriteMany storage, e.g. NFS/CephFS)" if v.nodes > 1 and claim
               else "") + "."]

    if v.nodes == 1:
        argv = container_argv(v, v.argv)
        sel = {"app.kubernetes.io/name": nm}
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                     "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                              "selector": {"matchLabels": sel},
                              "template": {"metadata": {"labels": dict(labels)},
                                           "spec": pod_spec(container(argv, True, "engine"))}}})
        svc_sel = sel
    else:
        leader_addr, worker_idx = EnvRef("LWS_LEADER_ADDRESS"), EnvRef("LWS_WORKER_INDEX")
        base = container_argv(v, v.argv)
        headl = node_launch_of(v, node_rank=0, head_addr=leader_addr, backend=backend, rank_word="0", argv=base)
        workl = node_launch_of(v, node_rank=1, head_addr=leader_addr, backend=backend, rank_word=worker_idx,
                             argv=base)
        if backend == "ray" and v.engine == "vllm":
            # vLLM's LWS page, Ray variant: the image's helper starts Ray and waits for the whole group
            helper = "/vllm-workspace/examples/ray_serving/multi-node-serving.sh"
            lead_c = container(["/bin/sh", "-c", f"bash {helper} leader --ray_cluster_size={v.nodes} && exec "
                                + " ".join(sh_word(w, required=False) for w in headl.argv)], True, "engine")
            work_c = container(["/bin/sh", "-c", f'bash {helper} worker --ray_address="${{LWS_LEADER_ADDRESS}}"'],
                               False, "engine")
            head += ["Ray backend: Ray is an optional dependency since vLLM 0.19; the image needs `ray[cgraph]`."]
        else:
            lead_c = container(headl.argv, True, "engine")
            if workl.dp_start:
                # the worker's first DP rank is arithmetic on LWS_WORKER_INDEX: the pod's shell does it
                work_c = container(["/bin/sh", "-c", dp_start_shell(workl) + " && exec "
                                    + " ".join(sh_word(w) for w in workl.argv)], False, "engine")
            else:
                work_c = container(workl.argv, False, "engine")
        head += [f"Multi-node: a LeaderWorkerSet of {v.nodes} pods (needs the LWS controller,",
                 "https://lws.sigs.k8s.io/docs/installation/), as in vLLM's docs/deployment/frameworks/lws.md:",
                 f"{multinode_summary(v)}; only the leader serves HTTP and has probes."]
        lws_labels = {**labels, "role": "leader"}
        docs.append({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": meta,
                     "spec": {"replicas": 1,
                              "leaderWorkerTemplate": {
                                  "size": v.nodes,
                                  "restartPolicy": "RecreateGroupOnPodRestart",
                                  "leaderTemplate": {"metadata": {"labels": lws_labels}, "spec": pod_spec(lead_c)},
                                  "workerTemplate": {"metadata": {"labels": {**labels, "role": "worker"}},
                                                     "spec": pod_spec(work_c)}}}})
        svc_sel = {"leaderworkerset.sigs.k8s.io/name": nm, "role": "leader"}
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                 "spec": {"type": "ClusterIP", "selector": svc_sel,
                          "ports": [{"name": "http", "port": v.port, "targetPort": "http", "protocol": "TCP"}]}})
    return comment(head) + to_yaml(docs, many=True)
