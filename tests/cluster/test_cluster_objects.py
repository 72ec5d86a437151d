"""The cluster role's objects, rendered for every mode and checked offline (no API server runs here).

``molecule/cluster/converge.yml`` renders each mode into its own directory (``BASALT_CLUSTER_RENDERED``
names the root when Molecule's verify runs these tests; otherwise the session fixture runs that
playbook itself). The checks:

- schemas: every object against the official Kubernetes OpenAPI schemas (kubernetes-validate, strict)
  of the oldest and newest Kubernetes versions the README claims; VolumeSnapshotClasses against the
  snapshot CRDs' own schemas, kept as data in the role (jsonschema);
- contracts: every sidecar and kubelet use the socket the agent role configures, registration sits where
  the kubelet root says, one registration mechanism per node, the topology key is the agent's, every flag
  exists in the pinned sidecar version, the RBAC covers exactly each sidecar's published needs, probes
  outlast the sidecar's own timeout;
- a real agent, started as the agent role starts it, answers through the very paths the objects name, and
  accepts every StorageClass's parameters as the external-provisioner passes them;
- the role refuses a StorageClass parameter the agent would refuse, and ``basalt_state: absent`` removes
  what it wrote;
- ``molecule test -s cluster`` (marker ``molecule``) runs the scenario that converges, checks idempotence
  and runs these checks as its verify step.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import grpc
import jsonschema
import pytest
import yaml
from role_vars import resolved

import basalt_agent.metrics
from basalt_agent import DRIVER_NAME, TOPOLOGY_NODE_KEY
from basalt_agent.config import DEFAULT_METRICS_PORT
from basalt_agent.launcher import AgentProcess
from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as csi_grpc
from basalt_agent.proto import pluginregistration_pb2 as reg
from basalt_agent.proto import pluginregistration_pb2_grpc as reg_grpc
from basalt_core import filesystem
from basalt_core.lvm_pool import SNAPSHOT_MODE_KEY

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "cluster"
SCENARIO = REPO / "molecule" / "cluster"
ROLE_DATA = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SIDECARS: Dict[str, Dict[str, Any]] = ROLE_DATA["basalt_cluster_sidecars"]
VERSIONS: List[str] = ROLE_DATA["basalt_cluster_kubernetes_versions"]
CRDS = {path.stem: yaml.safe_load(path.read_text())
        for path in (ROLE / "files" / "snapshot-crds").glob("*.yaml")}
MONITORING = yaml.safe_load((Path(__file__).parent / "schemas" / "monitoring.coreos.com_v1.yaml").read_text())
CUSTOM_GROUPS = ("snapshot.storage.k8s.io/", "monitoring.coreos.com/")  # schemas from their CRDs, not Kubernetes'
# What each mode sets (converge.yml is the one home of the modes): render directory name -> variables.
MODES: Dict[str, Dict[str, Any]] = {
    Path(task["vars"]["basalt_cluster_render_dir"]).name: task["vars"]
    for task in yaml.safe_load((SCENARIO / "converge.yml").read_text())[0]["tasks"]
}
NODES = ["node-1", "node-2.example"]  # molecule/cluster/inventory.yml's kube_node, by kubelet name
# Keys the external-provisioner consumes itself (removed before CreateVolume) and those it adds
# with --extra-create-metadata.
PROVISIONER_KEYS = {"csi.storage.k8s.io/fstype"} | {
    f"csi.storage.k8s.io/{step}-secret-{part}" for step in
    ("provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand", "node-expand")
    for part in ("name", "namespace")}
EXTRA_METADATA = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default",
                  "csi.storage.k8s.io/pv/name": "pvc-0f3c"}


# -- rendering -----------------------------------------------------------------------------------------

def _collections() -> str:
    top = tempfile.mkdtemp(prefix="bc-col-")
    os.makedirs(os.path.join(top, "ansible_collections", "basalt"))
    os.symlink(REPO, os.path.join(top, "ansible_collections", "basalt", "csi"))
    return top


def run_playbook(playbook: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    if shutil.which("ansible-playbook") is None:
        pytest.skip("ansible-playbook is not installed (scripts/ansible-checks.sh installs it)")
    collections = _collections()
    try:
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, BASALT_CLUSTER_RENDERED=str(root),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="0")
        env.pop("ANSIBLE_CONFIG", None)  # Molecule's, when its verify step runs these tests
        return subprocess.run(["ansible-playbook", "-i", str(SCENARIO / "inventory.yml"), str(playbook), *extra],
                              env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        shutil.rmtree(collections)


@pytest.fixture(scope="session")
def rendered() -> Iterator[Path]:
    given = os.environ.get("BASALT_CLUSTER_RENDERED")
    if given:
        yield Path(given)
        return
    root = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))  # short: sockets live under it (108 bytes)
    try:
        done = run_playbook(SCENARIO / "converge.yml", root)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def objects(rendered: Path, mode: str) -> List[Dict[str, Any]]:
    text = (rendered / mode / "basalt-csi.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def settings(rendered: Path, mode: str) -> Dict[str, Any]:
    """The mode's variables over the role's and the shared defaults, plain strings resolved as Ansible would."""
    values: Dict[str, Any] = {}
    for path in (REPO / "roles" / "defaults" / "defaults" / "main.yml", ROLE / "defaults" / "main.yml"):
        values.update(yaml.safe_load(path.read_text()))
    values.update(MODES[mode])
    values["basalt_cluster_molecule_dir"] = str(rendered)
    return resolved(values)


def pods(objs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]


def containers(objs: List[Dict[str, Any]]) -> Iterator[Tuple[Dict[str, Any], Dict[str, Any], str]]:
    """(pod object, container, sidecar id) of every container."""
    for pod in pods(objs):
        for container in pod["spec"]["template"]["spec"]["containers"]:
            yield pod, container, container["name"].replace("-", "_")


def flags(container: Dict[str, Any]) -> Dict[str, str]:
    parsed = {}
    for arg in container["args"]:
        assert arg.startswith("--"), f"{container['name']}: {arg!r} is not a --flag"
        name, _sep, value = arg[2:].partition("=")
        parsed[name] = value
    return parsed


def of_kind(objs: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- schemas -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_matches_the_kubernetes_schemas(rendered: Path, mode: str, version: str) -> None:
    checked = 0
    for obj in objects(rendered, mode):
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue  # custom resources: test_*_match_the_crd_schemas
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_snapshot_objects_match_the_crd_schemas(rendered: Path, mode: str) -> None:
    for obj in objects(rendered, mode):
        if not obj["apiVersion"].startswith("snapshot.storage.k8s.io/"):
            continue
        crd = CRDS[f"snapshot.storage.k8s.io_{obj['kind'].lower()}es"]
        assert crd["spec"]["names"]["kind"] == obj["kind"]
        version = next(v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == obj["apiVersion"])
        assert version["served"]
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])


def test_the_validators_refuse_broken_objects(rendered: Path) -> None:
    objs = objects(rendered, "local-registrar")
    daemonset = copy.deepcopy(of_kind(objs, "DaemonSet")[0])
    daemonset["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)
    snapshot_class = copy.deepcopy(of_kind(objs, "VolumeSnapshotClass")[0])
    snapshot_class["deletionPolicy"] = "Keep"
    schema = CRDS["snapshot.storage.k8s.io_volumesnapshotclasses"]["spec"]["versions"][0]["schema"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(snapshot_class, schema["openAPIV3Schema"])


# -- contracts -----------------------------------------------------------------------------------------

def test_every_sidecar_and_kubelet_use_the_agents_socket(rendered: Path, mode: str) -> None:
    values = settings(rendered, mode)
    socket_path, plugin_dir = values["basalt_csi_socket"], values["basalt_plugin_dir"]
    assert socket_path == f"{values['basalt_kubelet_dir']}/plugins/{DRIVER_NAME}/csi.sock"
    for pod, container, sidecar in containers(objects(rendered, mode)):
        volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"].get("volumes", [])}
        if sidecar == "snapshot_controller":
            assert "csi-address" not in flags(container)  # talks to the API server only
            continue
        assert flags(container)["csi-address"] == socket_path
        mounted = {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"] for m in container["volumeMounts"]}
        assert mounted[plugin_dir] == plugin_dir  # the host's directory, at the same path in the container


def test_registration_is_where_the_kubelet_root_says_and_one_mechanism_per_node(rendered: Path, mode: str) -> None:
    values = settings(rendered, mode)
    registrars = [(pod, c) for pod, c, sidecar in containers(objects(rendered, mode))
                  if sidecar == "node_driver_registrar"]
    if values["basalt_registration_mode"] == "builtin":
        assert registrars == []  # the agent registers itself: the registrar would delete its socket
        return
    assert len(registrars) == 1
    pod, registrar = registrars[0]
    assert pod["kind"] == "DaemonSet"
    assert flags(registrar)["kubelet-registration-path"] == values["basalt_csi_socket"]
    assert "plugin-registration-path" not in flags(registrar)  # the default, /registration
    volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in registrar["volumeMounts"] if m["mountPath"] == "/registration")
    assert volumes[mount["name"]]["hostPath"]["path"] == values["basalt_registration_dir"] \
        == f"{values['basalt_kubelet_dir']}/plugins_registry"
    assert os.path.dirname(values["basalt_registration_socket"]) == values["basalt_registration_dir"]


def test_every_flag_exists_in_the_pinned_version(rendered: Path, mode: str) -> None:
    for _pod, container, sidecar in containers(objects(rendered, mode)):
        pinned = SIDECARS[sidecar]
        given = flags(container)
        unknown = set(given) - set(pinned["flags"])
        assert not unknown, f"{sidecar} {pinned['version']} has no flag(s) {sorted(unknown)}"
        deprecated = set(given) & set(pinned["deprecated_flags"])
        assert not deprecated, f"{sidecar}: deprecated flag(s) {sorted(deprecated)}"
        assert container["image"].endswith(f"/{pinned['image']}:{pinned['version']}")
        env = {e["name"] for e in container.get("env", [])}
        if "node-deployment" in given:
            assert pinned["per_node"] and "NODE_NAME" in env and "leader-election" not in given
        if "enable-capacity" in given:
            assert {"POD_NAME", "NAMESPACE"} <= env


def test_node_local_pools_use_distributed_provisioning(rendered: Path, mode: str) -> None:
    values = settings(rendered, mode)
    objs = objects(rendered, mode)
    local = values["basalt_cluster_mode"] == "local"
    placed = {sidecar: pod["kind"] for pod, _c, sidecar in containers(objs)}
    driver = of_kind(objs, "CSIDriver")[0]
    assert driver["metadata"]["name"] == DRIVER_NAME == values["basalt_driver_name"]
    assert driver["spec"]["attachRequired"] is not local  # ControllerPublish only exports over iSCSI
    if local:
        assert placed["provisioner"] == "DaemonSet" and "attacher" not in placed and "resizer" not in placed
        assert of_kind(objs, "Deployment") == [] or placed.get("snapshot_controller") == "Deployment"
    else:
        controller = next(p for p in of_kind(objs, "Deployment") if p["metadata"]["name"] == "basalt-controller")
        spec = controller["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"kubernetes.io/hostname": values["basalt_cluster_storage_node"]}
        assert {c["name"] for c in spec["containers"]} >= {"provisioner", "attacher", "resizer"}
        assert of_kind(objs, "PodDisruptionBudget")
    for pod in pods(objs):
        spec = pod["spec"]["template"]["spec"]
        assert spec["priorityClassName"] and spec["tolerations"]
        if pod["kind"] == "DaemonSet":
            assert spec["priorityClassName"] == "system-node-critical"
            terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == NODES


def test_liveness_probes_outlast_the_probe_timeout(rendered: Path, mode: str) -> None:
    for _pod, container, sidecar in containers(objects(rendered, mode)):
        given = flags(container)
        port = int(given["http-endpoint"].rsplit(":", 1)[1])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        probe: Dict[str, Any] = container.get("livenessProbe", {})
        if "leader-election" in given:
            assert probe["httpGet"] == {"path": "/healthz/leader-election", "port": port}
        if sidecar in ("livenessprobe", "node_driver_registrar"):
            assert probe["httpGet"] == {"path": "/healthz", "port": port}
        if sidecar == "livenessprobe":
            assert given["probe-timeout"].endswith("s")
            assert probe["timeoutSeconds"] > int(given["probe-timeout"][:-1])


def _triples(rules: List[Dict[str, Any]]) -> Set[Tuple[str, str, str]]:
    found = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb)
                    found.add((group, resource, verb))
    return found


def test_rbac_covers_each_sidecar_and_nothing_more(rendered: Path, mode: str) -> None:
    objs = objects(rendered, mode)
    local = settings(rendered, mode)["basalt_cluster_mode"] == "local"
    roles = {(o["kind"], o["metadata"]["name"]): o["rules"] for o in objs if o["kind"] in ("ClusterRole", "Role")}
    for pod in pods(objs):
        account = pod["spec"]["template"]["spec"]["serviceAccountName"]
        granted = {"ClusterRole": set(), "Role": set()}  # type: Dict[str, Set[Tuple[str, str, str]]]
        for binding in objs:
            if binding["kind"] in ("ClusterRoleBinding", "RoleBinding") and \
                    {"kind": "ServiceAccount", "name": account, "namespace": pod["metadata"]["namespace"]} \
                    in binding["subjects"]:
                ref = binding["roleRef"]
                granted[ref["kind"]] |= _triples(roles[(ref["kind"], ref["name"])])
        needed = {"ClusterRole": set(), "Role": set()}  # type: Dict[str, Set[Tuple[str, str, str]]]
        for container in pod["spec"]["template"]["spec"]["containers"]:
            pinned = SIDECARS[container["name"].replace("-", "_")]
            needed["ClusterRole"] |= _triples(pinned["cluster_rules"])
            if local:
                needed["ClusterRole"] |= _triples(pinned.get("distributed_rules", []))
            needed["Role"] |= _triples(pinned["namespace_rules"])
            if "leader-election" in flags(container):
                needed["Role"] |= _triples([ROLE_DATA["basalt_cluster_lease_rule"]])
        assert granted == needed, f"{account}: RBAC differs from what its sidecars need"
        # a pod whose sidecars never call the API server carries no token
        assert pod["spec"]["template"]["spec"].get("automountServiceAccountToken", True) is bool(
            granted["ClusterRole"] | granted["Role"])


def test_storage_classes_carry_the_agents_topology_and_binding(rendered: Path, mode: str) -> None:
    values = settings(rendered, mode)
    local = values["basalt_cluster_mode"] == "local"
    classes = of_kind(objects(rendered, mode), "StorageClass")
    assert [c["metadata"]["name"] for c in classes] == [c["name"] for c in values["basalt_storage_classes"]]
    for storage_class, wanted in zip(classes, values["basalt_storage_classes"]):
        assert storage_class["provisioner"] == DRIVER_NAME
        [term] = storage_class["allowedTopologies"]
        [expression] = term["matchLabelExpressions"]
        assert expression["key"] == TOPOLOGY_NODE_KEY == values["basalt_topology_key"]
        assert expression["values"] == wanted.get("nodes", NODES)
        if local:
            assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
            assert storage_class["allowVolumeExpansion"] is False
        assert storage_class["mountOptions"] == wanted.get("mount_options", [])
        default = storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
        assert default == str(wanted.get("default", False)).lower()
    for snapshot_class in of_kind(objects(rendered, mode), "VolumeSnapshotClass"):
        assert snapshot_class["driver"] == DRIVER_NAME
        assert set(snapshot_class["parameters"]) <= {SNAPSHOT_MODE_KEY}  # the lvm pools' only key
        assert set(snapshot_class["parameters"].values()) <= {"copy", "cow"}


def test_monitoring_objects_match_their_crd_schemas_and_the_agents_metrics(rendered: Path, mode: str) -> None:
    values = settings(rendered, mode)
    objs = objects(rendered, mode)
    monitors, rules = of_kind(objs, "ServiceMonitor"), of_kind(objs, "PrometheusRule")
    if not values["basalt_metrics_port"]:
        assert monitors == rules == of_kind(objs, "EndpointSlice") == []
        return
    assert values["basalt_metrics_port"] == DEFAULT_METRICS_PORT
    [service], [endpoints] = of_kind(objs, "Service"), of_kind(objs, "EndpointSlice")
    [monitor], [rule] = monitors, rules
    jsonschema.validate(monitor, MONITORING["ServiceMonitor"])
    jsonschema.validate(rule, MONITORING["PrometheusRule"])
    # the monitor finds the Service, whose endpoints are the agents on every node, on the port named metrics
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert [e["nodeName"] for e in endpoints["endpoints"]] == NODES
    assert {p["name"] for p in service["spec"]["ports"]} == {p["name"] for p in endpoints["ports"]} \
        == {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    # every series an alert reads is one the agent exports (counters carry _total); `up` is Prometheus's,
    # its job the Service's name (the monitor sets no jobLabel)
    source = Path(basalt_agent.metrics.__file__).read_text()
    read = {name for alert in rule["spec"]["groups"][0]["rules"]
            for name in re.findall(r"\bbasalt_[a-z_]+", alert["expr"])}
    # issue #14's set: pool nearly full, thin metadata nearly full, orphans > 0, RPC errors
    assert {"basalt_pool_allocated_bytes", "basalt_pool_thin_metadata_percent", "basalt_orphans",
            "basalt_rpc_requests_total"} <= read, read
    for alert in rule["spec"]["groups"][0]["rules"]:
        for name in re.findall(r"\bbasalt_[a-z_]+", alert["expr"]):
            assert f'"{name.removesuffix("_total")}"' in source, f"{alert['alert']}: the agent exports no {name}"
        for job in re.findall(r'job="([^"]+)"', alert["expr"]):
            assert "jobLabel" not in monitor["spec"] and job == service["metadata"]["name"]


# -- a real agent behind the rendered paths ------------------------------------------------------------

@pytest.fixture(scope="module")
def served(rendered: Path) -> Iterator[Tuple[Dict[str, Any], grpc.Channel]]:
    """An agent on the 'kubelet-here' mode's paths, with the arguments the agent role gives it."""
    if os.geteuid() != 0:
        pytest.skip("the agent's file pool and sockets need root")
    values = settings(rendered, "kubelet-here")
    state = Path(tempfile.mkdtemp(prefix="bc-agent-", dir="/tmp"))
    agent = AgentProcess(values["basalt_csi_socket"],
                         ["--node-id", NODES[0], "--state-dir", str(state), "--pool", f"file:{state}/pool",
                          "--registration-socket", values["basalt_registration_socket"],
                          "--kubelet-registration-path", values["basalt_csi_socket"]],
                         log_path=str(state / "agent.log"))
    agent.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(values["basalt_registration_socket"]):
            assert agent.proc and agent.proc.poll() is None and time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.2)
        with grpc.insecure_channel(f"unix://{values['basalt_csi_socket']}") as channel:
            yield values, channel
    finally:
        agent.stop(60)
        shutil.rmtree(state, ignore_errors=True)


