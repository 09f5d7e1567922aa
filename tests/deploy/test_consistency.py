"""The chart and deploy/k8s agree with each other and with the code: ports, probes, flags.

Each source (deploy/k8s and the chart rendered as release "tern" in namespace "tern") must be
consistent in itself (args resolve from their ConfigMaps, ports match containerPorts, Services,
probes and NetworkPolicies, the grace period covers the drain), the two must describe the same
pods, and every flag they pass to tern-node must be one `tern-node --help` lists, with a value it
accepts; tern-router's flags the same way against `tern-router --help`. The security options
(TLS, bearer tokens, limits) are covered by the "secure" sources and helm-full: with TLS the
probes must not be gRPC ones (the kubelet's gRPC probe cannot speak TLS)."""

from __future__ import annotations

import re

import pytest
import yaml

from deploylib import (
    ROOT,
    SECURE_COMPONENTS,
    binary_help,
    chart_objects,
    container,
    container_env,
    find,
    find_all,
    kustomize_objects,
    kustomize_overlay_objects,
    parse_help,
    resolve_args,
    split_flags,
)

SOURCES = {
    "k8s": lambda: kustomize_objects("k8s"),
    "k8s-gpu": lambda: kustomize_objects("k8s-gpu"),
    "helm-default": lambda: chart_objects("default"),
    "helm-gpu": lambda: chart_objects("gpu"),
    "helm-full": lambda: chart_objects("full"),
    "helm-minimal": lambda: chart_objects("minimal"),
    "k8s-secure": lambda: kustomize_overlay_objects("k8s", SECURE_COMPONENTS),
    "k8s-gpu-secure": lambda: kustomize_overlay_objects("k8s-gpu", ("tls", "auth")),
    "helm-secure": lambda: chart_objects("secure"),
    "k8s-etcd": lambda: kustomize_overlay_objects("k8s", ("etcd",)),
    "k8s-secure-etcd": lambda: kustomize_overlay_objects("k8s", (*SECURE_COMPONENTS, "etcd")),
    "helm-etcd": lambda: chart_objects("etcd"),
    "helm-etcd-external": lambda: chart_objects("etcd-external"),
}
WITH_ROUTER = [s for s in SOURCES if s != "helm-minimal"]


def node_sts(objs):
    return find(objs, "StatefulSet", "tern-node")


def node_container(objs):
    return container(node_sts(objs), "tern-node")


def router_deploy(objs):
    return find(objs, "Deployment")


def router_container(objs):
    return container(router_deploy(objs), "tern-router")


def flags_of(objs, c):
    return dict(split_flags(resolve_args(objs, c)))


def named_port(c, name):
    ports = [p["containerPort"] for p in c.get("ports", []) if p["name"] == name]
    return ports[0] if ports else None


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def probe_action(probe: dict) -> str:
    actions = [k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in probe]
    assert len(actions) == 1, f"a probe has exactly one action: {probe}"
    return actions[0]


def check_health_probe(probe: dict, flags: dict, c: dict, path: str, grpc_service: str = ""):
    """A probe that asks whether the server is live (path /v2/health/live) or ready
    (/v2/health/ready): gRPC health without TLS; with TLS the metrics port's HTTP(S) twin,
    or, without a metrics port, a TCP connect to the gRPC port."""
    grpc = int(flags["--grpc-port"])
    tls = flags.get("--grpc-use-ssl", "false") == "true"
    metrics = flags.get("--allow-metrics", "true") == "true"
    action = probe_action(probe)
    if action == "grpc":
        assert not tls, "the kubelet's gRPC probe cannot speak TLS (--grpc-use-ssl=true)"
        assert probe["grpc"]["port"] == grpc
        assert probe["grpc"].get("service", "") == grpc_service
    elif action == "httpGet":
        assert metrics, "an HTTP probe needs the metrics port"
        get = probe["httpGet"]
        assert get["port"] in ("metrics", int(flags["--metrics-port"]))
        https = flags.get("--metrics-use-ssl", "false") == "true"
        assert get.get("scheme", "HTTP") == ("HTTPS" if https else "HTTP"), "scheme must follow --metrics-use-ssl"
        assert get["path"] == path
    else:
        assert action == "tcpSocket" and tls and not metrics, f"{action} probe only for TLS without a metrics port"
        assert probe["tcpSocket"]["port"] in ("grpc", grpc)


