"""Deployment artefacts: the kustomize overlays, the training Job example and the Dockerfile agree.

No cluster and no container engine: ``kubectl kustomize`` renders the manifests, the Dockerfile is
parsed as text. Each test names the property a broken manifest would lose.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.spec import parse_spec
from tests.assets.kubectl import kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_MODEL_CONFIG = K8S / "image" / "model-config.yaml"
MANAGEMENT_PORTS = {8081, 7071}
OVERLAYS = ("cpu", "gpu")

Doc = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def job() -> Doc:
    return _one(kustomize(K8S / "examples"), "Job")


def _all(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def _one(docs: list[Doc], kind: str) -> Doc:
    found = _all(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def _pod(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def _container(workload: Doc) -> Doc:
    containers = _pod(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    return containers[0]


def _container_ports(container: Doc) -> dict[str | int, int]:
    """Both ways a Service or probe may name a container port: by name and by number."""
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def _mount(workload: Doc, path: str) -> tuple[Doc, Doc]:
    """The volumeMount at ``path`` and the pod volume behind it."""
    mounts = [m for m in _container(workload).get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{workload['metadata']['name']}: expected one mount at {path}"
    volumes = {v["name"]: v for v in _pod(workload).get("volumes", [])}
    return mounts[0], volumes[mounts[0]["name"]]


def _service_target_ports(docs: list[Doc]) -> set[int]:
    container_ports = _container_ports(_container(_one(docs, "Deployment")))
    return {container_ports[p.get("targetPort", p["port"])] for p in _one(docs, "Service")["spec"]["ports"]}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _image_tag(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


# --- Service and ports --------------------------------------------------------------------------


def test_every_service_port_exists_on_the_container(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    container_ports = _container_ports(_container(_one(docs, "Deployment")))
    for port in _one(docs, "Service")["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in container_ports, f"{name}: Service port {port['name']} targets {target!r}, absent"


def test_service_exposes_the_serving_ports_and_not_management(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    service = _one(docs, "Service")
    ports = {p["port"] for p in service["spec"]["ports"]}
    assert ports == {8080, 7070, 8001, 8082}, f"{name}: Service ports {sorted(ports)}"
    assert not MANAGEMENT_PORTS & (ports | _service_target_ports(docs)), f"{name}: management exposed"


def test_service_selects_the_servers_and_not_the_trainer(overlay: tuple[str, list[Doc]], job: Doc) -> None:
    _, docs = overlay
    selector = _one(docs, "Service")["spec"]["selector"]
    deployment = _one(docs, "Deployment")
    assert _selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    assert not _selects(selector, job["spec"]["template"]["metadata"]["labels"])
    # The Deployment must own its pods, and not the trainer's.
    own = deployment["spec"]["selector"]["matchLabels"]
    assert _selects(own, deployment["spec"]["template"]["metadata"]["labels"])
    assert not _selects(own, job["spec"]["template"]["metadata"]["labels"])


def test_network_policy_admits_exactly_the_service_ports(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    policy = _one(docs, "NetworkPolicy")
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    container_ports = _container_ports(_container(_one(docs, "Deployment")))
    allowed = {
        container_ports.get(p["port"], p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]
    }
    assert allowed == _service_target_ports(docs), f"{name}: NetworkPolicy ports {sorted(allowed)}"
    assert not allowed & MANAGEMENT_PORTS


# --- probes, lifecycle, resources ---------------------------------------------------------------


def test_probes(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    container = _container(_one(docs, "Deployment"))
    ports = _container_ports(container)
    # Readiness: a model waiting for its first checkpoint is not ready (TorchServe's /ping says it is).
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[:3] == ["ckptserve", "status", "--ready"], f"{name}: readiness {readiness}"
    startup = container["startupProbe"]
    # The startup budget must cover a slow first load; liveness only starts after it.
    assert startup["failureThreshold"] * startup.get("periodSeconds", 10) >= 120, f"{name}: startup budget"
    liveness = container["livenessProbe"]
    assert liveness.get("failureThreshold", 3) >= 3
    target = (liveness.get("tcpSocket") or liveness.get("httpGet"))["port"]
    assert ports[target] == 8080, f"{name}: liveness probes {target!r}"


def test_graceful_termination(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    deployment = _one(docs, "Deployment")
    command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", f"{name}: preStop {command}"
    # The grace period covers the preStop sleep plus the in-flight requests (responseTimeout).
    response_timeout = yaml.safe_load(IMAGE_MODEL_CONFIG.read_text())["responseTimeout"]
    assert _pod(deployment)["terminationGracePeriodSeconds"] > int(command[1]) + response_timeout
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, f"{name}: a rollout must not drop capacity"


def test_resources_are_set(overlay: tuple[str, list[Doc]], job: Doc) -> None:
    name, docs = overlay
    for workload in (_one(docs, "Deployment"), job):
        resources = _container(workload)["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"], f"{name}: {workload['kind']} requests.{key} missing"
        assert "memory" in resources["limits"], f"{name}: {workload['kind']} limits.memory missing"
    requests = _container(_one(docs, "Deployment"))["resources"]["requests"]
    workers = yaml.safe_load(IMAGE_MODEL_CONFIG.read_text())["minWorkers"]
    assert _cpu(requests["cpu"]) >= workers, f"{name}: fewer CPUs requested than single-threaded workers"


def _cpu(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_replicas_spread_across_nodes(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    deployment = _one(docs, "Deployment")
    constraints = _pod(deployment)["topologySpreadConstraints"]
    by_host = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_host and _selects(
        by_host[0]["labelSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


# --- security -----------------------------------------------------------------------------------


def _assert_hardened(workload: Doc) -> None:
    pod, container = _pod(workload), _container(workload)
    name = f"{workload['kind']}/{workload['metadata']['name']}"
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["runAsUser"] != 0, name
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True, name
    assert security["allowPrivilegeEscalation"] is False, name
    assert "ALL" in security["capabilities"]["drop"], name
    assert pod["automountServiceAccountToken"] is False, name
    # A read-only root filesystem needs a writable /tmp, and TMPDIR pointing there.
    _, tmp = _mount(workload, "/tmp")
    assert "emptyDir" in tmp, name
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("TMPDIR") == "/tmp", name


def test_server_and_trainer_are_hardened(overlay: tuple[str, list[Doc]], job: Doc) -> None:
    _, docs = overlay
    deployment = _one(docs, "Deployment")
    _assert_hardened(deployment)
    _assert_hardened(job)
    env = {e["name"]: e.get("value") for e in _container(deployment)["env"]}
    assert env.get("TEMP") == "/tmp", "TorchServe's worker sockets go under TEMP"
    log_mount, log_volume = _mount(deployment, env["LOG_LOCATION"])
    assert "emptyDir" in log_volume and not log_mount.get("readOnly", False)
    account = _one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert _pod(deployment)["serviceAccountName"] == account["metadata"]["name"]


def test_uid_matches_the_dockerfile(overlay: tuple[str, list[Doc]], job: Doc) -> None:
    _, docs = overlay
    user = _dockerfile_user().split(":")[0]
    for workload in (_one(docs, "Deployment"), job):
        assert str(_pod(workload)["securityContext"]["runAsUser"]) == user


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoints_read_only_for_servers_read_write_for_training(
    overlay: tuple[str, list[Doc]], job: Doc
) -> None:
    name, docs = overlay
    pvc = _one(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "many pods on many nodes share the volume"
    mount, volume = _mount(_one(docs, "Deployment"), "/checkpoints")
    assert mount["readOnly"] is True, f"{name}: servers must not write checkpoints"
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mount, volume = _mount(job, "/checkpoints")
    assert not mount.get("readOnly", False) and not volume["persistentVolumeClaim"].get("readOnly", False)
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    command = _container(job).get("command", []) + _container(job).get("args", [])
    assert "model_store/digits/train.py" in command and "/checkpoints" in command


def test_image_config_watches_the_mounted_volume() -> None:
    config = yaml.safe_load(IMAGE_MODEL_CONFIG.read_text())
    handler = config["handler"]
    assert "checkpoint" not in handler, "the image must not bake weights in: they come from the volume"
    # The project's own validator accepts it (labels resolve against the archive's files).
    spec = parse_spec(handler, model_dir=ROOT / "model_store" / "digits", source=str(IMAGE_MODEL_CONFIG))
    assert spec.reload.watch_dir == Path("/checkpoints")
    assert spec.architecture == "model:DigitsCNN"
    assert config["minWorkers"] == config["maxWorkers"]


# --- image --------------------------------------------------------------------------------------


def test_images_are_pinned_and_the_job_runs_the_servers_image(
    rendered: dict[str, list[Doc]], job: Doc
) -> None:
    images = {name: _container(_one(docs, "Deployment"))["image"] for name, docs in rendered.items()}
    images["job"] = _container(job)["image"]
    for name, image in images.items():
        tag = _image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
    assert images["cpu"] == images["job"], "training and CPU serving must run the same image"
    assert _image_tag(images["gpu"]) == f"{_image_tag(images['cpu'])}-cuda"
    # The tag is the project's version: bump them together.
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and _image_tag(images["cpu"]) == version.group(1)


# --- autoscaling and disruption -----------------------------------------------------------------


def test_hpa_scales_the_deployment(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    hpa, deployment = _one(docs, "HorizontalPodAutoscaler"), _one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == "apps/v1"
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0, name


def test_pdb_keeps_a_server(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    pdb, deployment = _one(docs, "PodDisruptionBudget"), _one(docs, "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert _one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


# --- GPU overlay --------------------------------------------------------------------------------


def test_gpu_overlay_requests_a_gpu_and_cpu_does_not(rendered: dict[str, list[Doc]]) -> None:
    gpu = _one(rendered["gpu"], "Deployment")
    assert str(_container(gpu)["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(t.get("key") == "nvidia.com/gpu" for t in _pod(gpu)["tolerations"])
    assert _pod(gpu)["nodeSelector"]
    cpu = _one(rendered["cpu"], "Deployment")
    assert "nvidia.com/gpu" not in _container(cpu)["resources"].get("limits", {})
    assert "tolerations" not in _pod(cpu)


# --- Dockerfile ---------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerfile_user() -> str:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER: the server would run as root"
    return users[-1]


def test_dockerfile_pins_every_pip_install() -> None:
    runs = [args for keyword, args in _instructions() if keyword == "RUN" and "pip install" in args]
    assert runs, "the Dockerfile installs nothing with pip"
    installs_project = False
    for run in runs:
        for command in re.split(r"&&|;", run):
            if "pip install" not in command:
                continue
            words = shlex.split(command)
            assert "-c" in words and words[words.index("-c") + 1].endswith("constraints.txt"), (
                f"unpinned: {command.strip()}"
            )
            assert "--no-cache-dir" in words, f"pip cache left in a layer: {command.strip()}"
            # `.`, `.[demo]` or `.${EXTRAS:+[...]}`: the project from the build context.
            installs_project |= any(w == "." or w.startswith((".[", ".$")) for w in words)
    assert installs_project, "the project itself (`pip install ... .`) is never installed"


def test_dockerfile_runs_as_non_root() -> None:
    user = _dockerfile_user()
    assert user.split(":")[0] not in ("root", "0"), f"USER {user}"
    assert user.split(":")[0].isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"


def test_dockerfile_exposes_the_service_ports(rendered: dict[str, list[Doc]]) -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, args in _final_stage()
        if keyword == "EXPOSE"
        for port in args.split()
    }
    for name, docs in rendered.items():
        assert exposed == _service_target_ports(docs), f"{name}: EXPOSE {sorted(exposed)}"
    assert not exposed & MANAGEMENT_PORTS


def test_dockerfile_entrypoint_serves_in_the_foreground() -> None:
    entrypoints = [args for keyword, args in _final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the final stage"
    argv = json.loads(entrypoints[-1])  # exec form: ckptserve is PID 1 and receives SIGTERM itself
    assert argv[:3] == ["ckptserve", "serve", "--foreground"], argv
    assert argv[argv.index("--model-store") + 1] == "/models"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    stop = [args for keyword, args in _final_stage() if keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_dockerfile_health_check_and_archive() -> None:
    final = _final_stage()
    health = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    # Healthy means serving, as the readiness probe: /ping says 200 while a worker waits for training.
    assert health and json.loads(health[-1].split("CMD", 1)[1])[:3] == ["ckptserve", "status", "--ready"]
    java = [args for keyword, args in final if keyword == "RUN" and "openjdk-17-jre-headless" in args]
    assert java and "--no-install-recommends" in java[0] and "rm -rf /var/lib/apt/lists" in java[0]
    text = " ".join(args for _, args in _instructions())
    # The archive is built from the image config, without a checkpoint (weights come from the volume).
    package = re.search(r"ckptserve package (.*?)(&&|$)", text)
    assert package, "the demo archive is not built at image build time"
    assert str(IMAGE_MODEL_CONFIG.relative_to(ROOT)) in package.group(1)
    assert "--checkpoint" not in package.group(1)


# --- build context ------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below a match."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_nothing_heavy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "constraints.txt",
        "pyproject.toml",
        "README.md",
        str(IMAGE_MODEL_CONFIG.relative_to(ROOT)),
        "model_store/digits/model.py",
        "model_store/digits/index_to_name.json",
        "model_store/digits/train.py",
        "handlers/checkpoint_handler.py",
    ]
    needed += [
        str(p.relative_to(ROOT)) for p in (ROOT / "serving").rglob("*.py") if "__pycache__" not in p.parts
    ]
    kept_out = [
        ".venv/bin/python",
        ".git/HEAD",
        "serving/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        "docs/benchmarks/load.json",
        "digits.mar",
        "model_store/digits/model_epoch_1.pth",
        "tests/unit/test_deploy.py",
    ]
    assert [p for p in needed if _ignored(p, patterns)] == []
    assert [p for p in kept_out if not _ignored(p, patterns)] == []


def test_token_auth_is_on_in_the_image_and_off_in_kubernetes_only_explicitly(
    overlay: tuple[str, list[Doc]],
) -> None:
    """ckptserve turns token auth on beyond loopback; replicas behind one Service cannot share a key."""
    name, docs = overlay
    argv = json.loads([args for keyword, args in _final_stage() if keyword == "ENTRYPOINT"][-1])
    assert "--no-token-auth" not in argv  # `docker run` keeps the secure default
    container = _container(_one(docs, "Deployment"))
    assert "--no-token-auth" in container.get("args", []), f"{name}: each replica would want its own key"
    assert _one(docs, "NetworkPolicy"), f"{name}: the opt-out relies on the NetworkPolicy"