def test_the_agent_answers_on_the_paths_the_objects_name(rendered: Path,
                                                         served: Tuple[Dict[str, Any], grpc.Channel]) -> None:
    values, _channel = served
    objs = objects(rendered, "kubelet-here")
    driver = of_kind(objs, "CSIDriver")[0]["metadata"]["name"]
    for _pod, container, _sidecar in containers(objs):
        with grpc.insecure_channel(f"unix://{flags(container)['csi-address']}") as channel:
            info = csi_grpc.IdentityStub(channel).GetPluginInfo(csi.GetPluginInfoRequest(), timeout=10)
            assert info.name == driver
            node = csi_grpc.NodeStub(channel).NodeGetInfo(csi.NodeGetInfoRequest(), timeout=10)
    for storage_class in of_kind(objs, "StorageClass"):
        [expression] = storage_class["allowedTopologies"][0]["matchLabelExpressions"]
        assert dict(node.accessible_topology.segments) == {expression["key"]: NODES[0]}
        assert node.node_id in expression["values"]
    # kubelet finds the registration socket in its registry directory and is sent to the sidecars' socket
    assert os.path.dirname(values["basalt_registration_socket"]) == f"{values['basalt_kubelet_dir']}/plugins_registry"
    with grpc.insecure_channel(f"unix://{values['basalt_registration_socket']}") as channel:
        info = reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=1)
    assert (info.name, info.endpoint) == (driver, flags(next(containers(objs))[1])["csi-address"])