def check_http_readiness(probe: dict, flags: dict, c: dict):
    """Readiness is Triton's HTTP /v2/health/ready on the HTTP port (8000): every model loaded
    on a node, a node able to serve behind a router. With --grpc-use-ssl the HTTP port speaks
    HTTPS too (the kubelet does not verify the certificate)."""
    assert flags.get("--allow-http", "true") == "true"
    http = int(flags["--http-port"])
    assert http == 8000, "Triton's HTTP port"
    assert named_port(c, "http") == http
    if flags.get("--grpc-use-ssl-mutual", "false") == "true":
        # The kubelet has no client certificate: the metrics port's /v2/health/ready twin.
        check_health_probe(probe, flags, c, "/v2/health/ready")
        return
    assert probe_action(probe) == "httpGet", probe
    get = probe["httpGet"]
    assert get["port"] in ("http", http) and get["path"] == "/v2/health/ready", get
    tls = flags.get("--grpc-use-ssl", "false") == "true"
    assert get.get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP"), "scheme must follow --grpc-use-ssl"


# --- each source in itself --------------------------------------------------------------------


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_ports_and_probes(source):
    objs = SOURCES[source]()
    c = node_container(objs)
    flags = flags_of(objs, c)
    grpc = int(flags["--grpc-port"])
    assert named_port(c, "grpc") == grpc
    for probe in ("startupProbe", "livenessProbe"):
        check_health_probe(c[probe], flags, c, "/v2/health/live")
    check_http_readiness(c["readinessProbe"], flags, c)
    if flags.get("--allow-metrics", "true") == "true":
        metrics = int(flags["--metrics-port"])
        assert named_port(c, "metrics") == metrics
    else:
        assert named_port(c, "metrics") is None


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_headless_service(source):
    objs = SOURCES[source]()
    sts = node_sts(objs)
    svc = find(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "the StatefulSet's governing Service must be headless"
    assert selects(svc["spec"]["selector"], pod_labels(sts))
    assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels(sts))
    c = node_container(objs)
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in [p["name"] for p in c["ports"]]
        assert port["port"] == named_port(c, port["targetPort"])


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_drains_before_sigkill(source):
    objs = SOURCES[source]()
    sts = node_sts(objs)
    c = node_container(objs)
    exit_timeout = int(flags_of(objs, c)["--exit-timeout-secs"])
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + exit_timeout, (
        f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop[1]} s + --exit-timeout-secs {exit_timeout}"
    )


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_models_volume(source):
    objs = SOURCES[source]()
    sts = node_sts(objs)
    c = node_container(objs)
    repo = flags_of(objs, c)["--model-repository"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert repo in mounts and mounts[repo]["readOnly"] is True
    volume = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[repo]["name"]][0]
    if "persistentVolumeClaim" in volume:
        pvc = find(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        modes = pvc["spec"]["accessModes"]
        # One node replica may share a ReadWriteOnce claim; more need a claim many mount.
        assert modes == ["ReadWriteOnce"] and sts["spec"]["replicas"] == 1 or set(modes) & {"ReadOnlyMany", "ReadWriteMany"}
    else:
        assert "emptyDir" in volume or "hostPath" in volume
        if "emptyDir" in volume:
            init = sts["spec"]["template"]["spec"]["initContainers"][0]
            assert volume["name"] in [m["name"] for m in init["volumeMounts"]]


@pytest.mark.parametrize("source", list(SOURCES))
def test_images_run_tini_as_pid1(source):
    objs = SOURCES[source]()
    for workload in find_all(objs, "StatefulSet") + find_all(objs, "Deployment"):
        # Tern's containers (extraContainers are the user's own sidecars).
        for c in [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"].startswith("tern-")]:
            assert c["command"][:2] == ["/usr/bin/tini", "--"], c["command"]
            assert c["command"][2] in ("tern-node", "tern-router")
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("source", list(SOURCES))
def test_gpu_requests(source):
    objs = SOURCES[source]()
    c = node_container(objs)
    gpu = "gpu" in source or source == "helm-full"
    limits = c["resources"].get("limits", {})
    if gpu:
        assert limits.get("nvidia.com/gpu", 0) >= 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert c["image"].endswith("-cuda")
        tolerations = node_sts(objs)["spec"]["template"]["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    else:
        assert "nvidia.com/gpu" not in limits and not c["image"].endswith("-cuda")


@pytest.mark.parametrize("source", WITH_ROUTER)
def test_router_service_hpa_pdb(source):
    objs = SOURCES[source]()
    dep = router_deploy(objs)
    c = router_container(objs)
    flags = flags_of(objs, c)
    grpc, metrics = int(flags["--grpc-port"]), int(flags["--metrics-port"])
    assert named_port(c, "grpc") == grpc and named_port(c, "metrics") == metrics
    # Readiness: a node can serve (the router's HTTP /v2/health/ready).
    check_http_readiness(c["readinessProbe"], flags, c)
    check_health_probe(c["livenessProbe"], flags, c, "/v2/health/live")
    svc = find(objs, "Service", dep["metadata"]["name"])
    assert selects(svc["spec"]["selector"], pod_labels(dep))
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("grpc", grpc, "grpc"),
        ("http", int(flags["--http-port"]), "http"),
        ("metrics", metrics, "metrics"),
    }
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = find(objs, "PodDisruptionBudget", dep["metadata"]["name"])
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(dep))


@pytest.mark.parametrize("source", WITH_ROUTER)
def test_router_finds_nodes_through_headless_service(source):
    objs = SOURCES[source]()
    flags = flags_of(objs, router_container(objs))
    sts = node_sts(objs)
    ns = sts["metadata"]["namespace"]
    grpc = int(flags_of(objs, node_container(objs))["--grpc-port"])
    assert flags["--node-dns"] == f"{sts['spec']['serviceName']}.{ns}.svc.cluster.local:{grpc}"


@pytest.mark.parametrize("source", list(SOURCES))
def test_network_policy_lets_only_routers_reach_nodes(source):
    objs = SOURCES[source]()
    policy = find(objs, "NetworkPolicy", "tern-node")
    sts = node_sts(objs)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(sts))
    node_flags = flags_of(objs, node_container(objs))
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    grpc_rule = by_port[int(node_flags["--grpc-port"])]
    if source in WITH_ROUTER:
        routers = pod_labels(router_deploy(objs))
        peers = grpc_rule["from"]
        assert any(selects(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), routers) for p in peers)
        assert all("podSelector" in p or "namespaceSelector" in p for p in peers)
        assert not selects(peers[0]["podSelector"]["matchLabels"], pod_labels(sts)), "nodes must not reach nodes"
    if node_flags.get("--allow-metrics", "true") == "true":
        metrics_rule = by_port[int(node_flags["--metrics-port"])]
        assert all("podSelector" in p or "namespaceSelector" in p for p in metrics_rule["from"])
    assert set(by_port) <= {int(node_flags["--grpc-port"]), int(node_flags["--metrics-port"])}


