"""deploy/: the Kubernetes manifests, the Helm chart, the Dockerfile and the systemd unit.

The manifests are validated (strictly: unknown fields are errors) against the Kubernetes
JSON schemas that the ``kubernetes-validate`` package bundles, so no cluster or network is
needed. ``helm`` is not available here, so the chart is checked for structure instead: its
YAML files parse, every template parses once its ``{{ ... }}`` actions are replaced, and every
value and helper a template names exists. Run ``helm lint deploy/helm/raftkv`` and
``helm template`` where helm is installed.

What runs for real: the StatefulSet's start script (with a stand-in ``raftkv`` that prints
its arguments, which ``load_config`` must then accept), the Dockerfile's HEALTHCHECK command
and the probe paths against a live member, and ``systemd-analyze verify`` on the unit.
"""

from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

from raftkv.server.config import ServerConfig, load_config
from tests.procs import RaftkvCluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "raftkv"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SYSTEMD_UNIT = DEPLOY / "systemd" / "raftkv.service"
SYSTEMD_ENV_EXAMPLE = DEPLOY / "systemd" / "raftkv.env.example"

# The oldest Kubernetes the manifests support (persistentVolumeClaimRetentionPolicy is on
# by default from 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")
IMAGE_UID = 10001
NAMESPACE = "db"
INITIAL_CLUSTER_SIZE = 3
SCRIPT_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
LEADER_TIMEOUT_S = 20.0
SYSTEMD_ANALYZE_TIMEOUT_S = 30.0
TEMPLATE_ACTION = re.compile(r"\{\{.*?\}\}")
VALUES_REFERENCE = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


# --- Helpers ---------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in documents), path
    return documents


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every resource in deploy/kubernetes/."""
    found = [
        (path.name, doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in load_documents(path)
    ]
    assert found, f"no manifests in {MANIFESTS}"
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in manifests() if doc["kind"] == kind]
    matches = [doc for doc in matches if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def statefulset() -> dict[str, Any]:
    return resource("StatefulSet", "raftkv")


def raftkv_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def fixed_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def run_start_script(pod_name: str, env_overrides: dict[str, str], tmp_path: Path) -> list[str]:
    """The StatefulSet's container command, run with a stand-in ``raftkv`` on PATH that
    prints its arguments one per line: the arguments ``raftkv`` would get, after ``serve``."""
    stand_in_dir = tmp_path / "bin"
    stand_in_dir.mkdir(exist_ok=True)
    stand_in = stand_in_dir / "raftkv"
    stand_in.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    container = raftkv_container(statefulset())
    env = {
        **fixed_env(container),
        "POD_NAME": pod_name,
        "POD_NAMESPACE": NAMESPACE,
        "PATH": f"{stand_in_dir}{os.pathsep}/usr/bin:/bin",
        **env_overrides,
    }
    completed = subprocess.run(
        container["command"], env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
    )
    assert completed.returncode == 0, completed.stderr
    arguments = completed.stdout.splitlines()
    assert arguments[0] == "serve", arguments
    return arguments[1:]


def manifest_config(pod_name: str, tmp_path: Path, **env_overrides: str) -> ServerConfig:
    """What raftkv serve makes of the pod's arguments and ETCD_* variables."""
    arguments = run_start_script(pod_name, env_overrides, tmp_path)
    environ = {
        key: value
        for key, value in fixed_env(raftkv_container(statefulset())).items()
        if key.startswith(("ETCD_", "RAFTKV_"))
    }
    return load_config(arguments, environ)


def peer_url(ordinal: int, scheme: str = "http") -> str:
    return f"{scheme}://raftkv-{ordinal}.raftkv-peer.{NAMESPACE}.svc.cluster.local:2380"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the Dockerfile"
    instructions = []
    for text in logical:
        keyword, _, arguments = text.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for assignment in shlex.split(arguments):
                name, separator, value = assignment.partition("=")
                assert separator, f"ENV {arguments!r}: use NAME=value"
                env[name] = value
    return env


def healthcheck_command() -> list[str]:
    (arguments,) = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    _, separator, exec_form = arguments.partition("CMD ")
    assert separator, f"HEALTHCHECK {arguments!r} has no CMD"
    command = json.loads(exec_form)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def free_port() -> int:
    """A loopback port nothing listens on (the kernel picked it a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def read_unit(path: Path) -> configparser.ConfigParser:
    # systemd allows a key more than once; strict=False keeps the last, which is enough here.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, value = line.partition("=")
        assert separator, f"{path}: {line!r} is not NAME=value"
        env[name.strip()] = value.strip()
    return env


def template_as_yaml(text: str) -> str:
    """A Helm template with each line that is only actions dropped (control flow, includes
    with nindent) and each remaining ``{{ ... }}`` replaced by a plain scalar."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not TEMPLATE_ACTION.sub("", line).strip():
            continue
        lines.append(TEMPLATE_ACTION.sub("TEMPLATED", line))
    return "\n".join(lines) + "\n"


