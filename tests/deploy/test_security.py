"""The security options of helm/tern (tls.*, auth.*, limits.*, metrics.serviceMonitor.tlsConfig
and tokenSecret) and of deploy/k8s/components/{tls,tls-mutual,auth}, as rendered: every file a
flag names is a key of a Secret mounted read-only, probes keep working without gRPC over TLS
and without a token, the ServiceMonitor scrapes over HTTPS with the CA and with a token where
metrics are protected, values that cannot work stop the render with a message saying why, and
with the options off the chart renders byte for byte as it does without them.

test_consistency.py checks the flags against the binaries' --help and the chart against the
components; test_live_secure.py runs the binaries with these manifests."""

from __future__ import annotations

import helm_python as helm
import pytest

from deploylib import (
    CHART,
    FILE_FLAGS,
    NAMESPACE,
    RELEASE,
    SECURE_COMPONENTS,
    chart_objects,
    container,
    find,
    kustomize_overlay_objects,
    load_values,
    render_chart,
    resolve_args,
    secret_file,
    split_flags,
    yaml_docs,
)

SOURCES = {
    "helm-secure": lambda: chart_objects("secure"),
    "helm-full": lambda: chart_objects("full"),
    "k8s-secure": lambda: kustomize_overlay_objects("k8s", SECURE_COMPONENTS),
    "k8s-gpu-tls-auth": lambda: kustomize_overlay_objects("k8s-gpu", ("tls", "auth")),
    "helm-etcd-external": lambda: chart_objects("etcd-external"),
}

# The Secrets each source expects, by component: (secret name, key) of every file flag.
EXPECTED_SECRETS = {
    "helm-secure": {
        "node": {("tern-tls", "tls.crt"), ("tern-tls", "tls.key"), ("tern-tls", "ca.crt"), ("tern-tokens", "tokens")},
        "router": {("tern-tls", "tls.crt"), ("tern-tls", "tls.key"), ("tern-tls", "ca.crt"), ("tern-tokens", "tokens"),
                   ("tern-router-token", "token")},
    },
    "helm-full": {
        "node": {("tern-server-tls", "tls.crt"), ("tern-server-tls", "tls.key"), ("tern-node-tokens", "tokens")},
        "router": {("tern-server-tls", "tls.crt"), ("tern-server-tls", "tls.key"), ("tern-ca", "ca.crt"),
                   ("tern-router-tokens", "tokens.txt"), ("tern-router-credential", "router.token")},
    },
}
EXPECTED_SECRETS["k8s-secure"] = EXPECTED_SECRETS["helm-secure"]
EXPECTED_SECRETS["helm-etcd-external"] = {
    "node": set(),
    "router": {("tern-etcd-credentials", "password"), ("tern-etcd-client-tls", "ca.crt"),
               ("tern-etcd-client-tls", "tls.crt"), ("tern-etcd-client-tls", "tls.key")},
}
EXPECTED_SECRETS["k8s-gpu-tls-auth"] = {
    "node": {("tern-tls", "tls.crt"), ("tern-tls", "tls.key"), ("tern-tokens", "tokens")},
    "router": EXPECTED_SECRETS["helm-secure"]["router"],
}