@pytest.mark.parametrize("source", ["k8s", "k8s-gpu", "helm-full", "k8s-secure", "helm-secure"])
def test_service_monitor_scrapes_both_tiers_with_alert_job_names(source):
    objs = SOURCES[source]()
    sm = find(objs, "ServiceMonitor")
    services = [s for s in find_all(objs, "Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    jobs = {s["metadata"]["labels"][sm["spec"]["jobLabel"]] for s in services}
    assert jobs == {"tern-node", "tern-router"}
    for svc in services:
        assert sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]]
    alerts = (ROOT / "deploy/prometheus/tern-alerts.yml").read_text()
    assert 'job=~"tern-node|tern-router"' in alerts
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert {j["job_name"] for j in scrape["scrape_configs"]} == jobs
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])


# The cluster store (README, "Cluster state: memory or etcd"): the memory store passes no flag.
STORE_FLAGS = {"--cluster-store", "--cluster-store-prefix", "--node-lease-ttl-secs", "--etcd-username", "--etcd-password-file",
               "--etcd-ca-file", "--etcd-cert-file", "--etcd-key-file"}
# Each source's --cluster-store, prefix and TTL; None: the memory store.
EXPECTED_STORE = {
    "k8s-etcd": ("etcd://tern-etcd.tern.svc.cluster.local:2379", "/tern", "10"),
    "k8s-secure-etcd": ("etcd://tern-etcd.tern.svc.cluster.local:2379", "/tern", "10"),
    "helm-etcd": ("etcd://tern-etcd.tern.svc.cluster.local:2379", "/tern", "10"),
    "helm-etcd-external": (
        "etcd://etcd-0.etcd.db.svc.cluster.local:2379,etcd-1.etcd.db.svc.cluster.local:2379,"
        "etcd-2.etcd.db.svc.cluster.local:2379", "/tern-prod", "15",
    ),
}


