"""The Helm chart (helm/sipcluster).

The chart is rendered with Helm's own engine (helm-python-sdk embeds Helm's
Go library; no helm binary is needed), linted with `helm lint --strict`, and
every manifest is validated with kubernetes-validate in strict mode against
the oldest Kubernetes the chart supports and the newest schema available.
Then the properties that make a SIP cluster work on Kubernetes are asserted:
ports and protocols, probes, the downward-API environment, the drain grace
period, anti-affinity, budgets and selectors. The rendered configuration is
loaded with the real `cluster.config.load_config`, with the environment a pod
would get, so the chart cannot drift from the program's configuration, and
one test starts a real edge and worker exactly as their pods would (against
a local etcd) and sends a request through them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tomllib
import types
import typing
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cluster import config as node_config
from cluster.link.keys import PUBLIC_FILE, SECRET_FILE, load_keys, node_keys, write_keys
from cluster.observability.otlp_http import OtlpHttpSpanExporter
from cluster.observability.tracing import _span_exporter
from tests.e2e.harness import free_port_pair, options, wait_for
from tests.support.etcd import free_port
from tests.support.pki import make_pki

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sipcluster"
RELEASE, NAMESPACE = "sip", "voice"
# The chart's kubeVersion floor and the newest schema kubernetes-validate has.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")

VALUE_SETS: dict[str, dict] = {
    "default": {},
    "daemonset-policies": {
        "networkPolicy": {"enabled": True, "nodeCIDRs": ["10.0.0.0/16"]},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "worker": {"antiAffinity": "hard", "autoscaling": {"enabled": True}},
        "config": {"worker": {"domains": ["sip.example.net"], "drain_timeout": 45.5}},
    },
    "deployment-lb": {
        "edge": {"mode": "deployment", "advertise": "sip.example.net", "readinessPath": "/healthz",
                 "autoscaling": {"enabled": True},
                 "service": {"loadBalancerSourceRanges": ["198.51.100.0/24"]}},
        "networkPolicy": {"enabled": True,
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        # Record-Route names the load balancer, not the edge pod (issue 18.2).
        "config": {"cluster": {"record_route": "sip.example.net"}},
    },
    "deployment-tls": {
        "edge": {"mode": "deployment", "service": {"loadBalancerIP": "203.0.113.10"},
                 "sip": {"tls": {"enabled": True, "existingSecret": "sip-tls", "verifyClient": "required"},
                         "wss": {"enabled": True, "origins": ["https://app.example.net"]}}},
    },
    "external-etcd-tls": {
        "etcd": {"mode": "external",
                 "external": {"endpoints": ["https://etcd-a.db:2379", "https://etcd-b.db:2379"],
                              "tls": {"enabled": True, "existingSecret": "etcd-client"},
                              "auth": {"existingSecret": "etcd-auth"}}},
        "link": {"curve": {"existingSecret": "link-keys"}},
        "otel": {"endpoint": "http://otel-collector.observability:4318", "samplerArg": "0.05"},
        "worker": {"nonceSecret": {"existingSecret": "nonce"}},
    },
    "bundled-etcd-3": {
        "etcd": {"bundled": {"replicas": 3, "persistence": {"enabled": False}}},
        "worker": {"replicas": 5, "terminationGracePeriodSeconds": 120},
    },
    "metrics-off": {"metrics": {"enabled": False}, "tests": {"enabled": False}},
}
# Every set's rendered configuration loads (certificates made by a test CA).
LOADABLE = list(VALUE_SETS)


@dataclasses.dataclass(frozen=True)
class Rendered:
    files: dict[str, str]
    docs: tuple[dict, ...]

    def kinds(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, suffix: str) -> dict:
        (doc,) = [d for d in self.kinds(kind) if d["metadata"]["name"] == f"{RELEASE}-sipcluster{suffix}"]
        return doc

    def workload(self, component: str) -> dict:
        (doc,) = [d for d in self.docs if d["kind"] in WORKLOAD_KINDS
                  and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        return doc

    def pod(self, component: str) -> dict:
        return self.workload(component)["spec"]["template"]

    def container(self, component: str) -> dict:
        return self.pod(component)["spec"]["containers"][0]

    def env(self, component: str) -> dict[str, dict]:
        return {e["name"]: e for e in self.container(component)["env"]}

    def config_text(self) -> str:
        return self.named("ConfigMap", "-config")["data"]["config.toml"]


def render_values(values: dict) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = tuple(doc for path, text in files.items() if path.endswith(".yaml")
                 for doc in yaml.safe_load_all(text) if doc)
    return Rendered(files, docs)


@functools.cache
def rendered(name: str) -> Rendered:
    return render_values(VALUE_SETS[name])


def values_of(name: str) -> dict:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(VALUE_SETS[name])


def port(container: dict, name: str) -> dict:
    (entry,) = [p for p in container["ports"] if p["name"] == name]
    return entry


def selects(selector: dict, labels: dict) -> bool:
    """A Service selector (a plain map) or a LabelSelector matches ``labels``."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        match, expressions = selector.get("matchLabels", {}), selector.get("matchExpressions", [])
    else:
        match, expressions = selector, []
    assert all(e["operator"] == "In" for e in expressions)
    return (all(labels.get(k) == v for k, v in match.items())
            and all(labels.get(e["key"]) in e["values"] for e in expressions))


