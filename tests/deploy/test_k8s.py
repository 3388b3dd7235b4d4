"""The Kubernetes manifests (deploy/k8s/): the base and every overlay render with kustomize, every rendered object
validates against the Kubernetes schemas, and the objects keep what the README promises (probes, resources,
pinned images, Secrets referenced, the overlays' differences, the nginx front agreeing with the API).

kubernetes-validate carries no schema for custom resources (KServe's InferenceService): those get the small
structural check in ``check_inference_service`` instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings
from tests.deploy.nginxconf import NGINX_CONF, nginx_directives, nginx_size, upstream_servers

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TREES = {"base": K8S / "base", "kserve": K8S / "overlays" / "kserve", "cpu": K8S / "overlays" / "cpu"}
KUBERNETES_VERSION = "1.37.0"
CUSTOM_KINDS = {"serving.kserve.io/v1beta1/InferenceService"}
SECRET_NAMES = {"reid-api-keys", "reid-object-storage"}

KUBECTL = shutil.which("kubectl")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every tree rendered once, as `kubectl apply -k` would send it."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: nothing renders the manifests")
    out = {}
    for name, path in TREES.items():
        run = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] == "Deployment"]


def containers(objects: list[dict], *, init: bool = True) -> list[tuple[str, dict]]:
    out = []
    for owner, spec in pod_specs(objects):
        for c in spec["containers"] + (spec.get("initContainers", []) if init else []):
            out.append((f"{owner}/{c['name']}", c))
    return out


def api_config(objects: list[dict]) -> dict[str, str]:
    """The API's settings: the data of the ConfigMap its container takes its environment from."""
    api = one(objects, "Deployment", "reid-api")["spec"]["template"]["spec"]["containers"][0]
    names = [src["configMapRef"]["name"] for src in api.get("envFrom", []) if "configMapRef" in src]
    assert len(names) == 1, "the API reads its settings from exactly one ConfigMap"
    return one(objects, "ConfigMap", names[0])["data"]


def image_tag(image: str) -> str | None:
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" in name:
        return name.split("@", 1)[1]
    return name.split(":", 1)[1] if ":" in name else None


def check_inference_service(obj: dict) -> list[str]:
    """What kubectl would not catch for a custom resource before the cluster's admission webhook does."""
    problems = []
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", obj["metadata"].get("name", "")):
        problems.append("metadata.name must be a DNS-1035 label (KServe derives Service names from it)")
    spec = obj.get("spec", {})
    if set(spec) - {"predictor", "transformer", "explainer"}:
        problems.append(f"unknown spec fields {sorted(set(spec) - {'predictor', 'transformer', 'explainer'})}")
    model = spec.get("predictor", {}).get("model", {})
    if not isinstance(model.get("modelFormat", {}).get("name"), str):
        problems.append("spec.predictor.model.modelFormat.name is required")
    if model.get("protocolVersion") not in {"v1", "v2", "grpc-v2"}:
        problems.append("spec.predictor.model.protocolVersion must be v1, v2 or grpc-v2")
    if not re.match(r"^(s3|gs|hdfs|webhdfs|https?|pvc|oci)://", model.get("storageUri", "")):
        problems.append("spec.predictor.model.storageUri must be an object-storage or pvc URI")
    resources = model.get("resources", {})
    for part in ("requests", "limits"):
        if not isinstance(resources.get(part), dict):
            problems.append(f"spec.predictor.model.resources.{part} missing")
    for field in ("minReplicas", "maxReplicas", "scaleTarget"):
        value = spec.get("predictor", {}).get(field)
        if value is not None and not (isinstance(value, int) and value >= 0):
            problems.append(f"spec.predictor.{field} must be a non-negative integer")
    return problems