def render(values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def objects(values: dict, **kw) -> list[dict]:
    return [d for path, text in sorted(render(values, **kw).items()) if not path.endswith("NOTES.txt") for d in yaml_docs(text)]


def workloads(objs) -> dict[str, tuple[dict, dict]]:
    """component -> (workload, its container)."""
    (node,) = [o for o in objs if o["kind"] == "StatefulSet" and not o["metadata"]["name"].endswith("-etcd")]
    out = {"node": (node, container(node, "tern-node"))}
    routers = [o for o in objs if o["kind"] == "Deployment"]
    if routers:
        out["router"] = (routers[0], container(routers[0], "tern-router"))
    return out


def flags(objs, c) -> dict[str, str | None]:
    return dict(split_flags(resolve_args(objs, c)))


# --- files from Secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("source", list(SOURCES))
def test_file_flags_name_keys_of_read_only_secret_mounts(source):
    objs = SOURCES[source]()
    for component, (workload, c) in workloads(objs).items():
        refs = set()
        for flag, value in flags(objs, c).items():
            if flag in FILE_FLAGS:
                name, key, volume = secret_file(workload, c, value)
                refs.add((name, key))
                assert volume["secret"]["defaultMode"] == 0o440, "Secret files: readable by the pods' fsGroup only"
        assert refs == EXPECTED_SECRETS[source][component], f"{component}: {sorted(refs)}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["fsGroup"] == 10001, "0440 files are read through the fsGroup"
        mounted = {m["name"] for m in c["volumeMounts"]}
        assert {v["name"] for v in pod["volumes"] if "secret" in v} <= mounted, "a Secret volume nobody mounts"
        for e in c.get("env", []):
            # Except the etcd user's name: no secret, and the router takes it only as a flag.
            if e["name"] != "TERN_ETCD_USERNAME":
                assert "secretKeyRef" not in e.get("valueFrom", {}), "Secrets are mounted as files, not passed as env"


def test_secure_flags():
    objs = chart_objects("secure")
    node = flags(objs, workloads(objs)["node"][1])
    router = flags(objs, workloads(objs)["router"][1])
    both = {
        "--grpc-use-ssl": "true", "--grpc-use-ssl-mutual": "true", "--metrics-use-ssl": "true",
        "--grpc-server-cert": "/etc/tern/tls/tls.crt", "--grpc-server-key": "/etc/tern/tls/tls.key",
        "--grpc-root-cert": "/etc/tern/tls/ca.crt",
        "--auth-token-file": "/etc/tern/auth/tokens", "--auth-public": "health,metrics",
    }
    assert both.items() <= node.items() and both.items() <= router.items()
    assert {
        "--node-tls-ca": "/etc/tern/tls/ca.crt", "--node-tls-cert": "/etc/tern/tls/tls.crt",
        "--node-tls-key": "/etc/tern/tls/tls.key", "--node-tls-domain": "tern-node-headless.tern.svc.cluster.local",
        "--node-token-file": "/etc/tern/node-token/token",
    }.items() <= router.items()
    assert not {f for f in node if f.startswith("--node-") or f.startswith("--router-")}, (
        "nodes do not register with routers in these manifests (routers find them by DNS)"
    )


# --- probes and Services --------------------------------------------------------------------


def _probes(c):
    return {p: c[p] for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in c}


@pytest.mark.parametrize(
    "values,node_expect,router_expect",
    [
        ({}, {"startupProbe": "grpc", "livenessProbe": "grpc", "readinessProbe": "httpGet"},
         {"livenessProbe": "grpc", "readinessProbe": "httpGet"}),
        ({"tls": {"enabled": True}}, {"startupProbe": "httpGet", "livenessProbe": "httpGet", "readinessProbe": "httpGet"},
         {"livenessProbe": "httpGet", "readinessProbe": "httpGet"}),
        ({"tls": {"enabled": True}, "metrics": {"enabled": False}},
         {"startupProbe": "tcpSocket", "livenessProbe": "tcpSocket", "readinessProbe": "httpGet"},
         {"livenessProbe": "httpGet", "readinessProbe": "httpGet"}),
        ({"metrics": {"enabled": False}}, {"startupProbe": "grpc", "livenessProbe": "grpc", "readinessProbe": "httpGet"},
         {"livenessProbe": "grpc", "readinessProbe": "httpGet"}),
    ],
    ids=["plain", "tls", "tls-no-metrics", "plain-no-metrics"],
)
def test_probe_kinds(values, node_expect, router_expect):
    objs = objects(values)
    w = workloads(objs)
    for component, expect in (("node", node_expect), ("router", router_expect)):
        got = {name: next(k for k in ("grpc", "httpGet", "tcpSocket") if k in p) for name, p in _probes(w[component][1]).items()}
        assert got == expect, component
        for p in _probes(w[component][1]).values():
            if "httpGet" in p and p["httpGet"]["port"] == "http":
                # Readiness on the HTTP port, which speaks HTTPS with TLS.
                tls = values.get("tls", {}).get("enabled", False)
                assert p["httpGet"].get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP")
            elif "httpGet" in p:
                assert p["httpGet"].get("scheme", "HTTP") == "HTTP", "metrics stay HTTP without tls.metrics"
            if "tcpSocket" in p:
                assert p["tcpSocket"]["port"] == "grpc"


def test_probe_paths_with_tls():
    w = workloads(objects({"tls": {"enabled": True, "metrics": True}}))
    node, router = w["node"][1], w["router"][1]
    assert node["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "metrics", "scheme": "HTTPS"}
    assert node["livenessProbe"]["httpGet"] == node["startupProbe"]["httpGet"]
    assert node["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTPS"}
    assert router["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTPS"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "metrics", "scheme": "HTTPS"}
    # Thresholds as without TLS: only the action changes.
    plain = workloads(objects({}))
    for component in ("node", "router"):
        for name, p in _probes(w[component][1]).items():
            q = _probes(plain[component][1])[name]
            strip = lambda d: {k: v for k, v in d.items() if k not in ("grpc", "httpGet", "tcpSocket")}  # noqa: E731
            assert strip(p) == strip(q), f"{component} {name}"


@pytest.mark.parametrize("source", ["helm-secure", "k8s-secure"])
def test_services_drop_h2c_with_tls(source):
    objs = SOURCES[source]()
    for name in ("tern-node-headless", "tern-router"):
        grpc = [p for p in find(objs, "Service", name)["spec"]["ports"] if p["name"] == "grpc"][0]
        assert "appProtocol" not in grpc, "kubernetes.io/h2c means cleartext HTTP/2"
    for name in ("tern-node-headless", "tern-router"):
        grpc = [p for p in find(chart_objects("default"), "Service", name)["spec"]["ports"] if p["name"] == "grpc"][0]
        assert grpc["appProtocol"] == "kubernetes.io/h2c"


# --- ServiceMonitor ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["helm-secure", "k8s-secure"])
def test_service_monitor_scrapes_https_with_the_ca(source):
    objs = SOURCES[source]()
    endpoint = find(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    router = flags(objs, workloads(objs)["router"][1])
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "tern-tls", "key": "ca.crt"}},
        "serverName": router["--node-tls-domain"],
    }, "Prometheus scrapes pods by IP: it verifies the name the routers verify"
    assert "authorization" not in endpoint, "metrics are public by default"


