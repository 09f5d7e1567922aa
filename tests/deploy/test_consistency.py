"""The chart and deploy/k8s agree with each other and with the code: ports, probes, flags.

Each source (deploy/k8s and the chart rendered as release "tern" in namespace "tern") must be
consistent in itself (args resolve from their ConfigMaps, ports match containerPorts, Services,
probes and NetworkPolicies, the grace period covers the drain), the two must describe the same
pods, and every flag they pass to tern-node must be one `tern-node --help` lists, with a value it
accepts; tern-router's flags the same way against `tern-router --help`."""

from __future__ import annotations

import re

import pytest
import yaml

from deploylib import (
    ROOT,
    binary_help,
    chart_objects,
    container,
    container_env,
    find,
    find_all,
    kustomize_objects,
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
}
WITH_ROUTER = [s for s in SOURCES if s != "helm-minimal"]


def node_sts(objs):
    return find(objs, "StatefulSet")


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


# --- each source in itself --------------------------------------------------------------------


@pytest.mark.parametrize("source", list(SOURCES))
def test_node_ports_and_probes(source):
    objs = SOURCES[source]()
    c = node_container(objs)
    flags = flags_of(objs, c)
    grpc = int(flags["--grpc-port"])
    assert named_port(c, "grpc") == grpc
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc, f"{probe} must use the gRPC health service on {grpc}"
    ready = c["readinessProbe"]
    if flags.get("--allow-metrics", "true") == "true":
        metrics = int(flags["--metrics-port"])
        assert named_port(c, "metrics") == metrics
        assert ready["httpGet"]["path"] == "/v2/health/ready"
        assert ready["httpGet"]["port"] in ("metrics", metrics)
    else:
        assert named_port(c, "metrics") is None
        assert ready["grpc"]["port"] == grpc


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
        assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    else:
        assert "emptyDir" in volume or "hostPath" in volume
        if "emptyDir" in volume:
            init = sts["spec"]["template"]["spec"]["initContainers"][0]
            assert volume["name"] in [m["name"] for m in init["volumeMounts"]]


@pytest.mark.parametrize("source", list(SOURCES))
def test_images_run_tini_as_pid1(source):
    objs = SOURCES[source]()
    for workload in find_all(objs, "StatefulSet") + find_all(objs, "Deployment"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
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
    assert c["readinessProbe"]["grpc"]["port"] == grpc and c["livenessProbe"]["grpc"]["port"] == grpc
    svc = find(objs, "Service", dep["metadata"]["name"])
    assert selects(svc["spec"]["selector"], pod_labels(dep))
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("grpc", grpc, "grpc"),
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
    policy = find(objs, "NetworkPolicy")
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
        assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert set(by_port) <= {int(node_flags["--grpc-port"]), int(node_flags["--metrics-port"])}


@pytest.mark.parametrize("source", ["k8s", "k8s-gpu", "helm-full"])
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


# --- deploy/k8s and the chart describe the same cluster ---------------------------------------

PAIRS = [("k8s", "helm-default"), ("k8s-gpu", "helm-gpu")]


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
    na, nb = find(a, "NetworkPolicy")["spec"]["ingress"], find(b, "NetworkPolicy")["spec"]["ingress"]
    assert sorted(r["ports"][0]["port"] for r in na) == sorted(r["ports"][0]["port"] for r in nb)
    pvc_a, pvc_b = find(a, "PersistentVolumeClaim")["spec"], find(b, "PersistentVolumeClaim")["spec"]
    assert pvc_a == pvc_b


def test_same_monitoring():
    a, b = SOURCES["k8s"](), SOURCES["helm-full"]()
    sa, sb = find(a, "ServiceMonitor")["spec"], find(b, "ServiceMonitor")["spec"]
    assert sa["jobLabel"] == sb["jobLabel"]
    assert [{k: v for k, v in e.items() if k != "interval"} for e in sa["endpoints"]] == [
        {k: v for k, v in e.items() if k != "interval"} for e in sb["endpoints"]
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
            elif value is not None and re.search(r"secs|port|count|verbose", flag) and not value.isdigit():
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