def chart_templates() -> list[Path]:
    templates = sorted((CHART / "templates").glob("*.yaml"))
    assert templates, "the chart has no templates"
    return templates


def chart_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


# --- Kubernetes schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    for file_name, document in manifests():
        try:
            kubernetes_schemas.validate(document, version, strict=True)
        except kubernetes_schemas.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{file_name}: {document['kind']}: {path}: {error.message}")


def test_the_validator_rejects_a_misspelled_field() -> None:
    # The schemas really are checked here (strictly), so the test above can fail.
    broken = copy.deepcopy(statefulset())
    probe = raftkv_container(broken)["startupProbe"]
    probe["failureTreshold"] = probe.pop("failureThreshold")
    with pytest.raises(kubernetes_schemas.ValidationError, match="failureTreshold"):
        kubernetes_schemas.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_manifests_are_the_expected_resources_without_a_namespace() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests())
    assert kinds == [
        ("PodDisruptionBudget", "raftkv"),
        ("Service", "raftkv"),
        ("Service", "raftkv-peer"),
        ("StatefulSet", "raftkv"),
    ]
    assert all("namespace" not in doc["metadata"] for _, doc in manifests())


def test_the_statefulset_is_governed_by_a_headless_service_that_publishes_unready_pods() -> None:
    spec = statefulset()["spec"]
    peer = resource("Service", spec["serviceName"])["spec"]
    assert peer["clusterIP"] == "None"
    assert peer["publishNotReadyAddresses"] is True
    assert spec["replicas"] == INITIAL_CLUSTER_SIZE
    assert spec["podManagementPolicy"] == "Parallel"
    assert [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]] == ["data"]
    mounts = {m["name"]: m["mountPath"] for m in raftkv_container(statefulset())["volumeMounts"]}
    assert mounts["data"] == "/var/lib/raftkv"


def test_selectors_match_the_pods_and_named_ports_exist() -> None:
    pod_labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    container = raftkv_container(statefulset())
    port_names = {port["name"] for port in container["ports"]}
    for name in ("raftkv", "raftkv-peer"):
        service = resource("Service", name)["spec"]
        assert service["selector"].items() <= pod_labels.items(), name
        assert {port["targetPort"] for port in service["ports"]} <= port_names, name
    budget = resource("PodDisruptionBudget", "raftkv")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names, probe