def test_the_agent_accepts_every_storage_class_as_the_provisioner_passes_it(
        rendered: Path, served: Tuple[Dict[str, Any], grpc.Channel]) -> None:
    _values, channel = served
    controller = csi_grpc.ControllerStub(channel)
    for mode in sorted(MODES):
        for storage_class in of_kind(objects(rendered, mode), "StorageClass"):
            parameters = dict(storage_class["parameters"])
            reserved = {k for k in parameters if k.startswith("csi.storage.k8s.io/")}
            assert reserved <= PROVISIONER_KEYS, f"the provisioner refuses {sorted(reserved - PROVISIONER_KEYS)}"
            fs_type = parameters.get("csi.storage.k8s.io/fstype", "")
            passed = {k: v for k, v in parameters.items() if k not in reserved} | EXTRA_METADATA
            capability = csi.VolumeCapability(
                mount=csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=storage_class["mountOptions"]),
                access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
            name = f"{mode}-{storage_class['metadata']['name']}"
            volume = controller.CreateVolume(csi.CreateVolumeRequest(
                name=name, parameters=passed, volume_capabilities=[capability],
                capacity_range=csi.CapacityRange(required_bytes=64 << 20)), timeout=60).volume
            controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    # and a parameter outside the agent's keys is refused, named
    with pytest.raises(grpc.RpcError) as refused:
        controller.CreateVolume(csi.CreateVolumeRequest(
            name="typo", parameters={"fstype": "xfs"}, volume_capabilities=[capability]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'fstype'" in (refused.value.details() or "")


# -- the role's own refusals and removal -------------------------------------------------------------

def _play(tmp: Path, tasks: List[Dict[str, Any]]) -> Path:
    playbook = tmp / "play.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Cluster role", "hosts": "kube_control_plane[0]",
                                         "gather_facts": False, "tasks": tasks}]))
    return playbook


