"""The Helm chart (helm/vectorhive), rendered by Helm v4's own engine (the helm-python-sdk package,
no helm binary): it lints, renders with its defaults and every ci/*-values.yaml, every built-in
manifest validates against the Kubernetes schemas, and what matters holds."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from service.config import Settings, load_settings
from tests.conftest import MakeSettings

helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk (pip install -e '.[dev]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "vectorhive"
VARIANTS = sorted(CHART.glob("ci/*-values.yaml"))
KUBE_VERSION = "1.30.0"
# Custom resources: no schema in kubernetes-validate; their own checks are below.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("postgresql.cnpg.io/v1", "Cluster")}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="vh", namespace="prod", is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in manifests.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def values_of(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yml"])
    return loaded


def app_routes() -> set[str]:
    from service.app import create_app

    app = create_app(load_settings(environ={}, cwd=Path(tempfile.mkdtemp())))
    return {route.path for route in app.routes}


params = pytest.mark.parametrize("variant", [None, *VARIANTS], ids=["defaults", *(p.stem for p in VARIANTS)])


def test_variants_exist() -> None:
    names = {p.name for p in VARIANTS}
    assert {
        "external-secret-values.yaml",
        "cnpg-values.yaml",
        "hpa-values.yaml",
        "metrics-values.yaml",
        "ingress-values.yaml",
    } <= names


@params
def test_chart_lints(variant: Path | None) -> None:
    report = helm.lint(str(CHART), values_of(variant), strict=True, kube_version=f"v{KUBE_VERSION}")
    errors = [m for m in report["messages"] if m["severity"] >= 2 and "icon is recommended" not in m["error"]]
    assert not errors and not report["errors"], report


@params
def test_every_manifest_validates_against_the_kubernetes_schemas(variant: Path | None) -> None:
    docs = render(values_of(variant))
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            assert doc["metadata"]["name"] and doc["spec"]
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            ) from None


@params
def test_probes_point_at_real_routes(variant: Path | None) -> None:
    docs = render(values_of(variant))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "vectorhive")
    routes = app_routes()
    probes = {name: server[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] == "http"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    config = config_of(docs)
    assert ports["http"] == config["server"]["port"] and config["server"]["host"] == "0.0.0.0"
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert (
        pod["terminationGracePeriodSeconds"] > int(server["lifecycle"]["preStop"]["exec"]["command"][1]) + 30
    )
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert "/tmp" in mounts and config["embeddings"]["cache_dir"] in mounts


@params
def test_rendered_config_loads_with_the_projects_own_loader(variant: Path | None, tmp_path: Path) -> None:
    config = config_of(render(values_of(variant)))
    # Sections of a newer vectorhive that this checkout does not have yet (embeddings: issue 12) are
    # checked once it does; everything else must load as it is.
    ahead = {s for s in config if s not in Settings.__struct_fields__}
    assert ahead <= {"embeddings", "generation"}, ahead
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in ahead}))
    settings = load_settings(path, environ={}, cwd=tmp_path)
    assert settings.server.host == "0.0.0.0"
    if settings.metrics.enabled:
        assert settings.metrics.port is not None


@params
def test_no_secret_value_in_a_configmap(variant: Path | None) -> None:
    docs = render(values_of(variant))
    secrets: list[str] = []
    for doc in docs:
        if doc["kind"] == "Secret":
            secrets.extend(base64.b64decode(v).decode() for v in doc.get("data", {}).values())
    text = yaml.safe_dump([d for d in docs if d["kind"] in ("ConfigMap", "Deployment", "Job")])
    for secret in secrets:
        assert secret not in text
    for word in ("s3cret", "password@"):
        assert word not in text


def test_inline_secrets_reach_the_pods_from_secrets() -> None:
    values = values_of(CHART / "ci" / "external-url-values.yaml")
    docs = render(values)
    secret = one(docs, "Secret", "vh-vectorhive")
    assert base64.b64decode(secret["data"]["database-url"]).decode() == values["database"]["url"]
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in (
        "VECTORHIVE_DATABASE__URL",
        "VECTORHIVE_RATE_LIMITING__STORAGE_URI",
        "VECTORHIVE_CLUSTER__HIVEHUB_API_KEY",
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "vh-vectorhive"
    # The pre-install hook cannot use the release's Secret (it does not exist yet): it has its own.
    hook_secret = one(docs, "Secret", "-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_existing_secrets_everywhere() -> None:
    docs = render(values_of(CHART / "ci" / "external-secret-values.yaml"))
    assert not [d for d in docs if d["kind"] == "Secret"]  # nothing inline: the chart makes none
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VECTORHIVE_DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "vectorhive-db",
        "key": "url",
    }
    assert (
        env["VECTORHIVE_RATE_LIMITING__STORAGE_URI"]["valueFrom"]["secretKeyRef"]["name"]
        == "vectorhive-redis"
    )
    assert env["VECTORHIVE_CLUSTER__HIVEHUB_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "vectorhive-hivehub",
        "key": "api-key",
    }
    config = config_of(docs)
    assert config["cluster"]["enabled"] is True and config["database"]["migrate_on_startup"] is False


def test_templates_never_use_lookup() -> None:
    for template in (CHART / "templates").iterdir():
        assert "lookup" not in template.read_text(), template


@pytest.mark.parametrize("variant", ["external-secret-values.yaml", "cnpg-values.yaml", "hpa-values.yaml"])
def test_the_migration_hook_runs_vectorhive_migrate_and_replicas_do_not(variant: str) -> None:
    docs = render(values_of(CHART / "ci" / variant))
    job = one(docs, "Job", "-migrate")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks
    assert ("post-install" if variant == "cnpg-values.yaml" else "pre-install") in hooks
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == ["vectorhive", "migrate"]
    assert "VECTORHIVE_DATABASE__URL" in {e["name"] for e in container["env"]}
    assert config_of(docs)["database"]["migrate_on_startup"] is False
    from service.cli import build_parser

    assert build_parser().parse_args(container["args"]).command == "migrate"


def test_embedded_default_migrates_in_the_pod_and_has_one_replica() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "Job"]
    assert config_of(docs)["database"]["migrate_on_startup"] is True
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


LIMITS_ON = {"config": {"rate_limiting": {"enabled": True}}}


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 3, "database": {"existingSecret": "db"}, **LIMITS_ON},
        {"autoscaling": {"enabled": True}, "database": {"url": "postgresql://u:p@db/vh"}, **LIMITS_ON},
        # Cluster mode (a HiveHub URL) switches rate limits on by default.
        {"replicaCount": 2, "cnpg": {"enabled": True}, "hivehub": {"url": "http://hivehub:8080"}},
    ],
    ids=["replicas", "hpa", "cnpg-cluster-mode"],
)
def test_more_than_one_replica_with_rate_limits_without_redis_does_not_render(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match="needs Redis"):
        render(values)
    render({**values, "redis": {"url": "redis://redis:6379/0"}})  # the same with Redis renders


def test_more_than_one_replica_outside_cluster_mode_needs_no_redis() -> None:
    """Rate limits are off by default outside cluster mode, so there is nothing to share."""
    rendered = render({"replicaCount": 3, "database": {"existingSecret": "db"}})
    assert "VECTORHIVE_RATE_LIMITING__STORAGE_URI" not in str(rendered)
    render(
        {
            "replicaCount": 3,
            "database": {"existingSecret": "db"},
            "config": {"rate_limiting": {"enabled": None}},
        }
    )


def test_values_the_chart_refuses() -> None:
    with pytest.raises(helm.HelmError, match="external PostgreSQL"):
        render({"replicaCount": 2, "redis": {"url": "redis://r:6379"}})  # embedded database, two pods
    with pytest.raises(helm.HelmError):
        render({"config": {"database": {"url": "postgresql://u:p@db/vh"}}})  # a secret in the ConfigMap
    with pytest.raises(helm.HelmError):
        render({"config": {"rate_limiting": {"storage_uri": "redis://:pw@r:6379"}}})
    with pytest.raises(helm.HelmError, match="api_key"):
        remote = {"url": "http://gpu/v1", "api_key": "sk-1"}
        render({"config": {"embeddings": {"models": {"remote": remote}}}})
    with pytest.raises(helm.HelmError):
        render({"replicaCount": "three"})  # values.schema.json
    with pytest.raises(helm.HelmError):
        render({"databse": {"url": "postgresql://x/y"}})  # a misspelt key is not silently ignored


def test_hpa_pdb_and_spread() -> None:
    docs = render(values_of(CHART / "ci" / "hpa-values.yaml"))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["maxReplicas"] == 8
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_metrics_on_their_own_port_and_service_monitor() -> None:
    docs = render(values_of(CHART / "ci" / "metrics-values.yaml"))
    assert config_of(docs)["metrics"] == {"enabled": True, "port": 9464, "host": "0.0.0.0"}
    metrics_service = one(docs, "Service", "-metrics")
    assert metrics_service["spec"]["ports"][0]["port"] == 9464
    api_service = one(docs, "Service", "vh-vectorhive")
    assert [p["name"] for p in api_service["spec"]["ports"]] == ["http"]  # /metrics not on the API Service
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics" and "/metrics" in app_routes()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()


def test_cnpg_cluster_creates_the_vector_extension_and_vectorhive_uses_its_rw_secret() -> None:
    docs = render(values_of(CHART / "ci" / "cnpg-values.yaml"))
    cluster = one(docs, "Cluster")
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert "CREATE EXTENSION IF NOT EXISTS vector" in initdb["postInitApplicationSQL"]
    assert any("CREATEROLE" in sql for sql in initdb["postInitApplicationSQL"])
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["VECTORHIVE_DATABASE__URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": cluster["metadata"]["name"] + "-app", "key": "uri"}  # host: <cluster>-rw
    assert not render().__contains__(cluster)  # off by default
    assert not [d for d in render() if d["kind"] == "Cluster"]


def test_ingress_routes_to_the_api_port() -> None:
    docs = render(values_of(CHART / "ci" / "ingress-values.yaml"))
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "vh-vectorhive", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == ["vectors.example.com"]


def test_models_init_container_prepares_into_the_models_volume() -> None:
    docs = render(values_of(CHART / "ci" / "cnpg-values.yaml"))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["args"][:2] == ["models", "prepare"]
    cache_dir = config_of(docs)["embeddings"]["cache_dir"]
    assert cache_dir in {m["mountPath"] for m in init["volumeMounts"]}
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "vh-vectorhive-models"
    assert one(docs, "PersistentVolumeClaim", "-models")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_generation_can_point_at_a_remote_server() -> None:
    docs = render(
        {"generation": {"url": "http://gpu-pool:8080/v1", "model": "qwen", "existingSecret": "gen"}}
    )
    generation = config_of(docs)["generation"]
    assert generation["default_model"] == "qwen"
    assert generation["models"]["qwen"] == {
        "url": "http://gpu-pool:8080/v1",
        "remote_model": "qwen",
        "api_key": "${VECTORHIVE_GENERATION_API_KEY:-}",
    }
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VECTORHIVE_GENERATION_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "gen"
    assert "models" not in config_of(render())["generation"]  # the default: the model in process


def test_rendered_remote_generation_loads_with_its_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render({"generation": {"url": "http://gpu-pool:8080/v1", "model": "qwen", "apiKey": "s3cret"}})
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config_of(docs)))
    assert "s3cret" not in path.read_text()
    monkeypatch.setenv("VECTORHIVE_GENERATION_API_KEY", "s3cret")  # ${...} in config.yml reads the process's
    settings = load_settings(path, environ={}, cwd=tmp_path)
    assert settings.generation.default_model == "qwen"
    model = settings.generation.models["qwen"]
    assert (model.url, model.remote_model, model.api_key) == ("http://gpu-pool:8080/v1", "qwen", "s3cret")


def test_mcp_hosts_origins_and_resource_url() -> None:
    """mcp.* values reach config.yml: the Service's names always (in-cluster agents), the ingress
    hosts when there is an Ingress, and the public URL of the first ingress host."""
    default = config_of(render())["mcp"]
    assert default["enabled"] is True and "resource_url" not in default
    assert {"localhost", "127.0.0.1:*", "vh-vectorhive", "vh-vectorhive.prod.svc.cluster.local:*"} <= set(
        default["allowed_hosts"]
    )
    assert default["allowed_origins"] == ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]

    ingress = config_of(render(values_of(CHART / "ci" / "ingress-values.yaml")))["mcp"]
    assert {"vectors.example.com", "vectors.example.com:*"} <= set(ingress["allowed_hosts"])
    assert ingress["resource_url"] == "https://vectors.example.com/mcp"  # the host has a tls entry
    no_tls = {
        "enabled": True,
        "hosts": [{"host": "a.example", "paths": [{"path": "/", "pathType": "Prefix"}]}],
    }
    assert config_of(render({"ingress": no_tls}))["mcp"]["resource_url"] == "http://a.example/mcp"
    # A host named by the values but no Ingress enabled: not added.
    assert "vectorhive.example.com" not in default["allowed_hosts"]

    chosen = config_of(
        render(
            {
                "ingress": no_tls,
                "mcp": {
                    "enabled": False,
                    "allowedHosts": ["agents.internal"],
                    "addServiceHosts": False,
                    "addIngressHosts": False,
                    "allowedOrigins": ["https://console.example"],
                    "resourceUrl": "https://public.example/v/mcp",
                },
            }
        )
    )["mcp"]
    assert chosen == {
        "enabled": False,
        "allowed_hosts": ["agents.internal"],
        "allowed_origins": ["https://console.example"],
        "resource_url": "https://public.example/v/mcp",
    }
    with pytest.raises(helm.HelmError, match=r"config\.mcp\.allowed_hosts is set by the chart"):
        render({"config": {"mcp": {"allowed_hosts": ["x"]}}})
    with pytest.raises(helm.HelmError):
        render({"mcp": {"resourceUrl": "public.example/mcp"}})  # values.schema.json: a URL
    with pytest.raises(helm.HelmError):
        render({"mcp": {"allowedHost": ["x"]}})  # misspelt


async def test_rendered_mcp_config_admits_the_ingress_host_only(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """The rendered mcp section, loaded by the project's loader, configures the SDK's transport
    security: the Ingress host and the Service name get past it (to the 401 of a missing key), a
    foreign Host gets 421 and a foreign Origin 403."""
    from litestar.testing import AsyncTestClient

    from service.app import create_app

    path = tmp_path / "config.yml"
    rendered = config_of(render(values_of(CHART / "ci" / "ingress-values.yaml")))
    path.write_text(yaml.safe_dump({"mcp": rendered["mcp"]}))
    mcp = load_settings(path, environ={}, cwd=tmp_path).mcp
    assert mcp.resource_url == "https://vectors.example.com/mcp"
    app = create_app(make_settings(mcp=msgspec.to_builtins(mcp)))
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    async with AsyncTestClient(app) as client:
        for host in ("vectors.example.com", "vectors.example.com:443", "vh-vectorhive.prod.svc"):
            answer = await client.post("/mcp", json=body, headers={**accept, "Host": host})
            assert answer.status_code == 401, (host, answer.text)
            assert (
                "https://vectors.example.com/.well-known/oauth-protected-resource/mcp"
                in (answer.headers["www-authenticate"])
            )
        foreign = await client.post("/mcp", json=body, headers={**accept, "Host": "evil.example"})
        assert foreign.status_code == 421
        origin = {**accept, "Host": "vectors.example.com", "Origin": "https://evil.example"}
        assert (await client.post("/mcp", json=body, headers=origin)).status_code == 403
