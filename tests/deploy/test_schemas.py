"""Every object of deploy/k8s and of the rendered chart against the Kubernetes API's OpenAPI
schemas (kubernetes-validate, strict: unknown fields are errors), for the pinned versions.
kubernetes-validate has no schemas for CRDs: ServiceMonitor and PrometheusRule get a
structural check here (the fields the Prometheus Operator requires, with their types) and their
rules go through promtool in test_monitoring.py."""

from __future__ import annotations

import copy
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploylib import (
    COMPONENTS,
    CRD_KINDS,
    K8S,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    ROOT,
    VALUE_FILES,
    chart_objects,
    find,
    kustomize_objects,
    kustomize_overlay_objects,
    yaml_docs,
)

# The parts of the Prometheus Operator's monitoring.coreos.com/v1 CRDs that Tern uses, with the
# Operator's types; additionalProperties false so that a misspelt field is caught.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
# Secret/ConfigMap key selectors and the scrape's TLS and authorization settings
# (monitoring.coreos.com/v1 Endpoint.tlsConfig, Endpoint.authorization).
_KEY_SELECTOR = {
    "type": "object",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}, "optional": {"type": "boolean"}},
}
_SECRET_OR_CONFIGMAP = {
    "type": "object",
    "additionalProperties": False,
    "maxProperties": 1,
    "properties": {"secret": _KEY_SELECTOR, "configMap": _KEY_SELECTOR},
}
_TLS_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca": _SECRET_OR_CONFIGMAP,
        "cert": _SECRET_OR_CONFIGMAP,
        "keySecret": _KEY_SELECTOR,
        "caFile": {"type": "string"},
        "certFile": {"type": "string"},
        "keyFile": {"type": "string"},
        "serverName": {"type": "string"},
        "insecureSkipVerify": {"type": "boolean"},
        "minVersion": {"enum": ["TLS10", "TLS11", "TLS12", "TLS13"]},
        "maxVersion": {"enum": ["TLS10", "TLS11", "TLS12", "TLS13"]},
    },
}
_AUTHORIZATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"type": {"type": "string"}, "credentials": _KEY_SELECTOR},
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "tlsConfig": _TLS_CONFIG,
                                "authorization": _AUTHORIZATION,
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


# Gateway API's GRPCRoute (gateway.networking.k8s.io/v1, standard channel v1.1+): the fields
# Tern's route uses, with the CRD's types and limits.
_PARENT_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "sectionName": {"type": "string", "minLength": 1, "maxLength": 253},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
}
CRD_SCHEMAS["GRPCRoute"] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "GRPCRoute"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parentRefs": {"type": "array", "maxItems": 32, "items": _PARENT_REF},
                "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1, "maxLength": 253}},
                "rules": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "backendRefs": {
                                "type": "array",
                                "maxItems": 16,
                                "items": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "group": {"type": "string"},
                                        "kind": {"type": "string"},
                                        "name": {"type": "string", "minLength": 1, "maxLength": 253},
                                        "namespace": {"type": "string"},
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                                    },
                                },
                            }
                        },
                    },
                },
            },
        },
    },
}


def validate_object(obj: dict, version: str) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_KINDS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(e.message) from None