@pytest.mark.parametrize("tree", TREES)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, tree):
    problems = []
    for obj in rendered[tree]:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if f"{obj['apiVersion']}/{obj['kind']}" in CUSTOM_KINDS:
            problems += [f"{label}: {p}" for p in check_inference_service(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            problems.append(f"{label}: {getattr(e, 'message', e)}")
    assert not problems, "\n".join(problems)


def test_the_structural_check_of_custom_resources_finds_errors(rendered):
    isvc = one(rendered["kserve"], "InferenceService", "reid")
    assert check_inference_service(isvc) == []
    broken = yaml.safe_load(yaml.safe_dump(isvc))
    broken["metadata"]["name"] = "Reid_1"
    broken["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    del broken["spec"]["predictor"]["model"]["storageUri"]
    assert len(check_inference_service(broken)) == 3


@pytest.mark.parametrize("tree", TREES)
def test_references_between_objects_resolve(rendered, tree):
    """Generated ConfigMaps carry a hash suffix: every pod must name one that exists; Secrets are never rendered."""
    objects = rendered[tree]
    configmaps = {o["metadata"]["name"] for o in find(objects, "ConfigMap")}
    for owner, spec in pod_specs(objects):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{owner}: volume {volume['name']}"
        for c in spec["containers"] + spec.get("initContainers", []):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, f"{owner}/{c['name']}"
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in SECRET_NAMES
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}, (
                f"{owner}/{c['name']} mounts a missing volume"
            )
    services = {o["metadata"]["name"]: o for o in find(objects, "Service")}
    deployments = find(objects, "Deployment")
    for name, service in services.items():
        selector = service["spec"]["selector"].items()
        assert any(selector <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments), (
            f"Service {name} selects no pods"
        )
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        one(objects, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])


@pytest.mark.parametrize("tree", TREES)
def test_probes_on_the_health_paths(rendered, tree):
    objects = rendered[tree]
    for owner, c in containers(objects, init=False):
        assert "livenessProbe" in c and "readinessProbe" in c, f"{owner} has no liveness or readiness probe"
    api = one(objects, "Deployment", "reid-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    for triton in find(objects, "Deployment", "reid-triton"):
        c = triton["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}


@pytest.mark.parametrize("tree", TREES)
def test_every_container_requests_resources_and_runs_unprivileged(rendered, tree):
    for owner, c in containers(rendered[tree]):
        requests = c.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= requests.keys(), f"{owner} requests {sorted(requests)}"
        assert "memory" in c["resources"].get("limits", {}), f"{owner} has no memory limit"
        security = c.get("securityContext", {})
        assert security.get("readOnlyRootFilesystem") is True, f"{owner}: root file system is writable"
        assert security.get("allowPrivilegeEscalation") is False, f"{owner}: privilege escalation allowed"
        assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{owner} keeps capabilities"
    for owner, spec in pod_specs(rendered[tree]):
        assert spec["securityContext"]["runAsNonRoot"] is True, f"{owner} may run as root"


@pytest.mark.parametrize("tree", TREES)
def test_images_are_pinned(rendered, tree):
    images = [c["image"] for _, c in containers(rendered[tree])]
    assert images
    for image in images:
        tag = image_tag(image)
        assert tag and tag != "latest", f"{image} is not pinned to a tag"


@pytest.mark.parametrize("tree", TREES)
def test_api_keys_come_from_a_secret_never_inlined(rendered, tree):
    objects = rendered[tree]
    assert not find(objects, "Secret"), "a Secret is rendered into the manifests"
    for cm in find(objects, "ConfigMap"):
        leaked = [k for k in cm.get("data", {}) if re.search(r"KEY|SECRET|PASSWORD|TOKEN", k)]
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds {leaked}"
    api = one(objects, "Deployment", "reid-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in api.get("env", [])}
    for name in ("REID_ADMIN_KEYS", "REID_READ_KEYS"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "reid-api-keys",
            "key": name,
            **({"optional": True} if name == "REID_READ_KEYS" else {}),
        }
        assert "value" not in env[name]
    # Admin keys are required: a cluster without the Secret gets a pod that does not start, not an open API.
    assert env["REID_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"].get("optional") is not True


def test_the_secret_example_is_empty_and_in_no_kustomization():
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "reid-api-keys"
    assert set(example["stringData"]) == {"REID_ADMIN_KEYS", "REID_READ_KEYS"}
    assert all(value == "" for value in example["stringData"].values()), "the example must not carry keys"
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example" not in kustomization.read_text(), f"{kustomization} includes the example Secret"


@pytest.mark.parametrize("tree", TREES)
def test_api_settings_are_settings_the_server_reads(rendered, tree):
    config = api_config(rendered[tree])
    fields = set(Settings.model_fields)
    unknown = [k for k in config if not k.startswith("REID_") or k.removeprefix("REID_").lower() not in fields]
    if unknown == ["REID_GALLERY_URI"] and "gallery_uri" not in fields:
        pytest.skip("server/settings.py has no gallery_uri yet (the Milvus gallery backend is not merged)")
    assert not unknown, f"the API's ConfigMap sets {unknown}, which server/settings.py does not read"
    assert config["REID_GALLERY_URI"].startswith("milvus://")
    backend = Settings.model_validate({k.removeprefix("REID_").lower(): v for k, v in config.items()}).backend
    assert backend == ("onnx" if tree == "cpu" else "triton")


def test_base_triton_serves_on_a_gpu_behind_a_headless_service(rendered):
    objects = rendered["base"]
    triton = one(objects, "Deployment", "reid-triton")
    template = triton["spec"]["template"]
    c = template["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}
    assert "--model-repository=/models" in c["args"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
    # The image is the one docker/compose.yml runs, so one artifact serves in both.
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    compose_image = re.sub(r"\$\{TRITON_IMAGE:-(.+)\}", r"\1", compose["services"]["triton"]["image"])
    assert c["image"] == compose_image

    headless = one(objects, "Service", "reid-triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    # The API resolves the headless name to every replica's address.
    config = api_config(objects)
    assert config["REID_TRITON_URL"] == f"dns:///reid-triton-headless:{grpc_port}"
    assert config["REID_TRITON_PROTOCOL"] == "grpc"

    hpa = one(objects, "HorizontalPodAutoscaler", "reid-triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reid-triton"}
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_kserve_overlay_replaces_triton_with_an_inference_service(rendered):
    objects = rendered["kserve"]
    triton_labelled = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if o["kind"] != "InferenceService"
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "triton"
    ]
    assert not triton_labelled, f"the kserve overlay still renders {triton_labelled}"
    assert not any("tritonserver" in c["image"] for _, c in containers(objects))
    assert not find(objects, "HorizontalPodAutoscaler")

    isvc = one(objects, "InferenceService", "reid")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The same model repository and the same Triton release as the base.
    base = rendered["base"]
    source = next(cm for cm in find(base, "ConfigMap") if cm["metadata"]["name"].startswith("reid-model-source"))
    assert model["storageUri"] == source["data"]["MODEL_REPOSITORY_URI"]
    base_triton = one(base, "Deployment", "reid-triton")["spec"]["template"]["spec"]["containers"][0]
    assert model["runtimeVersion"] == image_tag(base_triton["image"])
    # KServe names the predictor's Service after the InferenceService.
    host = api_config(objects)["REID_TRITON_URL"].rsplit(":", 1)[0]
    assert host == f"{isvc['metadata']['name']}-predictor"


def test_cpu_overlay_has_no_triton_and_embeds_with_onnx_from_a_volume(rendered):
    objects = rendered["cpu"]
    text = yaml.safe_dump_all(objects)
    assert "triton" not in text.lower(), "the cpu overlay still mentions Triton"
    config = api_config(objects)
    assert config["REID_BACKEND"] == "onnx"
    api = one(objects, "Deployment", "reid-api")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in api["containers"][0]["volumeMounts"]}
    artifact_mount = mounts[config["REID_ARTIFACT"]]
    assert artifact_mount["readOnly"] is True
    volume = next(v for v in api["volumes"] if v["name"] == artifact_mount["name"])
    assert "persistentVolumeClaim" in volume


@pytest.mark.parametrize("tree", TREES)
def test_the_public_service_is_the_buffering_proxy_in_front_of_the_api(rendered, tree):
    objects = rendered[tree]
    proxy = one(objects, "Deployment", "reid-proxy")["spec"]["template"]
    public = one(objects, "Service", "reid")
    assert public["spec"]["selector"].items() <= proxy["metadata"]["labels"].items()
    nginx = proxy["spec"]["containers"][0]
    config_volume = next(v for v in proxy["spec"]["volumes"] if "configMap" in v)
    conf = one(objects, "ConfigMap", config_volume["configMap"]["name"])["data"]["nginx.conf"]
    assert conf == NGINX_CONF.read_text(), "the proxy's ConfigMap is not deploy/k8s/base/nginx.conf"

    directives = nginx_directives(conf)
    assert directives["proxy_request_buffering"] == ["on"]
    for name in ("client_body_timeout", "client_header_timeout", "keepalive_timeout"):
        assert name in directives, f"nginx.conf sets no {name}"
    container_ports = {p["containerPort"] for p in nginx["ports"]}
    assert {int(v) for v in directives["listen"]} == container_ports
    # nginx sends to the API's Service, and refuses bodies exactly above the API's own upload limit.
    api_service = one(objects, "Service", "reid-api")
    assert upstream_servers(conf) == [f"reid-api:{api_service['spec']['ports'][0]['port']}"]
    limit = nginx_size(directives["client_max_body_size"][0])
    assert limit == int(api_config(objects)["REID_MAX_UPLOAD_BYTES"]) == Settings().max_upload_bytes
    assert f"larger than {limit} bytes" in conf


def test_yamllint_passes_on_deploy():
    run = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint"), "deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def render_with_components(tmp_path: Path, *components: str) -> list[dict]:
    """The base plus components, through an overlay outside the repository, as a user's own overlay would be."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: nothing renders the manifests")
    rel = Path(os.path.relpath(K8S, tmp_path))
    lines = ["resources:", f"  - {rel / 'base'}", "components:", *(f"  - {rel / 'components' / c}" for c in components)]
    (tmp_path / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    run = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    objects = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    return objects


def test_model_repository_pvc_component_mounts_the_claim_instead_of_copying(tmp_path):
    objects = render_with_components(tmp_path, "model-repository-pvc")
    spec = one(objects, "Deployment", "reid-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    # The patch replaces a volume by position: it must still be the models volume, and every mount must resolve.
    names = [v["name"] for v in spec["volumes"]]
    assert len(names) == len(set(names)) and {m["name"] for m in spec["containers"][0]["volumeMounts"]} <= set(names)
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "reid-model-repository", "readOnly": True},
    }
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True
    assert not [o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("reid-model-source")]


def test_queue_autoscaling_component_scales_triton_on_its_pending_requests(tmp_path):
    objects = render_with_components(tmp_path, "triton-queue-autoscaling")
    [metric] = one(objects, "HorizontalPodAutoscaler", "reid-triton")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "nv_inference_pending_request_count"


def test_make_manifests_writes_the_renders_the_tests_check(rendered, tmp_path):
    run = subprocess.run(
        ["make", "-s", "manifests", f"MANIFESTS={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    for tree, objects in rendered.items():
        assert [doc for doc in yaml.safe_load_all((tmp_path / f"{tree}.yaml").read_text()) if doc] == objects