@pytest.mark.parametrize("source", WITH_ROUTER)
def test_router_cluster_store(source):
    objs = SOURCES[source]()
    flags = flags_of(objs, router_container(objs))
    expected = EXPECTED_STORE.get(source)
    etcd_objects = [o for o in objs if o["metadata"]["name"].endswith("-etcd")]
    if expected is None:
        assert not STORE_FLAGS & set(flags), "no etcd configured: the memory store, no store flag"
        assert not etcd_objects
        return
    assert (flags["--cluster-store"], flags["--cluster-store-prefix"], flags["--node-lease-ttl-secs"]) == expected
    trial = [o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "tern-etcd"]
    assert bool(trial) == ("external" not in source)
    if not trial:
        assert not etcd_objects, "an existing etcd: the release runs none"
        return
    # The store names the trial's headless Service, on the port the member serves clients on.
    sts = trial[0]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    svc = find(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and selects(svc["spec"]["selector"], pod_labels(sts))
    (host_port,) = expected[0].removeprefix("etcd://").split(",")
    host, port = host_port.rsplit(":", 1)
    assert host == f"{svc['metadata']['name']}.{sts['metadata']['namespace']}.svc.cluster.local"
    (svc_port,) = svc["spec"]["ports"]
    etcd = container(sts, "etcd")
    assert int(port) == svc_port["port"] == named_port(etcd, svc_port["targetPort"])
    etcd_flags = dict(a.split("=", 1) for a in etcd["command"][1:])
    assert etcd_flags["--listen-client-urls"] == f"http://0.0.0.0:{port}"
    assert etcd_flags["--advertise-client-urls"] == f"http://{host_port}"
    assert etcd_flags["--data-dir"].startswith(etcd["volumeMounts"][0]["mountPath"] + "/")
    assert etcd["volumeMounts"][0]["name"] == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    # Its NetworkPolicy lets routers, and only them, reach the client port.
    policy = find(objs, "NetworkPolicy", "tern-etcd")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(sts))
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [int(port)]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(router_deploy(objs)))
    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(node_sts(objs)))
    for probe in ("readinessProbe", "livenessProbe"):
        assert etcd[probe]["httpGet"]["path"].startswith("/health")
        assert named_port(etcd, etcd[probe]["httpGet"]["port"]) == int(etcd_flags["--listen-metrics-urls"].rsplit(":", 1)[1])
    assert etcd["securityContext"]["readOnlyRootFilesystem"] is True
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --- deploy/k8s and the chart describe the same cluster ---------------------------------------