def _role(**variables: Any) -> Dict[str, Any]:
    return {"name": "Cluster role", "ansible.builtin.include_role": {"name": "basalt.csi.cluster"},
            "vars": variables}


def test_the_role_refuses_a_class_parameter_the_agent_would_refuse(tmp_path: Path) -> None:
    done = run_playbook(_play(tmp_path, [_role(
        basalt_cluster_render_dir=str(tmp_path / "out"),
        basalt_storage_classes=[{"name": "typo", "parameters": {"pool": "lvm"}}])]), tmp_path)
    assert done.returncode != 0
    assert "StorageClass parameters must be among" in " ".join(done.stdout.split())
    assert not (tmp_path / "out").exists()


def test_the_role_refuses_a_filesystem_the_agent_does_not_make(tmp_path: Path) -> None:
    """btrfs is not offered (copies would share an fsid): the role's list is the core's, and a class asking for
    it is refused before anything is written."""
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert role_vars["basalt_cluster_fs_types"] == list(filesystem.SUPPORTED)
    done = run_playbook(_play(tmp_path, [_role(
        basalt_cluster_render_dir=str(tmp_path / "out"),
        basalt_storage_classes=[{"name": "cow", "fs_type": "btrfs"}])]), tmp_path)
    assert done.returncode != 0
    assert "fs_type among [ext4, xfs]" in " ".join(done.stdout.split())
    assert not (tmp_path / "out").exists()


