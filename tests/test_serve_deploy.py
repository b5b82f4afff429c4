"""The container and Kubernetes files: they parse and say what the service needs. (Docker
itself cannot run here; these check the files, not an image.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def _docs():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests_parse_and_wire_up():
    docs = _docs()
    assert {"Deployment", "Service", "ConfigMap", "Kustomization"} <= set(docs)
    kust = docs["Kustomization"]
    assert sorted(kust["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )

    config_map = docs["ConfigMap"]
    assert {"MMF_LAKEHOUSE", "MLFLOW_TRACKING_URI"} <= set(config_map["data"])

    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"][:2] == ["mmf", "serve"] and "0.0.0.0" in container["command"]
    port = container["ports"][0]
    assert port["containerPort"] == 8080
    assert container["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"]
    (key,) = [e for e in container["env"] if e["name"] == "MMF_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["key"] == "api-key"

    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["port"] == port["name"]
    ready = container["readinessProbe"]["exec"]["command"]
    assert ready[:2] == ["python", "-c"] and "/ready" in ready[2] and "X-API-Key" in ready[2]
    compile(ready[2], "readinessProbe", "exec")  # the probe script is valid Python
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}

    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]


def test_dockerfile_builds_the_serve_image():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r'pip install "\.\[serve\]"', text)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    health = text[text.index("HEALTHCHECK") :]
    assert "/health" in health.split("CMD", 2)[1]
    assert lines[-1] == 'CMD ["mmf", "serve", "--host", "0.0.0.0", "--port", "8080"]'
    for path in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "lakehouse" in ignored