PAIRS = [("k8s", "helm-default"), ("k8s-gpu", "helm-gpu"), ("k8s-secure", "helm-secure"), ("k8s-etcd", "helm-etcd")]


def _strip_container(c):
    c = dict(c)
    c.pop("image")
    c.pop("envFrom")
    return c


@pytest.mark.parametrize("plain,chart", PAIRS)
def test_same_configmaps(plain, chart):
    a, b = SOURCES[plain](), SOURCES[chart]()
    for name in ("tern-node-config", "tern-router-config"):
        assert find(a, "ConfigMap", name)["data"] == find(b, "ConfigMap", name)["data"], name


@pytest.mark.parametrize("plain,chart", PAIRS)
def test_same_containers(plain, chart):
    a, b = SOURCES[plain](), SOURCES[chart]()
    for get in (node_container, router_container):
        ca, cb = get(a), get(b)
        assert _strip_container(ca) == _strip_container(cb)
        assert resolve_args(a, ca) == resolve_args(b, cb)
        assert ca["image"].split(":")[1] == cb["image"].split(":")[1], "image tags differ"


@pytest.mark.parametrize("plain,chart", PAIRS)
def test_same_pod_specs(plain, chart):
    a, b = SOURCES[plain](), SOURCES[chart]()
    for get in (node_sts, router_deploy):
        pa, pb = get(a)["spec"]["template"]["spec"], get(b)["spec"]["template"]["spec"]
        for key in ("terminationGracePeriodSeconds", "securityContext", "volumes", "serviceAccountName",
                    "automountServiceAccountToken"):
            assert pa.get(key) == pb.get(key), key
        assert pa.get("tolerations") == pb.get("tolerations")
        assert pa.get("nodeSelector") == pb.get("nodeSelector")
    sa, sb = node_sts(a)["spec"], node_sts(b)["spec"]
    for key in ("serviceName", "replicas", "podManagementPolicy", "updateStrategy"):
        assert sa[key] == sb[key], key
    assert router_deploy(a)["spec"]["strategy"] == router_deploy(b)["spec"]["strategy"]


@pytest.mark.parametrize("plain,chart", PAIRS)
def test_same_services_and_policies(plain, chart):
    a, b = SOURCES[plain](), SOURCES[chart]()

    def ports(svc):
        s = dict(svc["spec"])
        s.pop("selector")
        return s

    for name in ("tern-node-headless", "tern-router"):
        assert ports(find(a, "Service", name)) == ports(find(b, "Service", name)), name
        assert find(a, "Service", name)["metadata"]["labels"]["tern/job"] == find(b, "Service", name)["metadata"]["labels"]["tern/job"]
    for kind in ("HorizontalPodAutoscaler",):
        assert find(a, kind)["spec"] == find(b, kind)["spec"]
    for name in ("tern-node", "tern-router"):
        pa, pb = find(a, "PodDisruptionBudget", name)["spec"], find(b, "PodDisruptionBudget", name)["spec"]
        pa, pb = {k: v for k, v in pa.items() if k != "selector"}, {k: v for k, v in pb.items() if k != "selector"}
        assert pa == pb
    na, nb = find(a, "NetworkPolicy", "tern-node")["spec"]["ingress"], find(b, "NetworkPolicy", "tern-node")["spec"]["ingress"]
    assert sorted(r["ports"][0]["port"] for r in na) == sorted(r["ports"][0]["port"] for r in nb)
    pvc_a, pvc_b = find(a, "PersistentVolumeClaim")["spec"], find(b, "PersistentVolumeClaim")["spec"]
    assert pvc_a == pvc_b