def _k8s_files() -> list[pathlib.Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def _kustomize_roles() -> tuple[set[pathlib.Path], set[pathlib.Path], set[pathlib.Path]]:
    """(kustomization files, patch files they apply, plain resource files they list)."""
    kustomizations, patches, resources = set(), set(), set()
    for k in K8S.rglob("kustomization.yaml"):
        kustomizations.add(k)
        spec = yaml.safe_load(k.read_text())
        for p in spec.get("patches", []):
            if "path" in p:
                patches.add((k.parent / p["path"]).resolve())
        for r in spec.get("resources", []):
            path = (k.parent / r).resolve()
            if path.is_file():
                resources.add(path)
    return kustomizations, patches, resources


def test_every_k8s_file_is_covered():
    """Each YAML file under deploy/k8s is a kustomization (built below), a patch one applies
    (validated in the built output) or a resource one lists (validated as it is)."""
    kustomizations, patches, resources = _kustomize_roles()
    uncovered = [p for p in _k8s_files() if p.resolve() not in kustomizations | patches | resources]
    assert not uncovered, f"not referenced by any kustomization.yaml: {uncovered}"
    built = {p.parent for p in kustomizations if yaml.safe_load(p.read_text()).get("kind") != "Component"}
    assert built == {p.resolve() for p in KUSTOMIZATIONS.values()}, "test every kustomization (deploylib.KUSTOMIZATIONS)"


def _resource_files():
    return sorted(_kustomize_roles()[2])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_k8s_file_validates(path, version):
    docs = yaml_docs(path.read_text())
    assert docs, f"{path} is empty"
    for obj in docs:
        validate_object(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_kustomize_build_validates(name, version):
    objs = kustomize_objects(name)
    assert objs
    for obj in objs:
        validate_object(obj, version)
        assert obj["metadata"].get("namespace", "tern") == "tern" or obj["kind"] == "Namespace"


def test_kustomize_component_models_init_container(tmp_path):
    """components/models-init-container applied on top of deploy/k8s (as a user's overlay would)."""
    import os

    from deploylib import kustomize_build

    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731 (kustomize refuses absolute paths)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [rel(K8S)],
                "components": [rel(K8S / "components" / "models-init-container")],
                "images": [{"name": "tern-models", "newName": "registry.example.com/models", "newTag": "v1"}],
            }
        )
    )
    objs = yaml_docs(kustomize_build(tmp_path))
    for obj in objs:
        validate_object(obj, KUBERNETES_VERSIONS[0])
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    pod = find(objs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.example.com/models:v1"
    assert [v for v in pod["volumes"] if v["name"] == "models"] == [{"name": "models", "emptyDir": {}}]


# The security components on every kustomization they can sit on, alone and together.
COMPONENT_SETS = [("tls",), ("tls", "tls-mutual"), ("auth",), ("tls", "tls-mutual", "auth")]
# components/etcd alone and after the security components.
ETCD_COMPONENT_SETS = [("etcd",), ("tls", "tls-mutual", "auth", "etcd")]


def test_every_component_is_tested():
    found = {p.parent.name for p in COMPONENTS.glob("*/kustomization.yaml")}
    assert found - {"models-init-container"} == set().union(*COMPONENT_SETS, *ETCD_COMPONENT_SETS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("components", COMPONENT_SETS, ids="+".join)
@pytest.mark.parametrize("base", [k for k in KUSTOMIZATIONS if k != "k8s-monitoring"])  # monitoring: no workloads
def test_kustomize_security_components_validate(base, components, version):
    objs = kustomize_overlay_objects(base, components)
    for obj in objs:
        validate_object(obj, version)
    sts = find(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert secrets <= mounts, "every Secret volume is mounted"
    assert ("tls" in secrets) == ("tls" in components) and ("auth-tokens" in secrets) == ("auth" in components)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values_name", list(VALUE_FILES))
def test_chart_render_validates(values_name, version):
    for obj in chart_objects(values_name):
        validate_object(obj, version)


def test_validators_catch_mistakes():
    """The validators are not vacuous: a misspelt field, a wrong type, a missing selector."""
    sts = find(kustomize_objects("k8s"), "StatefulSet")
    mutations = {
        "misspelt field": lambda c, s: c.update(livenesProbe=c["livenessProbe"]),
        "port name in a gRPC probe": lambda c, s: c["livenessProbe"]["grpc"].update(port="grpc"),
        "no selector": lambda c, s: s["spec"].pop("selector"),
    }
    for what, mutate in mutations.items():
        bad = copy.deepcopy(sts)
        mutate(bad["spec"]["template"]["spec"]["containers"][0], bad)
        with pytest.raises(AssertionError):
            validate_object(bad, KUBERNETES_VERSIONS[0])
            pytest.fail(f"{what} passed validation")
    sm = copy.deepcopy(find(kustomize_objects("k8s"), "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(sm, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("components", ETCD_COMPONENT_SETS, ids="+".join)
@pytest.mark.parametrize("base", [k for k in KUSTOMIZATIONS if k != "k8s-monitoring"])
def test_kustomize_etcd_component_validates(base, components, version):
    """components/etcd renders on every kustomization with workloads and validates: the trial
    etcd beside the nodes, routers pointed at it (test_consistency checks the flags)."""
    objs = kustomize_overlay_objects(base, components)
    for obj in objs:
        validate_object(obj, version)
    assert sorted(o["metadata"]["name"] for o in objs if o["kind"] == "StatefulSet") == ["tern-etcd", "tern-node"]
    assert find(objs, "Service", "tern-etcd")["spec"]["clusterIP"] == "None"
    assert find(objs, "NetworkPolicy", "tern-etcd")
    router = find(objs, "Deployment", "tern-router")["spec"]["template"]["spec"]["containers"][0]
    assert "--cluster-store=$(TERN_CLUSTER_STORE)" in router["args"]
    assert find(objs, "ConfigMap", "tern-router-config")["data"]["TERN_CLUSTER_STORE"].startswith("etcd://tern-etcd.tern.svc")


def test_existing_etcd_overlay_of_the_readme(tmp_path):
    """deploy/k8s/README.md's overlay for an existing etcd builds and validates: routers point
    there and no trial etcd is left."""
    import os
    import re

    from deploylib import kustomize_build

    readme = (K8S / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(# my-tern/kustomization.yaml: an existing etcd\n.*?)```", readme, re.S)
    (tmp_path / "kustomization.yaml").write_text(block.replace("../deploy/k8s", os.path.relpath(K8S, tmp_path)))
    objs = yaml_docs(kustomize_build(tmp_path))
    for obj in objs:
        validate_object(obj, KUBERNETES_VERSIONS[0])
    assert not [o for o in objs if o["metadata"]["name"] == "tern-etcd"]
    data = find(objs, "ConfigMap", "tern-router-config")["data"]
    assert data["TERN_CLUSTER_STORE"] == "etcd://etcd-0.etcd.db:2379,etcd-1.etcd.db:2379,etcd-2.etcd.db:2379"
    assert data["TERN_CLUSTER_STORE_PREFIX"] == "/tern-prod" and data["TERN_NODE_LEASE_TTL_SECS"] == "10"
    assert "--cluster-store=$(TERN_CLUSTER_STORE)" in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
