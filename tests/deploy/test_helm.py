"""helm/tern through Helm's own Go SDK (helm-python-sdk): lint, schema, rendering, README."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest
import yaml

from deploylib import (
    CHART,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_FILES,
    chart_objects,
    find,
    load_values,
    render_chart,
    resolve_args,
    secret_file,
    split_flags,
)

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("values_name", list(VALUE_FILES))
def test_lint_strict(values_name):
    report = helm.lint(
        str(CHART), load_values(values_name), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= WARNING] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not problems, json.dumps(report, indent=2)


@pytest.mark.parametrize("values_name", list(VALUE_FILES))
def test_values_match_schema(values_name):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(load_values(values_name))


@pytest.mark.parametrize(
    "bad",
    [
        {"node": {"replicaz": 3}},
        {"node": {"modelControlMode": "lazy"}},
        {"models": {"source": "s3"}},
        {"models": {"url": {"uri": "ftp://x"}}},
        {"ingress": {"servicePort": "metrics"}},
        {"gatewayApi": {"grpcRoute": {"parentRefs": [{"namespace": "x"}]}}},
        {"ports": {"grpc": 70000}},
        {"tracing": {"sampleRatio": 2}},
        {"gpu": {"count": 0}},
        {"etcd": {"endpoints": ["http://etcd:2379"]}},
        {"etcd": {"endpoints": ["etcd"]}},
        {"etcd": {"endpoints": "etcd:2379"}},
        {"etcd": {"prefix": "tern"}},
        {"etcd": {"prefix": "/"}},
        {"etcd": {"nodeLeaseTtlSecs": 1}},
        {"etcd": {"nodeLeaseTtlSecs": 301}},
        {"etcd": {"trial": {"enabled": "yes"}}},
        {"etcd": {"auth": {"existingSecret": "s", "passwordKey": ""}}},
        {"etcd": {"tls": True}},
    ],
)
def test_schema_rejects_bad_values(bad):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


@pytest.mark.parametrize("values_name", list(VALUE_FILES))
def test_renders_parseable_objects(values_name):
    objs = chart_objects(values_name)
    kinds = {o["kind"] for o in objs}
    assert {"StatefulSet", "Service", "ConfigMap"} <= kinds
    for o in objs:
        assert o["metadata"]["name"] and len(o["metadata"]["name"]) <= 63, o["metadata"]
        assert "namespace" in o["metadata"], f"{o['kind']} {o['metadata']['name']} has no namespace"
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_default_render_objects():
    kinds = sorted(o["kind"] for o in chart_objects("default"))
    assert kinds == sorted(
        [
            "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
            "PersistentVolumeClaim", "PodDisruptionBudget", "PodDisruptionBudget", "Service", "Service",
            "ServiceAccount", "ServiceAccount", "StatefulSet", "Pod",
        ]
    ), "ServiceMonitor/PrometheusRule need the Prometheus Operator, Ingress/GRPCRoute a controller: off by default"


def test_default_installs_on_a_stock_cluster():
    """A ReadWriteOnce claim (every storage class provides it) and one node replica to mount it."""
    objs = chart_objects("default")
    pvc = find(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in pvc["spec"]
    assert find(objs, "StatefulSet")["spec"]["replicas"] == 1


def test_helm_test_hook_runs_an_inference():
    pod = find(chart_objects("full"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TERN_HOST"] == "tern-router.tern.svc.cluster.local" and env["TERN_PORT"] == "8000"
    assert env["TERN_TEST_MODEL"] == "tiny_add" and json.loads(env["TERN_TEST_REQUEST"])["inputs"][0]["name"] == "INPUT0"
    script = c["command"][-1]
    assert '"$base/v2/models/$TERN_TEST_MODEL/infer"' in script and "/v2/health/ready" in script
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/tern/tls", "/etc/tern/tls-ca", "/etc/tern/test-token"} <= mounts, "TLS CA and the test's token"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Without routers the test asks the nodes' headless Service.
    minimal = find(chart_objects("minimal"), "Pod")
    assert {e["name"]: e["value"] for e in minimal["spec"]["containers"][0]["env"]}["TERN_HOST"].startswith("tern-node-headless.")


def test_helm_test_script_is_valid_sh(tmp_path):
    import subprocess

    for values_name in ("default", "full"):
        script = tmp_path / f"{values_name}.sh"
        script.write_text(find(chart_objects(values_name), "Pod")["spec"]["containers"][0]["command"][-1])
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_ingress_and_grpcroute_point_at_the_routers():
    objs = chart_objects("full")
    ingress = find(objs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "tern-router", "port": {"name": "grpc"}}
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/"
    route = find(objs, "GRPCRoute")
    assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "gateways", "sectionName": "grpc"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "tern-router", "port": 8001}]
    assert not [o for o in chart_objects("default") if o["kind"] in ("Ingress", "GRPCRoute")]


def test_grpcroute_needs_a_gateway():
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="parentRefs"):
        chart.render({"gatewayApi": {"grpcRoute": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)


def test_extra_volumes_and_containers():
    objs = chart_objects("full")
    node = find(objs, "StatefulSet")["spec"]["template"]["spec"]
    assert [c["name"] for c in node["containers"]] == ["tern-node", "models-sync"]
    assert [c["name"] for c in node["initContainers"]] == ["models", "warm-cache"]
    assert "labels" in [v["name"] for v in node["volumes"]]
    assert {"name": "labels", "mountPath": "/etc/labels", "readOnly": True} in node["containers"][0]["volumeMounts"]
    router = find(objs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in router["containers"]] == ["tern-router", "log-shipper"]
    assert "router-scratch" in [v["name"] for v in router["volumes"]]
    assert "/scratch" in [m["mountPath"] for m in router["containers"][0]["volumeMounts"]]


def test_models_from_a_url():
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError, match="models.url.uri"):
            chart.render({"models": {"source": "url"}}, name=RELEASE, namespace=NAMESPACE)
        out = chart.render(
            {"models": {"source": "url", "url": {"uri": "https://example.com/models.tar.gz", "stripComponents": 1}},
             "node": {"replicas": 3}},
            name=RELEASE, namespace=NAMESPACE,
        )
    objs = [d for k, t in out.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    pod = find(objs, "StatefulSet")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["MODELS_URL"] == "https://example.com/models.tar.gz" and env["MODELS_STRIP_COMPONENTS"] == "1"
    assert "curl" in init["command"][-1] and "tar -xzf" in init["command"][-1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["models"] and "emptyDir" in volumes["models-download"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_network_policy_metrics_peers_are_configurable():
    rule = [r for r in find(chart_objects("full"), "NetworkPolicy")["spec"]["ingress"] if r["ports"][0]["port"] == 8002][0]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render({"networkPolicy": {"monitoringNamespace": ""}}, name=RELEASE, namespace=NAMESPACE)
    policy = yaml.safe_load(out["tern/templates/networkpolicy.yaml"])
    metrics = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8002][0]
    assert "from" not in metrics, "no peers configured: the metrics port is open"


def test_full_render_has_monitoring_and_init_container():
    objs = chart_objects("full")
    assert find(objs, "ServiceMonitor")["metadata"]["namespace"] == "monitoring"
    assert find(objs, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"
    sts = find(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.example.com/models:v1"
    assert [v for v in pod["volumes"] if v["name"] == "models"][0]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert pod["runtimeClassName"] == "nvidia"
    c = pod["containers"][0]
    assert c["image"] == "registry.example.com/tern:1.2.3-cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"--server-name=triton", "--load-model=tiny", "--load-model=resnet"} <= set(c["args"])
    assert pod["terminationGracePeriodSeconds"] == 60 + 10 + 10
    router = find(objs, "Deployment")
    assert router["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/tern:1.2.3", (
        "routers stay on the CPU image"
    )


def test_minimal_render_without_router_and_metrics():
    objs = chart_objects("minimal")
    assert not [o for o in objs if o["kind"] in ("Deployment", "HorizontalPodAutoscaler", "ServiceMonitor")]
    sts = find(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert [p["name"] for p in c["ports"]] == ["grpc", "http"]
    assert c["readinessProbe"]["httpGet"]["port"] == "http", "readiness: /v2/health/ready on the HTTP port"
    assert [v for v in pod["volumes"] if v["name"] == "models"][0]["hostPath"]["path"] == "/data/models"
    assert pod["serviceAccountName"] == "default"
    policy = find(objs, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8001, "protocol": "TCP"}]}], (
        "no routers and no extraGrpcFrom: gRPC open, no metrics rule"
    )


def test_init_container_source_requires_image():
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="models.initContainer.image"):
        chart.render({"models": {"source": "initContainer"}}, name=RELEASE, namespace=NAMESPACE)


def test_load_models_need_explicit_mode():
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="explicit"):
        chart.render({"node": {"loadModels": ["x"], "modelControlMode": "none"}}, name=RELEASE, namespace=NAMESPACE)


def test_config_change_rolls_pods():
    with helm.Chart.load(str(CHART)) as chart:

        def checksum(values):
            out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
            sts = yaml.safe_load(out["tern/templates/node-statefulset.yaml"])
            return sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

        assert checksum({}) != checksum({"node": {"exitTimeoutSecs": 31}})


def test_release_name_other_than_tern():
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render({}, name="prod", namespace="ml")
    objs = [d for k, t in out.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("StatefulSet", "prod-tern-node") in names and ("Service", "prod-tern-node-headless") in names
    cm = find(objs, "ConfigMap", "prod-tern-router-config")
    assert cm["data"]["TERN_NODE_DNS"] == "prod-tern-node-headless.ml.svc.cluster.local:8001"


@pytest.mark.parametrize("values_name", ["default", "minimal"])
def test_notes_say_how_to_reach_the_service(values_name):
    notes = render_chart(values_name)["tern/templates/NOTES.txt"]
    assert "port-forward" in notes and "tritonclient" in notes
    target = "svc/tern-router 8001:8001" if values_name == "default" else "pod/tern-node-0 8001:8001"
    assert target in notes, notes


def _leaf_paths(values, prefix=""):
    opaque = {"podSecurityContext", "securityContext", "resources"}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and key not in opaque:
            yield from _leaf_paths(value, path)
        else:
            yield path


def test_readme_lists_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    paths = set(_leaf_paths(values))
    assert not paths - listed, f"values missing from helm/tern/README.md: {sorted(paths - listed)}"
    assert not listed - paths, f"README lists values that do not exist: {sorted(listed - paths)}"


def test_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v, s, path):
        assert s.get("type") == "object" or "properties" in s, f"{path}: not an object in the schema"
        for key, sub in v.items():
            props = s.get("properties", {})
            assert key in props or s.get("additionalProperties", True) is not False, f"{path}.{key} not in schema"
            if isinstance(sub, dict) and key in props and "properties" in props[key]:
                walk(sub, props[key], f"{path}.{key}")

    walk(values, schema, "values")


# --- the cluster store (etcd.*) -------------------------------------------------------------


def _router(objs):
    c = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return c, dict(split_flags(resolve_args(objs, c)))


def _objects(values, name=RELEASE, namespace=NAMESPACE):
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=name, namespace=namespace, is_install=True)
    return [d for k, t in sorted(out.items()) if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def test_default_has_no_cluster_store():
    """The memory store, as before etcd: no flag, no ConfigMap key, no etcd object."""
    objs = chart_objects("default")
    c, flags = _router(objs)
    assert not [f for f in flags if f.startswith("--cluster-store") or f.startswith("--etcd-") or f == "--node-lease-ttl-secs"]
    assert not [k for k in find(objs, "ConfigMap", "tern-router-config")["data"] if "CLUSTER_STORE" in k or "LEASE" in k]
    assert not [o for o in objs if "etcd" in o["metadata"]["name"]]
    assert render_chart("default")["tern/templates/etcd-trial.yaml"].strip() == ""


def test_existing_etcd_with_auth():
    objs = chart_objects("etcd-external")
    c, flags = _router(objs)
    assert flags["--cluster-store"] == (
        "etcd://etcd-0.etcd.db.svc.cluster.local:2379,etcd-1.etcd.db.svc.cluster.local:2379,etcd-2.etcd.db.svc.cluster.local:2379"
    )
    assert flags["--cluster-store-prefix"] == "/tern-prod" and flags["--node-lease-ttl-secs"] == "15"
    assert not [o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] != "tern-node"], "no trial etcd"
    # The user name from the Secret's usernameKey through the environment, the password as a file.
    assert flags["--etcd-username"] == "secret:tern-etcd-credentials/user"
    name, key, volume = secret_file(find(objs, "Deployment"), c, flags["--etcd-password-file"])
    assert (name, key) == ("tern-etcd-credentials", "password") and volume["secret"]["defaultMode"] == 0o440
    # TLS to etcd (rustls): the CA, the client certificate and key from one Secret, as files.
    for flag, wanted in (("--etcd-ca-file", "ca.crt"), ("--etcd-cert-file", "tls.crt"), ("--etcd-key-file", "tls.key")):
        name, key, volume = secret_file(find(objs, "Deployment"), c, flags[flag])
        assert (name, key) == ("tern-etcd-client-tls", wanted) and volume["secret"]["defaultMode"] == 0o440
    # A CA alone (etcd without --client-cert-auth): no client certificate flags.
    _, flags = _router(_objects({"etcd": {"endpoints": ["etcd:2379"],
                                          "tls": {"existingSecret": "ca-only", "certKey": "", "keyKey": ""}}}))
    assert "--etcd-ca-file" in flags and "--etcd-cert-file" not in flags and "--etcd-key-file" not in flags
    # Routers still need no Kubernetes API access: no token mounted.
    assert find(objs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def test_trial_etcd():
    objs = chart_objects("etcd")
    _, flags = _router(objs)
    assert flags["--cluster-store"] == "etcd://tern-etcd.tern.svc.cluster.local:2379"
    assert "--etcd-username" not in flags and "--etcd-password-file" not in flags, "the trial has no authentication"
    sts = find(objs, "StatefulSet", "tern-etcd")
    etcd = sts["spec"]["template"]["spec"]["containers"][0]
    assert etcd["image"].startswith(("quay.io/coreos/etcd:v3.5.", "registry.k8s.io/etcd:3.5.")), "a pinned etcd 3.5"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert find(objs, "Service", "tern-etcd")["spec"]["clusterIP"] == "None"
    assert find(objs, "NetworkPolicy", "tern-etcd")
    # Without the network policy, no policy for etcd either; the storage class is passed on.
    objs = _objects({"etcd": {"trial": {"enabled": True, "persistence": {"storageClassName": "fast"}}},
                     "networkPolicy": {"enabled": False}})
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert find(objs, "StatefulSet", "tern-etcd")["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"


def test_trial_etcd_follows_the_release():
    objs = _objects({"etcd": {"trial": {"enabled": True}}}, name="prod", namespace="ml")
    _, flags = _router(objs)
    assert flags["--cluster-store"] == "etcd://prod-tern-etcd.ml.svc.cluster.local:2379"
    assert find(objs, "StatefulSet", "prod-tern-etcd")["spec"]["serviceName"] == "prod-tern-etcd"


@pytest.mark.parametrize(
    "values,message",
    [
        ({"etcd": {"endpoints": ["etcd:2379"], "trial": {"enabled": True}}}, "not both"),
        ({"etcd": {"trial": {"enabled": True}, "auth": {"existingSecret": "s"}}}, "without authentication"),
        ({"etcd": {"auth": {"existingSecret": "s"}}}, "needs etcd.endpoints"),
        ({"etcd": {"trial": {"enabled": True}, "tls": {"existingSecret": "s"}}}, "serves plain text"),
        ({"etcd": {"tls": {"existingSecret": "s"}}}, "needs etcd.endpoints"),
        ({"etcd": {"endpoints": ["etcd:2379"], "tls": {"existingSecret": "s", "keyKey": ""}}}, "go together"),
        ({"etcd": {"endpoints": ["etcd:2379"]}, "router": {"enabled": False}}, "router.enabled"),
    ],
)
def test_unworkable_etcd_values_fail_with_a_reason(values, message):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_store_change_rolls_routers():
    def checksum(values):
        return find(_objects(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"etcd": {"endpoints": ["etcd:2379"]}})
    assert checksum({"etcd": {"endpoints": ["etcd:2379"]}}) != checksum({"etcd": {"endpoints": ["etcd:2379"], "prefix": "/b"}})