def test_absent_removes_what_the_role_wrote_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: [basalt-csi.yaml]\n")
    done = run_playbook(_play(tmp_path, [_role(basalt_cluster_render_dir=str(out)),
                                         _role(basalt_cluster_render_dir=str(out), basalt_state="absent")]),
                        tmp_path, "-v")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "basalt-csi.yaml" in done.stdout  # it was written first
    assert sorted(p.name for p in out.iterdir()) == ["kustomization.yaml"]


@pytest.mark.molecule
def test_molecule_scenario(tmp_path: Path) -> None:
    """``molecule test -s cluster``: converge, idempotence, verify (these checks), cleanup."""
    if shutil.which("molecule") is None:
        if os.environ.get("CI"):
            pytest.fail("molecule is not installed (scripts/ansible-checks.sh installs it)")
        pytest.skip("molecule is not installed (scripts/ansible-checks.sh installs it)")
    collections = _collections()
    root = tempfile.mkdtemp(prefix="bcm-", dir="/tmp")  # short: the agent's sockets live under it
    try:
        env = dict(os.environ, BASALT_COLLECTIONS_PATH=collections, MOLECULE_GLOB="molecule/*/molecule.yml",
                   MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"), BASALT_CLUSTER_RENDERED=root,
                   ANSIBLE_NOCOLOR="1")
        done = subprocess.run(["molecule", "test", "-s", "cluster"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        left = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.yaml"))
    finally:
        shutil.rmtree(collections)
        shutil.rmtree(root, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert left == []  # cleanup (basalt_state absent) removed what converge wrote