def test_same_etcd_trial():
    """components/etcd and the chart's etcd.trial run the same member behind the same Service
    and policy (labels and selectors aside: the chart's carry the release)."""
    a, b = SOURCES["k8s-etcd"](), SOURCES["helm-etcd"]()
    sa, sb = find(a, "StatefulSet", "tern-etcd")["spec"], find(b, "StatefulSet", "tern-etcd")["spec"]
    for key in ("serviceName", "replicas", "podManagementPolicy", "updateStrategy", "volumeClaimTemplates"):
        assert sa[key] == sb[key], key
    pa, pb = dict(sa["template"]["spec"]), dict(sb["template"]["spec"])
    assert pa == pb
    va, vb = dict(find(a, "Service", "tern-etcd")["spec"]), dict(find(b, "Service", "tern-etcd")["spec"])
    va.pop("selector"), vb.pop("selector")
    assert va == vb
    ra, rb = find(a, "NetworkPolicy", "tern-etcd")["spec"]["ingress"], find(b, "NetworkPolicy", "tern-etcd")["spec"]["ingress"]
    assert [r["ports"] for r in ra] == [r["ports"] for r in rb]


# helm-full scrapes with its own tlsConfig and a token: compared without them.
_SCRAPE_SECURITY = {"scheme", "tlsConfig", "authorization"}


@pytest.mark.parametrize("plain,chart,ignore", [("k8s", "helm-full", _SCRAPE_SECURITY), ("k8s-secure", "helm-secure", set())])
def test_same_monitoring(plain, chart, ignore):
    a, b = SOURCES[plain](), SOURCES[chart]()
    sa, sb = find(a, "ServiceMonitor")["spec"], find(b, "ServiceMonitor")["spec"]
    assert sa["jobLabel"] == sb["jobLabel"]
    skip = ignore | {"interval"}
    assert [{k: v for k, v in e.items() if k not in skip} for e in sa["endpoints"]] == [
        {k: v for k, v in e.items() if k not in skip} for e in sb["endpoints"]
    ]
    assert find(a, "PrometheusRule")["spec"] == find(b, "PrometheusRule")["spec"]


# --- the flags are ones the binaries accept ---------------------------------------------------


def _check_flags(binary: str, flags_by_source: dict[str, list[tuple[str, str | None]]]):
    found = binary_help(binary)
    assert found is not None, (
        f"{binary} not built: run `cargo build --release -p {binary}` (or set {binary.upper().replace('-', '_')}_BIN)"
    )
    exe, help_text = found
    accepted = parse_help(help_text)
    assert len(accepted) > 5, f"could not parse `{exe} --help`:\n{help_text}"
    problems = []
    for source, flags in flags_by_source.items():
        for flag, value in flags:
            spec = accepted.get(flag)
            if spec is None:
                problems.append(f"{source}: {flag} is not a {binary} flag")
            elif spec.takes_value and value is None:
                problems.append(f"{source}: {flag} needs a value")
            elif spec.possible_values and value not in spec.possible_values:
                problems.append(f"{source}: {flag}={value} not in {spec.possible_values}")
            elif value is not None and re.search(r"secs|port|count|verbose|size|bytes|streams", flag) and not value.isdigit():
                problems.append(f"{source}: {flag}={value} is not a number")
    assert not problems, f"{exe} --help does not accept:\n" + "\n".join(problems)


def test_node_flags_accepted_by_tern_node():
    flags = {}
    for source, objs in SOURCES.items():
        objs = objs()
        c = node_container(objs)
        flags[source] = split_flags(resolve_args(objs, c))
    _check_flags("tern-node", flags)


def test_router_flags_accepted_by_tern_router():
    flags = {}
    for source in WITH_ROUTER:
        objs = SOURCES[source]()
        flags[source] = split_flags(resolve_args(objs, router_container(objs)))
    _check_flags("tern-router", flags)