# -- Helm's own checks and the Kubernetes schemas ----------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean_in_strict_mode(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSIONS[-1]}")
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); 2 and 3 fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(name, version):
    docs = rendered(name).docs
    assert len(docs) >= 8
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            # A CRD: kubernetes-validate has no schema for it; its shape is
            # checked in test_service_monitor_scrapes_edges_and_workers.
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {error.message}")
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("values, field", [
    ({"edge": {"mode": "hostport"}}, "mode"),
    ({"config": {"cluster": {"node_id": "a"}}}, "node_id"),  # set by the chart
    ({"config": {"edge": {"listen": ["udp:0.0.0.0:5060"]}}}, "listen"),
    ({"config": {"worker": {"drain_timout": 30}}}, "drain_timout"),
    ({"config": {"log": {"level": "trace"}}}, "level"),
    ({"worker": {"nonceSecret": {"value": "too-short"}}}, "value"),
    ({"etcd": {"mode": "external"}}, "endpoints"),
    ({"etcd": {"bundled": {"replicas": 2}}}, "replicas"),
    ({"otel": {"protocol": "grpc"}}, "protocol"),  # the nodes speak OTLP/HTTP only
    ({"otel": {"endpoint": "otel-collector:4317"}}, "endpoint"),
])
def test_schema_rejects_bad_values(values, field):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=field):
        chart.validate_schema(values)


@pytest.mark.parametrize("values, message", [
    ({"edge": {"mode": "deployment"}}, "edge.advertise"),
    ({"networkPolicy": {"enabled": True}}, "nodeCIDRs"),
    ({"worker": {"terminationGracePeriodSeconds": 20}}, "drain"),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics.enabled"),
    ({"edge": {"sip": {"udp": False, "tcp": False}}}, "at least one"),
])
def test_unusable_combinations_fail_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render_values(values)


# -- the configuration file and environment, loaded by the real program -------