def test_service_monitor_full_uses_given_tls_config_and_token():
    endpoint = find(chart_objects("full"), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "tern-ca-for-prometheus", "key": "ca.crt"}},
        "serverName": "nodes.tern.example.com",
    }
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "tern-metrics-token", "key": "token"}}


def test_service_monitor_token_without_tls():
    objs = objects({
        "auth": {"enabled": True, "public": ["health"]},
        "metrics": {"serviceMonitor": {"enabled": True, "tokenSecret": {"name": "prom-token", "key": "t"}}},
    })
    endpoint = find(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "http" and "tlsConfig" not in endpoint
    assert endpoint["authorization"]["credentials"] == {"name": "prom-token", "key": "t"}
    assert flags(objs, workloads(objs)["node"][1])["--auth-public"] == "health"


# --- Secrets and names ------------------------------------------------------------------------


def test_separate_ca_secret():
    for mutual in (False, True):
        objs = objects({"tls": {"enabled": True, "caSecretName": "corp-ca", "mutual": mutual}})
        w = workloads(objs)
        for component, (workload, c) in w.items():
            f = flags(objs, c)
            ca_flags = [k for k in ("--grpc-root-cert", "--node-tls-ca") if k in f]
            assert bool(ca_flags) == (mutual or component == "router"), component
            for k in ca_flags:
                assert f[k] == "/etc/tern/tls-ca/ca.crt"
                assert secret_file(workload, c, f[k])[:2] == ("corp-ca", "ca.crt")
            vols = {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]}
            assert ("tls-ca" in vols) == bool(ca_flags), f"{component}: the CA is mounted only where it is used"