def test_otel_environment_names_are_read_by_telemetry():
    """Tracing is configured through OTEL_* variables; the telemetry crate must read them."""
    code = "\n".join(p.read_text() for p in (ROOT / "crates/telemetry/src").rglob("*.rs"))
    for objs in (SOURCES["helm-full"](), SOURCES["k8s"]()):
        for c in (node_container(objs), router_container(objs)):
            for name in container_env(objs, c):
                if name.startswith("OTEL_"):
                    assert name in code or name.replace("_ARG", "") in code, f"{name} is not read by crates/telemetry"


# The security flags the chart and the components pass (deploy/k8s/components, helm/tern
# templates/_security.tpl): each must be exercised by some source above, so that the two
# tests before this one check it against --help.
NODE_SECURITY_FLAGS = {
    "--grpc-use-ssl", "--grpc-server-cert", "--grpc-server-key", "--grpc-use-ssl-mutual", "--grpc-root-cert",
    "--metrics-use-ssl", "--auth-token-file", "--auth-public",
    "--grpc-max-message-size", "--grpc-max-concurrent-streams", "--grpc-http2-max-header-list-size",
    "--max-tensor-bytes", "--max-request-bytes",
}
ROUTER_SECURITY_FLAGS = (NODE_SECURITY_FLAGS - {"--max-tensor-bytes", "--max-request-bytes"}) | {
    "--node-tls-ca", "--node-tls-cert", "--node-tls-key", "--node-tls-domain", "--node-token-file",
}


def test_security_flags_are_exercised():
    node, router = set(), set()
    for source, objs in SOURCES.items():
        objs = objs()
        node |= {f for f, _ in split_flags(resolve_args(objs, node_container(objs)))}
        if source in WITH_ROUTER:
            router |= {f for f, _ in split_flags(resolve_args(objs, router_container(objs)))}
    assert not NODE_SECURITY_FLAGS - node, f"no source passes {sorted(NODE_SECURITY_FLAGS - node)} to tern-node"
    assert not ROUTER_SECURITY_FLAGS - router, f"no source passes {sorted(ROUTER_SECURITY_FLAGS - router)} to tern-router"


def _template_flags(text: str) -> set[str]:
    """Flags written as list items of args (`- --flag...` or `value: --flag...`)."""
    return set(re.findall(r"^\s*(?:- |value: )\"?(--[a-z0-9][a-z0-9-]*)", text, re.M))


def test_every_flag_in_templates_and_components_is_accepted():
    """Statically, including branches no values file renders: a flag written in a node or
    router template, in _security.tpl or in a component patch is one the binary accepts."""
    helps = {}
    for b in ("tern-node", "tern-router"):
        found = binary_help(b)
        assert found is not None, f"{b} not built: cargo build --release -p {b}"
        helps[b] = set(parse_help(found[1]))
    templates = ROOT / "helm/tern/templates"
    components = ROOT / "deploy/k8s/components"
    wanted = {
        "tern-node": [templates / "node-statefulset.yaml", *components.rglob("node-*.yaml")],
        "tern-router": [templates / "router-deployment.yaml", *components.rglob("router-*.yaml")],
    }
    problems = []
    for b, paths in wanted.items():
        for path in paths:
            problems += [f"{path.relative_to(ROOT)}: {f}" for f in _template_flags(path.read_text()) - helps[b]]
    # Shared helpers and inline component patches: the flag must be accepted by the binary of
    # every component it is passed to; a union check is what can be said statically.
    for path in [templates / "_security.tpl", *components.rglob("kustomization.yaml")]:
        problems += [f"{path.relative_to(ROOT)}: {f}" for f in _template_flags(path.read_text()) - (helps["tern-node"] | helps["tern-router"])]
    assert not problems, "flags neither binary accepts:\n" + "\n".join(problems)
    seen = set().union(*(_template_flags(p.read_text()) for p in [templates / "_security.tpl"]))
    assert NODE_SECURITY_FLAGS | ROUTER_SECURITY_FLAGS <= seen, "the scan found no flags: is the pattern stale?"