FAKE_FIELDS = {"metadata.name": "pod-0", "metadata.namespace": NAMESPACE, "status.podIP": "10.1.2.3",
               "status.hostIP": "192.0.2.7", "spec.nodeName": "node-a"}
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_environment(container: dict, fields: dict[str, str] = FAKE_FIELDS,
                    secrets: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """The environment the kubelet would give the container; ``secrets`` maps
    (Secret name, key) to a value (else a made-up one)."""
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            # Kubernetes expands $(VAR) only for variables defined earlier.
            for ref in _REF.findall(entry["value"]):
                assert ref in env, f"{entry['name']} uses $({ref}) before it is defined"
            env[entry["name"]] = _REF.sub(lambda m: env[m.group(1)], entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = (secrets or {}).get((ref["name"], ref["key"]),
                                                     "secret-from-" + ref["name"] + "-0123456789")
    return env


def write_tls_secret(directory: Path, paths: list[str]) -> None:
    """tls.crt, tls.key (and ca.crt) from a test CA, as cert-manager names them."""
    pki = make_pki(directory / ".pki")
    files = {"tls.crt": pki.server_cert, "tls.key": pki.server_key, "ca.crt": pki.ca}
    for path in paths:
        (directory / path).write_bytes(files[path].read_bytes())


def load_pod_config(rendered_set: Rendered, component: str, tmp_path: Path):
    """Load config.toml as the container sees it, its Secret mounts made real."""
    text = rendered_set.config_text()
    tmp_path.mkdir(parents=True, exist_ok=True)
    pod = rendered_set.pod(component)["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    moved: dict[str, str] = {}
    for mount in rendered_set.container(component)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        local = tmp_path / mount["name"]
        local.mkdir()
        if mount["name"] == "link-keys":
            # What `sipcluster keys generate` writes into the Secret.
            assert [i["path"] for i in secret["items"]] == [PUBLIC_FILE, SECRET_FILE]
            write_keys(local)
        if mount["name"] == "sip-tls":
            # What cert-manager writes into a kubernetes.io/tls Secret.
            write_tls_secret(local, [i["path"] for i in secret["items"]])
        for item in secret.get("items", ()):
            if not (local / item["path"]).exists():
                (local / item["path"]).write_text("pem\n")
        text = text.replace(mount["mountPath"], str(local))
        moved[mount["mountPath"]] = str(local)
    path = tmp_path / "config.toml"
    path.write_text(text)
    env = pod_environment(rendered_set.container(component))
    for name, value in env.items():
        # Files named by environment variables (the edge's TLS Secret) too.
        for mount_path, local_path in moved.items():
            value = value.replace(mount_path, local_path)
        env[name] = value
    return node_config.load_config(path, env=env)


@pytest.mark.parametrize("name", LOADABLE)
def test_rendered_configuration_loads_for_both_roles(name, tmp_path):
    r = rendered(name)
    edge = load_pod_config(r, "edge", tmp_path / "edge")
    worker = load_pod_config(r, "worker", tmp_path / "worker")
    for loaded, role in ((edge, "edge"), (worker, "worker")):
        assert loaded.cluster.node_id == "pod-0"
        assert loaded.http.address() == ("10.1.2.3", 8080)
        expected = values_of(name)["config"]
        assert loaded.cluster.prefix == expected["cluster"]["prefix"]
        assert loaded.cluster.record_route == expected["cluster"].get("record_route")
        assert loaded.worker.drain_timeout == expected["worker"]["drain_timeout"]
        assert loaded.log.format == "json", role
    # Link endpoints are published in etcd: they must be the pod address.
    assert edge.edge.link == "tcp://10.1.2.3:5700"
    assert worker.worker.link == "tcp://10.1.2.3:5701"
    secure = ["tls:0.0.0.0:5061", "wss:0.0.0.0:8443"] if name == "deployment-tls" else []
    assert [str(a) for a in edge.edge.listen] == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", *secure]
    mode = values_of(name)["edge"]["mode"]
    advertised = {"daemonset": "192.0.2.7", "deployment": "sip.example.net"}[mode]
    if name == "deployment-tls":
        advertised = "203.0.113.10"
    assert edge.edge.advertised() == (advertised, 5060)
    assert worker.worker.nonce_secret.startswith("secret-from-")
    bundled = values_of(name)["etcd"]["mode"] == "bundled"
    assert all(url.startswith("http://" if bundled else "https://") for url in worker.cluster.etcd)


def test_external_etcd_tls_auth_and_link_keys_reach_the_config(tmp_path):
    loaded = load_pod_config(rendered("external-etcd-tls"), "worker", tmp_path)
    assert loaded.cluster.etcd == ("https://etcd-a.db:2379", "https://etcd-b.db:2379")
    assert Path(loaded.cluster.etcd_ca).name == "ca.crt"
    assert Path(loaded.cluster.etcd_cert).name == "tls.crt"
    assert Path(loaded.cluster.etcd_key).name == "tls.key"
    assert loaded.cluster.etcd_user == "secret-from-etcd-auth-0123456789"
    assert loaded.cluster.link_secret_dir.endswith("link-keys")
    assert node_keys(loaded.cluster.link_secret_dir) == load_keys(loaded.cluster.link_secret_dir)
    assert loaded.worker.nonce_secret == "secret-from-nonce-0123456789"


def test_without_a_link_key_secret_each_pod_makes_its_own_pair(tmp_path):
    r = rendered("default")
    for component in ("edge", "worker"):
        assert not [v for v in r.pod(component)["spec"]["volumes"] if v["name"] == "link-keys"]
        assert load_pod_config(r, component, tmp_path / component).cluster.link_secret_dir is None


def test_values_schema_offers_every_config_key_the_chart_does_not_set():
    chart_owned = {"cluster.etcd", "cluster.etcd_ca", "cluster.etcd_cert", "cluster.etcd_key",
                   "cluster.etcd_user", "cluster.etcd_password", "cluster.node_id",
                   "cluster.link_secret_dir", "edge.listen", "edge.advertise", "edge.link",
                   "worker.link", "worker.nonce_secret",
                   # From edge.sip.tls and edge.sip.wss, with the Secret's files.
                   "edge.tls_cert", "edge.tls_key", "edge.tls_verify_client", "edge.tls_client_ca",
                   "edge.ws_origins",
                   # Not offered: more certificate files need mounts the chart does not make.
                   "edge.tls_sni"}
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    kinds = {str: "string", int: "integer", float: "number", bool: "boolean", tuple[str, ...]: "array"}
    for section in ("cluster", "edge", "worker", "log"):
        cls = type(getattr(node_config.Config(), section))
        hints = typing.get_type_hints(cls)
        offered = schema[section]["properties"]
        expected = {f.name for f in dataclasses.fields(cls)} - {k.split(".")[1] for k in chart_owned
                                                                  if k.startswith(section + ".")}
        assert set(offered) == expected, section
        for field in dataclasses.fields(cls):
            if field.name not in offered:
                continue
            spec = offered[field.name]
            if field.metadata["choices"]:
                assert spec["enum"] == list(field.metadata["choices"]), field.name
            else:
                hint = hints[field.name]
                if isinstance(hint, types.UnionType):  # `str | None` -> str
                    (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
                assert spec["type"] == kinds[hint], field.name
    assert "http" not in schema


# -- the properties that make SIP work on Kubernetes -------------------------

@pytest.mark.parametrize("name", ["default", "daemonset-policies"])
def test_daemonset_edges_use_the_host_network_and_node_address(name):
    r = rendered(name)
    assert r.workload("edge")["kind"] == "DaemonSet"
    spec = r.pod("edge")["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = r.env("edge")
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["SIPCLUSTER_EDGE_ADVERTISE"]["value"] == "$(HOST_IP)"
    assert all(h["spec"]["scaleTargetRef"]["kind"] != "DaemonSet" for h in r.kinds("HorizontalPodAutoscaler"))


@pytest.mark.parametrize("name", VALUE_SETS)
def test_edges_take_sip_on_5060_over_udp_and_tcp(name):
    r = rendered(name)
    edge = r.container("edge")
    assert (port(edge, "sip-udp")["containerPort"], port(edge, "sip-udp")["protocol"]) == (5060, "UDP")
    assert (port(edge, "sip-tcp")["containerPort"], port(edge, "sip-tcp")["protocol"]) == (5060, "TCP")
    if values_of(name)["edge"]["mode"] == "deployment":
        service = r.named("Service", "-edge")
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        assert selects(service["spec"]["selector"], r.pod("edge")["metadata"]["labels"])
        ports = {(p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert {(5060, "UDP", "sip-udp"), (5060, "TCP", "sip-tcp")} <= ports


def test_tls_and_wss_certificates_from_a_secret_reach_the_edge_only(tmp_path):
    r = rendered("deployment-tls")
    edge = load_pod_config(r, "edge", tmp_path / "edge").edge
    assert (Path(edge.tls_cert).name, Path(edge.tls_key).name) == ("tls.crt", "tls.key")
    assert edge.tls_verify_client == "required" and Path(edge.tls_client_ca).name == "ca.crt"
    assert edge.ws_origins == ("https://app.example.net",)
    # The worker shares config.toml but not the edge's Secret: nothing of it.
    worker = load_pod_config(r, "worker", tmp_path / "worker").edge
    assert worker.tls_cert is None and worker.tls_verify_client == "off"
    volumes = {v["name"]: v for v in r.pod("edge")["spec"]["volumes"]}
    secret = volumes["sip-tls"]["secret"]
    assert secret["secretName"] == "sip-tls"
    assert [i["key"] for i in secret["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    # A subPath mount never sees a Secret update; the whole directory does.
    (mount,) = [m for m in r.container("edge")["volumeMounts"] if m["name"] == "sip-tls"]
    assert "subPath" not in mount
    assert (port(r.container("edge"), "sip-wss")["containerPort"]) == 8443
    service_ports = {p["name"]: p for p in r.named("Service", "-edge")["spec"]["ports"]}
    assert (service_ports["sip-wss"]["port"], service_ports["sip-wss"]["targetPort"]) == (8443, "sip-wss")


def test_wss_alone_mounts_the_certificate_without_client_verification():
    r = render_values({"edge": {"sip": {"wss": {"enabled": True}, "tls": {"existingSecret": "web"}}}})
    env = r.env("edge")
    assert env["SIPCLUSTER_EDGE_LISTEN"]["value"].split(",")[-1] == "wss:0.0.0.0:8443"
    assert env["SIPCLUSTER_EDGE_TLS_VERIFY_CLIENT"]["value"] == "off"
    assert "SIPCLUSTER_EDGE_TLS_CLIENT_CA" not in env
    volumes = {v["name"]: v for v in r.pod("edge")["spec"]["volumes"]}
    assert [i["key"] for i in volumes["sip-tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]


def test_a_secret_update_reaches_the_edge_through_the_mounted_files(tmp_path):
    """The kubelet updates a Secret volume by writing a new timestamped
    directory and swapping the ``..data`` symlink the files point through;
    the edge's file check sees the new certificate and reloads."""
    from collections import Counter

    from nodes.edge.tls import TlsContexts
    r = rendered("deployment-tls")
    volumes = {v["name"]: v for v in r.pod("edge")["spec"]["volumes"]}
    paths = [i["path"] for i in volumes["sip-tls"]["secret"]["items"]]
    mount = tmp_path / "sip-tls"
    mount.mkdir()

    def publish(version: str) -> None:
        data = mount / f"..{version}"
        data.mkdir()
        write_tls_secret(data, paths)
        link = mount / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, mount / "..data")
    publish("2026_01_01")
    for path in paths:
        (mount / path).symlink_to(f"..data/{path}")
    config = load_pod_config(r, "edge", tmp_path / "pod")
    edge = dataclasses.replace(config.edge, tls_cert=str(mount / "tls.crt"), tls_key=str(mount / "tls.key"),
                               tls_client_ca=str(mount / "ca.crt"))
    contexts = TlsContexts(edge, Counter())
    first = contexts.server
    assert contexts.check() is False
    publish("2026_02_01")
    assert contexts.check() is True
    assert contexts.server is not first and contexts.generation == 2


def test_tls_adds_port_5061_on_pod_and_service():
    r = rendered("deployment-tls")
    assert (port(r.container("edge"), "sip-tls")["containerPort"]) == 5061
    service_ports = {p["name"]: p for p in r.named("Service", "-edge")["spec"]["ports"]}
    assert (service_ports["sip-tls"]["port"], service_ports["sip-tls"]["protocol"]) == (5061, "TCP")
    assert r.env("edge")["SIPCLUSTER_EDGE_LISTEN"]["value"].split(",") == [
        "udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", "tls:0.0.0.0:5061", "wss:0.0.0.0:8443"]
    assert r.env("edge")["SIPCLUSTER_EDGE_ADVERTISE"]["value"] == "203.0.113.10"
    mounts = {m["mountPath"] for m in r.container("edge")["volumeMounts"]}
    assert "/etc/sipcluster/sip-tls" in mounts


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("component", ["edge", "worker"])
def test_probes_use_the_health_endpoints_on_the_http_port(name, component):
    r = rendered(name)
    container = r.container(component)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    ready = values_of(name)["edge"]["readinessPath"] if component == "edge" else "/readyz"
    assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
    assert ready == "/readyz" or name == "deployment-lb"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    listen = r.env(component)["SIPCLUSTER_HTTP_LISTEN"]["value"]
    assert listen == f"$(POD_IP):{port(container, 'http')['containerPort']}"


def test_default_otel_values_and_docs_name_otlp_over_http_on_4318():
    defaults = values_of("default")["otel"]
    assert defaults["protocol"] == "http/protobuf"
    text = (CHART / "values.yaml").read_text()
    guide = (ROOT / "ops" / "guide" / "kubernetes.md").read_text()
    assert ":4318" in text and ":4317" not in text and "protocol: http/protobuf" in text
    assert ":4318" in guide and "http/protobuf" in guide


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("component", ["edge", "worker"])
def test_pods_get_identity_and_otel_environment(name, component):
    r = rendered(name)
    env = r.env(component)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["SIPCLUSTER_CLUSTER_NODE_ID"]["value"] == "$(POD_NAME)"
    assert env["OTEL_SERVICE_NAME"]["value"] == f"sipcluster-{component}"
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    otel = values_of(name)["otel"]
    if otel["endpoint"]:
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == otel["endpoint"]
        assert "OTEL_TRACES_EXPORTER" not in env
    else:
        assert env["OTEL_TRACES_EXPORTER"]["value"] == "none"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == otel["samplerArg"]
    environment = pod_environment(r.container(component))  # every $(VAR) is defined before use
    if otel["endpoint"]:
        # What the nodes make of it: OTLP/HTTP to the collector's /v1/traces.
        assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        exporter = _span_exporter("otlp", environment)
        assert type(exporter) is OtlpHttpSpanExporter
        assert exporter.endpoint == otel["endpoint"].rstrip("/") + "/v1/traces"
        exporter.shutdown()
    assert r.container(component)["args"][:3] == [component, "--config", "/etc/sipcluster/config.toml"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_worker_grace_period_covers_prestop_and_drain(name):
    r = rendered(name)
    drain = tomllib.loads(r.config_text())["worker"]["drain_timeout"]
    spec = r.pod("worker")["spec"]
    sleep = int(r.container("worker")["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= sleep + drain
    override = values_of(name)["worker"].get("terminationGracePeriodSeconds")
    assert spec["terminationGracePeriodSeconds"] == (override or sleep + math.ceil(drain) + 10)


@pytest.mark.parametrize("name, rule", [("default", "preferred"), ("daemonset-policies", "required")])
def test_workers_spread_over_nodes(name, rule):
    r = rendered(name)
    anti = r.pod("worker")["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti[f"{rule}DuringSchedulingIgnoredDuringExecution"]
    term = term.get("podAffinityTerm", term)
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], r.pod("worker")["metadata"]["labels"])
    assert not selects(term["labelSelector"], r.pod("edge")["metadata"]["labels"])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_selectors_and_targets_point_at_the_right_pods(name):
    r = rendered(name)
    pods = {d["metadata"]["name"]: (d["kind"], d["spec"]["template"]["metadata"]["labels"])
            for d in r.docs if d["kind"] in WORKLOAD_KINDS}
    for doc in r.kinds("PodDisruptionBudget") + r.kinds("Service") + r.kinds("NetworkPolicy"):
        selector = doc["spec"].get("selector") or doc["spec"]["podSelector"]
        matched = [n for n, (_, labels) in pods.items() if selects(selector, labels)]
        assert len(matched) == 1, (doc["kind"], doc["metadata"]["name"], matched)
    for workload in r.docs:
        if workload["kind"] in WORKLOAD_KINDS:
            assert selects(workload["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"])
    for hpa in r.kinds("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert pods[target["name"]][0] == target["kind"] in ("Deployment", "StatefulSet")
    assert {p["metadata"]["name"] for p in r.kinds("PodDisruptionBudget")} >= {
        f"{RELEASE}-sipcluster-edge", f"{RELEASE}-sipcluster-worker"}
    workers = r.workload("worker")
    assert workers["spec"]["serviceName"] == r.named("Service", "-worker-headless")["metadata"]["name"]
    assert r.named("Service", "-worker-headless")["spec"]["clusterIP"] == "None"


def test_autoscaled_workers_leave_one_at_a_time_and_replicas_are_left_to_the_hpa():
    r = rendered("daemonset-policies")
    hpa = r.named("HorizontalPodAutoscaler", "-worker")
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert "replicas" not in r.workload("worker")["spec"]
    assert rendered("default").workload("worker")["spec"]["replicas"] == 3


@pytest.mark.parametrize("name", ["default", "bundled-etcd-3"])
def test_bundled_etcd_members_find_each_other(name, tmp_path):
    r = rendered(name)
    replicas = values_of(name)["etcd"]["bundled"]["replicas"]
    etcd = r.workload("etcd")
    assert etcd["spec"]["replicas"] == replicas
    env = {e["name"]: e.get("value") for e in etcd["spec"]["template"]["spec"]["containers"][0]["env"]}
    members = env["ETCD_INITIAL_CLUSTER"].split(",")
    headless = r.named("Service", "-etcd-headless")
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert members == [f"{RELEASE}-sipcluster-etcd-{i}=http://{RELEASE}-sipcluster-etcd-{i}."
                       f"{headless['metadata']['name']}.{NAMESPACE}.svc:2380" for i in range(replicas)]
    loaded = load_pod_config(r, "worker", tmp_path)
    assert [u.split("//")[1].split(".")[0] for u in loaded.cluster.etcd] == [
        f"{RELEASE}-sipcluster-etcd-{i}" for i in range(replicas)]
    budgets = [p for p in r.kinds("PodDisruptionBudget") if p["metadata"]["name"].endswith("-etcd")]
    assert [p["spec"]["minAvailable"] for p in budgets] == ([2] if replicas == 3 else [])
    persistent = values_of(name)["etcd"]["bundled"]["persistence"]["enabled"]
    assert ("volumeClaimTemplates" in etcd["spec"]) is persistent


def test_external_etcd_renders_no_etcd_and_mounts_the_client_certificate():
    r = rendered("external-etcd-tls")
    assert not [d for d in r.docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "etcd"]
    volumes = {v["name"]: v for v in r.pod("worker")["spec"]["volumes"]}
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client"
    assert r.env("worker")["SIPCLUSTER_CLUSTER_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "etcd-auth", "key": "password"}
    assert not r.kinds("Secret")  # the nonce key comes from the existing Secret
    # The helm test connects as the nodes do: their config file, TLS files and auth Secret.
    (test_pod,) = r.kinds("Pod")
    container = test_pod["spec"]["containers"][0]
    assert container["args"] == ["status", "--config", "/etc/sipcluster/config.toml"]
    assert "/etc/sipcluster/etcd-tls" in {m["mountPath"] for m in container["volumeMounts"]}
    assert {e["name"] for e in container["env"]} == {"SIPCLUSTER_CLUSTER_ETCD_USER",
                                                     "SIPCLUSTER_CLUSTER_ETCD_PASSWORD"}


def test_nonce_secret_is_generated_once_and_shared_by_all_workers():
    r = rendered("default")
    (secret,) = r.kinds("Secret")
    ref = r.env("worker")["SIPCLUSTER_WORKER_NONCE_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "nonce-secret"}
    assert len(base64.b64decode(secret["data"]["nonce-secret"])) == 48
    assert "SIPCLUSTER_WORKER_NONCE_SECRET" not in r.env("edge")


def test_service_monitor_scrapes_edges_and_workers():
    r = rendered("daemonset-policies")
    (monitor,) = r.kinds("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    scraped = [s for s in r.kinds("Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
               and any(p["name"] == "http" for p in s["spec"]["ports"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        f"{RELEASE}-sipcluster-edge-metrics", f"{RELEASE}-sipcluster-worker-headless"]
    for component in ("edge", "worker"):
        annotations = r.pod(component)["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"


def test_metrics_off_renders_no_scraping():
    r = rendered("metrics-off")
    assert not r.kinds("ServiceMonitor")
    assert not [s for s in r.kinds("Service") if s["metadata"]["name"].endswith("-metrics")]
    for component in ("edge", "worker"):
        assert "prometheus.io/scrape" not in r.pod(component)["metadata"]["annotations"]
    assert not rendered("default").kinds("ServiceMonitor")


def _ingress(policy: dict, port_name: str) -> list[dict]:
    (rule,) = [i for i in policy["spec"]["ingress"] if any(p["port"] == port_name for p in i["ports"])]
    return rule.get("from", [])


def test_network_policy_limits_links_and_etcd_to_cluster_members():
    r = rendered("daemonset-policies")
    worker_pod, edge_pod = r.pod("worker")["metadata"]["labels"], r.pod("edge")["metadata"]["labels"]
    peers = _ingress(r.named("NetworkPolicy", "-worker"), "link")
    assert any("podSelector" in p and selects(p["podSelector"], worker_pod) for p in peers)
    # Host-network edges arrive from the nodes' addresses.
    assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in peers
    etcd_peers = _ingress(r.named("NetworkPolicy", "-etcd"), "client")
    assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in etcd_peers
    assert not [p for p in r.kinds("NetworkPolicy") if p["metadata"]["name"].endswith("-edge")]

    r = rendered("deployment-lb")
    peers = _ingress(r.named("NetworkPolicy", "-worker"), "link")
    assert any("podSelector" in p and selects(p["podSelector"], edge_pod) for p in peers)
    edge_policy = r.named("NetworkPolicy", "-edge")
    assert _ingress(edge_policy, "sip-udp") == []  # SIP from anywhere
    assert [p["protocol"] for p in next(i for i in edge_policy["spec"]["ingress"]
                                        if i["ports"][0]["port"] == "sip-udp")["ports"]] == ["UDP", "TCP"]
    assert _ingress(edge_policy, "http") == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("component", ["edge", "worker"])
def test_pods_run_unprivileged(name, component):
    r = rendered(name)
    pod = r.pod(component)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    container = r.container(component)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]


def test_notes_tell_the_operator_what_to_check():
    notes = rendered("deployment-lb").files["sipcluster/templates/NOTES.txt"]
    assert "Advertised in Via/Record-Route: sip.example.net" in notes
    assert "kubectl get service -n voice sip-sipcluster-edge" in notes
    assert "WARNING: config.worker.domains" in notes
    assert "WARNING" not in rendered("daemonset-policies").files["sipcluster/templates/NOTES.txt"]


def test_chart_app_version_is_the_package_version():
    import cluster
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == cluster.__version__
    assert rendered("default").container("worker")["image"] == f"ghcr.io/sipcluster/sipcluster:{cluster.__version__}"


# -- the pods' command, configuration and environment run the real nodes -----

def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.e2e
def test_chart_pods_run_real_nodes_that_serve_and_drain(etcd_server, tmp_path):
    """An edge and a worker started exactly as their pods start them (args,
    config file, environment with the downward API filled in) join through
    etcd, answer an OPTIONS, and stop within their grace periods on SIGTERM."""
    sip, ports = free_port_pair(), [free_port() for _ in range(4)]
    r = render_values({
        "edge": {"sip": {"port": sip}, "bindAddress": "$(POD_IP)", "linkPort": ports[0], "httpPort": ports[1]},
        "worker": {"linkPort": ports[2], "httpPort": ports[3]},
        "etcd": {"mode": "external", "external": {"endpoints": [etcd_server.endpoint]}},
        "config": {"cluster": {"prefix": f"/chart-{sip}"}, "log": {"format": "text"}},
    })
    config = tmp_path / "config.toml"
    config.write_text(r.config_text())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIPCLUSTER_", "OTEL_"))}
    procs = {}
    try:
        for component in ("worker", "edge"):
            container = r.container(component)
            fields = dict(FAKE_FIELDS, **{"metadata.name": f"{component}-0", "status.podIP": "127.0.0.1",
                                          "status.hostIP": "127.0.0.1"})
            env = {**base, **pod_environment(container, fields)}
            args = [str(config) if a == "/etc/sipcluster/config.toml" else a for a in container["args"]]
            with open(tmp_path / f"{component}.log", "wb") as log:  # a file: a pipe could fill and block
                procs[component] = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], env=env,
                                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _ready(ports[3]) and _ready(ports[1]), timeout=60, what="both pods ready")
        # Over TCP: a UDP server transaction lingers for Timer J = 64*T1
        # (RFC 3261 §17.2.2) and the worker's drain would rightly wait 32 s.
        answered = wait_for(lambda: (reply := options(sip, transport="tcp"))[0] == 200 and reply,
                            timeout=30, what="an OPTIONS answered through the edge")
        headers = answered[1]
        assert headers.get("x-sipcluster-shard") == "worker-0"
        for component in ("worker", "edge"):
            grace = r.pod(component)["spec"]["terminationGracePeriodSeconds"]
            procs[component].send_signal(signal.SIGTERM)
            assert procs[component].wait(timeout=grace) == 0, (tmp_path / f"{component}.log").read_text()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.e2e
def test_external_etcd_tls_and_auth_settings_run_a_real_worker_and_the_helm_test(secure_etcd, tmp_path):
    """A worker started exactly as its pod starts it with `etcd.external.tls`
    and `etcd.external.auth` set (config file, mounted TLS files remapped to
    the test's certificates, the auth Secret as environment) joins the ring
    of an etcd with TLS, client-certificate auth and RBAC; then the helm test
    pod's `sipcluster status` reads it the same way."""
    from tests.support.etcd import NODE_PASSWORD, NODE_USER
    ports = [free_port() for _ in range(2)]
    prefix = f"/tls-chart-{ports[0]}"
    r = render_values({
        "worker": {"linkPort": ports[0], "httpPort": ports[1]},
        "etcd": {"mode": "external", "external": {
            "endpoints": [secure_etcd.endpoint],
            "tls": {"enabled": True, "existingSecret": "etcd-client"},
            "auth": {"existingSecret": "etcd-auth"}}},
        "config": {"cluster": {"prefix": prefix}, "log": {"format": "text"}},
    })
    # The Secret's files, where the pod would see them: /etc/sipcluster/etcd-tls/{ca.crt,tls.crt,tls.key}.
    tls_dir = tmp_path / "etcd-tls"
    tls_dir.mkdir()
    for name, source in (("ca.crt", secure_etcd.pki.ca), ("tls.crt", secure_etcd.node_cert),
                         ("tls.key", secure_etcd.node_key)):
        (tls_dir / name).write_bytes(Path(source).read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(r.config_text().replace("/etc/sipcluster/etcd-tls", str(tls_dir)))
    secrets = {("etcd-auth", "username"): NODE_USER, ("etcd-auth", "password"): NODE_PASSWORD}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIPCLUSTER_", "OTEL_"))}
    container = r.container("worker")
    fields = dict(FAKE_FIELDS, **{"metadata.name": "worker-0", "status.podIP": "127.0.0.1",
                                  "status.hostIP": "127.0.0.1"})
    env = {**base, **pod_environment(container, fields, secrets)}
    assert env["SIPCLUSTER_CLUSTER_ETCD_PASSWORD"] == NODE_PASSWORD
    args = [str(config) if a == "/etc/sipcluster/config.toml" else a for a in container["args"]]
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(ports[1]) or proc.poll() is not None, timeout=60, what="the worker ready")
        assert proc.poll() is None, log_path.read_text()
        (test_pod,) = r.kinds("Pod")
        test = test_pod["spec"]["containers"][0]
        test_env = {**base, **pod_environment(test, fields, secrets)}
        test_args = [str(config) if a == "/etc/sipcluster/config.toml" else a for a in test["args"]]
        status = subprocess.run([sys.executable, "-m", "cluster.cli", *test_args, "--json"], env=test_env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        members = json.loads(status.stdout)["members"]
        assert [(m["id"], m["role"]) for m in members] == [("worker-0", "worker")]
        assert members[0]["share"] == 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