def test_names_follow_the_release():
    objs = objects({"tls": {"enabled": True}, "auth": {"enabled": True}}, name="prod", namespace="ml")
    w = workloads(objs)
    router = flags(objs, w["router"][1])
    assert router["--node-tls-domain"] == "prod-tern-node-headless.ml.svc.cluster.local"
    secrets = {(v["name"], v["secret"]["secretName"]) for v in w["router"][0]["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert secrets == {("tls", "prod-tern-tls"), ("auth-tokens", "prod-tern-tokens"), ("node-token", "prod-tern-router-token")}
    objs = objects({"tls": {"enabled": True, "nodeDomain": "nodes.example.com"}})
    assert flags(objs, workloads(objs)["router"][1])["--node-tls-domain"] == "nodes.example.com"


def test_without_routers():
    values = load_values("minimal")
    values.update({"tls": {"enabled": True, "mutual": True}, "auth": {"enabled": True}})
    objs = objects(values)
    assert "router" not in workloads(objs)
    workload, c = workloads(objs)["node"]
    f = flags(objs, c)
    assert {"--grpc-use-ssl", "--grpc-use-ssl-mutual", "--auth-token-file"} <= set(f)
    assert "--metrics-use-ssl" not in f, "no metrics port on these nodes"
    assert {p: next(iter(set(c[p]) & {"grpc", "httpGet", "tcpSocket"})) for p in _probes(c)} == {
        "startupProbe": "tcpSocket", "livenessProbe": "tcpSocket", "readinessProbe": "tcpSocket"}
    assert "node-token" not in {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]}


# --- limits -----------------------------------------------------------------------------------


def test_limits():
    objs = chart_objects("full")
    node, router = (flags(objs, workloads(objs)[k][1]) for k in ("node", "router"))
    shared = {"--grpc-max-message-size": "8388608", "--grpc-max-concurrent-streams": "64",
              "--grpc-http2-max-header-list-size": "32768"}
    assert shared.items() <= node.items() and shared.items() <= router.items()
    assert node["--max-tensor-bytes"] == "4294967296" and node["--max-request-bytes"] == "8388608", (
        "large numbers print as integers, not 4.294967296e+09"
    )
    assert "--max-tensor-bytes" not in router, "tensor limits are the nodes'"
    # Routers face the clients behind a Service; nodes keep their routers' connections.
    assert router["--grpc-max-connection-age-secs"] == "300" and "--grpc-max-connection-age-secs" not in node
    for name in ("tern-node-config", "tern-router-config"):
        assert find(objs, "ConfigMap", name)["data"]["TERN_GRPC_MAX_MESSAGE_SIZE"] == "8388608"


# --- off means off ----------------------------------------------------------------------------

OFF = {
    "tls": {"enabled": False, "secretName": "x", "caSecretName": "y", "mutual": False, "metrics": False, "nodeDomain": "n.example.com"},
    "auth": {"enabled": False, "public": ["health", "inference"], "tokenFileSecret": {"name": "a", "key": "b"},
             "nodeTokenFileSecret": {"name": "c", "key": "d"}, "routerToNodeTokenSecret": {"name": "e", "key": "f"}},
    "limits": {"grpcMaxMessageSize": 0, "grpcMaxConcurrentStreams": 0, "grpcHttp2MaxHeaderListSize": 0,
               "grpcMaxConnectionAgeSecs": 0, "maxTensorBytes": 0, "maxRequestBytes": 0},
    "metrics": {"serviceMonitor": {"tlsConfig": {"insecureSkipVerify": True}, "tokenSecret": {"name": "g", "key": "h"}}},
    # No endpoints and no trial: the memory store, whatever the rest says.
    "etcd": {"endpoints": [], "prefix": "/other", "nodeLeaseTtlSecs": 30, "auth": {"usernameKey": "u", "passwordKey": "p"},
             "trial": {"enabled": False, "image": "example.com/etcd:1", "persistence": {"size": "5Gi"}}},
}


@pytest.mark.parametrize("values_name", ["default", "gpu", "minimal"])
def test_options_off_render_exactly_as_without_them(values_name):
    """Setting the new values with tls/auth off and limits 0 changes no byte (no rollout on
    upgrade: the config checksums stay)."""
    import copy

    values = copy.deepcopy(load_values(values_name))
    for key, sub in OFF.items():
        merged = values.setdefault(key, {})
        for k, v in sub.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
    assert render(values) == render_chart(values_name)


def test_default_render_has_no_security():
    objs = chart_objects("default")
    for component, (workload, c) in workloads(objs).items():
        f = flags(objs, c)
        assert not {k for k in f if "ssl" in k or "tls" in k or "auth" in k or "token" in k or "max" in k}, component
        assert not [v for v in workload["spec"]["template"]["spec"]["volumes"] if "secret" in v]


# --- values that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values,message",
    [
        ({"auth": {"enabled": True, "public": ["metrics"]}}, "auth.public must include health"),
        ({"auth": {"enabled": True, "public": []}}, "auth.public must include health"),
        ({"tls": {"mutual": True}}, "tls.mutual needs tls.enabled"),
        ({"tls": {"metrics": True}}, "tls.metrics needs tls.enabled"),
        ({"auth": {"enabled": True, "public": ["health"]}, "metrics": {"serviceMonitor": {"enabled": True}}},
         "set metrics.serviceMonitor.tokenSecret.name"),
    ],
    ids=["public-without-health", "public-none", "mutual-without-tls", "metrics-tls-without-tls", "protected-metrics-no-token"],
)
def test_unworkable_values_fail_with_a_reason(values, message):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_public_star_keeps_probes_working():
    objs = objects({"auth": {"enabled": True, "public": ["*"]}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert flags(objs, workloads(objs)["node"][1])["--auth-public"] == "*"
    assert "authorization" not in find(objs, "ServiceMonitor")["spec"]["endpoints"][0]


@pytest.mark.parametrize(
    "bad",
    [
        {"auth": {"public": ["healthz"]}},
        {"auth": {"public": "health,metrics"}},
        {"auth": {"tokenFileSecret": {"name": "Tokens_File"}}},
        {"auth": {"routerToNodeTokenSecret": {"key": "a/b"}}},
        {"tls": {"enable": True}},
        {"tls": {"nodeDomain": "https://nodes"}},
        {"limits": {"grpcMaxMessageSize": 2147483648}},
        {"limits": {"maxRequestBytes": -1}},
        {"metrics": {"serviceMonitor": {"tokenSecret": {"name": "x", "namespace": "y"}}}},
    ],
)
def test_schema_rejects_bad_security_values(bad):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


def test_notes_show_a_tls_and_token_client():
    notes = render_chart("secure")["tern/templates/NOTES.txt"]
    assert "ssl=True" in notes and "root_certificates='ca.crt'" in notes and "certificate_chain=" in notes
    assert "grpc.ssl_target_name_override', 'tern-router.tern.svc.cluster.local'" in notes
    assert "'authorization': 'Bearer '" in notes and "tern token new" in notes