def test_the_pods_run_as_the_images_user_on_a_read_only_root() -> None:
    pod = statefulset()["spec"]["template"]["spec"]
    container = raftkv_container(statefulset())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_tls_secrets_are_mounted_where_the_script_looks() -> None:
    container = raftkv_container(statefulset())
    volumes = {v["name"]: v for v in statefulset()["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    script = container["command"][-1]
    for name, secret in (("client-tls", "raftkv-client-tls"), ("peer-tls", "raftkv-peer-tls")):
        assert volumes[name]["secret"]["secretName"] == secret
        assert mounts[name]["readOnly"] is True
        for file_name in ("tls.crt", "tls.key", "ca.crt"):
            assert f"{mounts[name]['mountPath']}/{file_name}" in script


# --- The StatefulSet's start script -----------------------------------------------------


@pytest.mark.parametrize("ordinal", range(INITIAL_CLUSTER_SIZE))
def test_an_initial_member_bootstraps_with_every_initial_member(
    ordinal: int, tmp_path: Path
) -> None:
    config = manifest_config(f"raftkv-{ordinal}", tmp_path)
    assert config.name == f"raftkv-{ordinal}"
    assert config.initial_cluster == {
        f"raftkv-{i}": (peer_url(i),) for i in range(INITIAL_CLUSTER_SIZE)
    }
    assert config.initial_advertise_peer_urls == (peer_url(ordinal),)
    assert config.initial_cluster_state == "new"
    assert config.listen_client_http_urls == ("http://0.0.0.0:2381",)
    assert config.data_dir == "/var/lib/raftkv/data"
    assert config.warnings == ()


def test_a_member_beyond_the_initial_size_joins_and_lists_itself(tmp_path: Path) -> None:
    config = manifest_config("raftkv-4", tmp_path)
    assert config.initial_cluster_state == "existing"
    assert list(config.initial_cluster) == [f"raftkv-{i}" for i in range(5)]
    assert config.initial_cluster["raftkv-4"] == (peer_url(4),)


def test_a_sealed_cluster_never_bootstraps_again(tmp_path: Path) -> None:
    config = manifest_config("raftkv-1", tmp_path, INITIAL_CLUSTER_STATE="existing")
    assert config.initial_cluster_state == "existing"


def test_the_manifests_tuning_reaches_the_member(tmp_path: Path) -> None:
    env = fixed_env(raftkv_container(statefulset()))
    config = manifest_config("raftkv-0", tmp_path)
    assert config.heartbeat_interval_ms == int(env["ETCD_HEARTBEAT_INTERVAL"])
    assert config.election_timeout_ms == int(env["ETCD_ELECTION_TIMEOUT"])
    assert config.snapshot_count == int(env["ETCD_SNAPSHOT_COUNT"])
    assert config.quota_backend_bytes == int(env["ETCD_QUOTA_BACKEND_BYTES"])
    assert config.auto_compaction_retention_seconds == 3600


def test_tls_switches_every_url_to_https_and_passes_etcds_tls_flags(tmp_path: Path) -> None:
    arguments = run_start_script("raftkv-2", {"TLS_ENABLED": "true"}, tmp_path)
    flags = dict(argument.removeprefix("--").split("=", 1) for argument in arguments)
    url_flags = [flag for flag in flags if flag.endswith("-urls")]
    assert url_flags and all(flags[flag].startswith("https://") for flag in url_flags)
    assert peer_url(0, "https") in flags["initial-cluster"]
    assert flags["cert-file"] == "/etc/raftkv/tls/client/tls.crt"
    assert flags["peer-trusted-ca-file"] == "/etc/raftkv/tls/peer/ca.crt"
    assert flags["client-cert-auth"] == flags["peer-client-cert-auth"] == "true"


# --- A live member: the probes and the Dockerfile's HEALTHCHECK ---------------------------


@pytest.fixture(scope="module")
def live_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The JSON gateway URL of a running one-member cluster with a leader."""
    with RaftkvCluster.start(tmp_path_factory.mktemp("member"), size=1) as cluster:
        cluster.wait_for_leader(timeout_s=LEADER_TIMEOUT_S)
        yield cluster.member(0).gateway_url


def test_the_probe_paths_answer_200_on_a_healthy_member(live_member: str) -> None:
    container = raftkv_container(statefulset())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert http_status(live_member + path) == 200, probe


def test_the_healthcheck_passes_on_a_healthy_member_and_fails_without_one(
    live_member: str,
) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    runnable = [sys.executable, *command[1:]]
    healthy = {**os.environ, "HEALTHCHECK_URL": f"{live_member}/health"}
    result = subprocess.run(runnable, env=healthy, capture_output=True, timeout=HTTP_TIMEOUT_S * 2)
    assert result.returncode == 0, result.stderr
    nobody = {**os.environ, "HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/health"}
    result = subprocess.run(runnable, env=nobody, capture_output=True, timeout=HTTP_TIMEOUT_S * 2)
    assert result.returncode != 0


def test_the_healthcheck_default_url_is_the_images_gateway() -> None:
    env = dockerfile_env()
    gateway_port = env["ETCD_LISTEN_CLIENT_HTTP_URLS"].rsplit(":", 1)[1]
    assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{gateway_port}/health"
    assert env["HEALTHCHECK_URL"] in " ".join(healthcheck_command())


# --- Dockerfile ----------------------------------------------------------------------------


def test_the_dockerfile_is_multi_stage_and_runs_as_a_fixed_non_root_user() -> None:
    instructions = dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2, stages
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER line"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    assert user == str(IMAGE_UID)
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)
    volumes = [args for keyword, args in instructions if keyword == "VOLUME"]
    assert volumes and "/var/lib/raftkv" in volumes[-1]


def test_the_images_default_environment_is_a_valid_member_config() -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(("ETCD_", "RAFTKV_"))}
    config = load_config([], env)
    assert config.data_dir.startswith("/var/lib/raftkv/")
    assert config.listen_client_http_urls
    assert config.warnings == ()


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    patterns = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in patterns, ".dockerignore should exclude everything by default"
    kept = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    copied = [
        source.rstrip("/")
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert copied and set(copied) <= kept, (copied, kept)


# --- systemd -----------------------------------------------------------------------------


def test_the_systemd_unit_is_hardened() -> None:
    unit = read_unit(SYSTEMD_UNIT)
    service = unit["Service"]
    assert service["ExecStart"].endswith("raftkv serve")
    assert service.get("User") == "raftkv" or service.get("DynamicUser") == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "raftkv"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["TimeoutStopSec"]
    assert service["NoNewPrivileges"] == "true"
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian package systemd) is needed"
    executable = shutil.which("raftkv", path=os.path.dirname(sys.executable)) or sys.executable
    unit_text = SYSTEMD_UNIT.read_text(encoding="utf-8")
    # The installed path does not exist here; systemd checks that ExecStart is executable.
    unit = tmp_path / "raftkv.service"
    unit.write_text(unit_text.replace("/opt/raftkv/bin/raftkv", executable), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=SYSTEMD_ANALYZE_TIMEOUT_S,
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and complaints == [], complaints


def test_the_systemd_environment_example_is_a_valid_member_config() -> None:
    config = load_config([], read_env_file(SYSTEMD_ENV_EXAMPLE))
    assert config.name == "m1"
    assert set(config.initial_cluster) == {"m1", "m2", "m3"}
    assert config.data_dir.startswith("/var/lib/raftkv/")  # under StateDirectory
    assert config.warnings == ()


# --- Helm chart ---------------------------------------------------------------------------


def test_the_chart_metadata_and_values_are_valid_yaml() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "raftkv"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"]
    values = chart_values()
    assert values["replicas"] == values["initialClusterSize"] == INITIAL_CLUSTER_SIZE
    assert values["initialClusterState"] == "new"
    assert values["podDisruptionBudget"]["maxUnavailable"] == 1


@pytest.mark.parametrize("template", chart_templates(), ids=lambda path: path.name)
def test_every_chart_template_parses_as_yaml_once_its_actions_are_replaced(
    template: Path,
) -> None:
    documents = list(yaml.safe_load_all(template_as_yaml(template.read_text(encoding="utf-8"))))
    documents = [doc for doc in documents if doc]
    assert documents and all({"apiVersion", "kind", "metadata"} <= doc.keys() for doc in documents)


@pytest.mark.parametrize("template", chart_templates(), ids=lambda path: path.name)
def test_every_chart_template_balances_its_blocks(template: Path) -> None:
    actions = TEMPLATE_ACTION.findall(template.read_text(encoding="utf-8"))
    words = [action.strip("{}- \t").split(" ", 1)[0] for action in actions]
    openers = sum(word in ("if", "with", "range", "define", "block") for word in words)
    assert openers == words.count("end")


def test_every_value_a_template_uses_is_in_values_yaml() -> None:
    values = chart_values()
    for template in [*chart_templates(), CHART / "templates" / "_helpers.tpl"]:
        for reference in VALUES_REFERENCE.findall(template.read_text(encoding="utf-8")):
            node: Any = values
            for key in reference.strip(".").split("."):
                assert isinstance(node, dict) and key in node, (
                    f"{template.name}: .Values{reference}"
                )
                node = node[key]


def test_every_included_helper_is_defined() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    defined = set(re.findall(r'define "([^"]+)"', helpers))
    for template in [*chart_templates(), CHART / "templates" / "_helpers.tpl"]:
        for name in re.findall(r'include "([^"]+)"', template.read_text(encoding="utf-8")):
            assert name in defined, f"{template.name}: include {name!r}"


def test_the_chart_runs_the_same_start_script_and_probes_as_the_manifests() -> None:
    text = (CHART / "templates" / "statefulset.yaml").read_text(encoding="utf-8")
    (chart_workload,) = [doc for doc in yaml.safe_load_all(template_as_yaml(text)) if doc]
    chart_container = raftkv_container(chart_workload)
    container = raftkv_container(statefulset())
    assert chart_container["command"] == container["command"]
    assert chart_container["ports"] == container["ports"]
    chart_env = {item["name"] for item in chart_container["env"]}
    assert chart_env == {item["name"] for item in container["env"]}
    chart_pod = chart_workload["spec"]["template"]["spec"]
    pod = statefulset()["spec"]["template"]["spec"]
    assert chart_pod["securityContext"] == pod["securityContext"]
    # The probes come from the raftkv.probe helper: the same paths, and its plaintext
    # branch is the manifests' httpGet.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert re.search(
            rf'{probe}:\n\s*{{{{- include "raftkv.probe" \(dict "root" \. "path" "{path}"\)', text
        ), probe
    plaintext_probe = yaml.safe_load(template_as_yaml(helper_body("raftkv.probe", "else")))
    assert plaintext_probe["httpGet"] == {
        **container["startupProbe"]["httpGet"],
        "path": "TEMPLATED",
    }


def helper_body(name: str, branch: str) -> str:
    """The text of one branch ("if" or "else") of helper ``name`` in _helpers.tpl."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    match = re.search(
        r'\{\{- define "' + re.escape(name) + r'" -\}\}\n\{\{- if [^}]*\}\}\n(.*?)'
        r"\{\{- else -\}\}\n(.*?)\{\{- end -\}\}\n\{\{- end -\}\}",
        helpers,
        re.DOTALL,
    )
    assert match, f"helper {name} is not an if/else"
    return match.group(1 if branch == "if" else 2)
