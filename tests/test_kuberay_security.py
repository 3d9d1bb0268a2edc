"""`doka k8s render` safe by default (docs/security.md): a keyed config needs a durable ledger,
the NetworkPolicy validates against Kubernetes' own schema and opens only the gateway port to
the rest of the cluster, the dashboard stays internal, and targets that exist only on this
machine (loopback api_base, relative paths) are refused unless `--allow-local`.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from app.cli import main as doka
from app.config import ConfigError, load_config, parse_config
from kuberay.options import load_options
from kuberay.render import DASHBOARD_PORT, SERVE_PORT, render_all
from kuberay.validate import manifest_errors, network_policy_errors

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "data" / "kuberay-crds"
DEFAULT = REPO / "config" / "default.yaml"
GPU = REPO / "config" / "gpu.example.yaml"
VALUES = REPO / "kuberay" / "examples" / "values.yaml"


def _cluster_config(**accounts) -> dict:
    """The GPU example (cluster targets only), with the accounts section replaced."""
    raw = yaml.safe_load(GPU.read_text())
    raw["accounts"] = {"require_keys": True, "master_key": "os.environ/DOKA_MASTER_KEY", **accounts}
    return raw


# ---------------------------------------------------------------- keys need a durable ledger
def test_keyed_config_without_postgres_or_volume_is_refused(capsys, tmp_path):
    cfg = parse_config(_cluster_config())  # require_keys, no database_url: SQLite in the pod
    with pytest.raises(ConfigError) as e:
        render_all(cfg, load_options())
    assert "accounts.require_keys" in str(e.value) and "storage.postgres" in str(e.value)
    assert "sqlite_volume_claim" in str(e.value)
    sqlite = parse_config(_cluster_config(database_url="sqlite:////tmp/doka.db"))
    with pytest.raises(ConfigError, match="accounts.require_keys"):
        render_all(sqlite, load_options())
    # the CLI: one clear error, no traceback
    cfg_file = tmp_path / "keyed.yaml"
    cfg_file.write_text(yaml.safe_dump(_cluster_config()))
    assert doka(["k8s", "render", "--config", str(cfg_file)]) == 1
    err = capsys.readouterr().err
    assert "accounts.require_keys" in err and "Traceback" not in err

    # each fix renders
    assert render_all(cfg, load_options(storage={"postgres": True}))
    assert render_all(parse_config(_cluster_config(database_url="postgresql://u@db/doka")), load_options())
    assert render_all(parse_config(_cluster_config(require_keys=False)), load_options())
    on_volume = render_all(cfg, load_options(storage={"sqlite_volume_claim": "doka-ledger"}))
    rs = on_volume["rayservice.yaml"]
    inline = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    assert inline["accounts"]["database_url"] == "sqlite:////var/lib/doka-accounts/doka.db"
    rc = rs["spec"]["rayClusterConfig"]
    for pod in [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]:
        assert pod["spec"]["volumes"] == [{"name": "doka-accounts", "persistentVolumeClaim": {"claimName": "doka-ledger"}}]
        assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/var/lib/doka-accounts"
    assert manifest_errors(rs, CRDS) == []


# ---------------------------------------------------------------- the NetworkPolicy
def test_network_policy_validates_and_admits_only_the_gateway_port_from_outside():
    manifests = render_all(load_config(GPU), load_options(VALUES))
    np_ = manifests["networkpolicy.yaml"]
    assert manifest_errors(np_, CRDS) == [] and network_policy_errors(np_) == []

    # the schema check can see a bad policy (kubernetes-validate's strict schema, the client's model)
    broken = copy.deepcopy(np_)
    broken["spec"]["ingress"][1]["ports"][0]["port"] = [SERVE_PORT]
    assert any("port" in e for e in network_policy_errors(broken))
    typo = copy.deepcopy(np_)
    typo["spec"]["ingres"] = typo["spec"].pop("ingress")
    assert network_policy_errors(typo)

    spec = np_["spec"]
    pods = spec["podSelector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    # every Ray pod and the RayJob submitter carry the selected labels, so the policy covers them all
    rs, job = manifests["rayservice.yaml"], manifests["rayjob-train.yaml"]
    rc = rs["spec"]["rayClusterConfig"]
    templates = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]
    templates.append(job["spec"]["submitterPodTemplate"])
    for t in templates:
        assert pods.items() <= t["metadata"]["labels"].items()
    own, rest = [], []
    for rule in spec["ingress"]:
        peers = rule.get("from")
        (own if peers == [{"podSelector": {"matchLabels": pods}}] else rest).append(rule)
    assert own == [{"from": [{"podSelector": {"matchLabels": pods}}]}]  # the cluster's own pods: all ports
    open_to_all = [r for r in rest if "from" not in r]
    assert open_to_all == [{"ports": [{"protocol": "TCP", "port": SERVE_PORT}]}]  # anyone: the gateway only
    operator = [r for r in rest if "from" in r]
    assert operator == [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
        "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]}]  # the KubeRay operator: the dashboard only
    reachable = {p["port"] for r in rest for p in r["ports"]}
    assert not reachable & {6379, 10001, 8080, 52365}  # GCS, Ray client, metrics, agent: own pods only

    # the head Service is ClusterIP: the dashboard is never a LoadBalancer/NodePort
    assert rc["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert not any(m.get("kind") == "Service" for m in manifests.values())


# ---------------------------------------------------------------- local-only targets
def test_loopback_and_local_paths_are_refused_unless_allowed(tmp_path, capsys):
    cfg = load_config(DEFAULT)
    with pytest.raises(ConfigError) as e:
        render_all(cfg, load_options(storage={"postgres": True}))
    msg = str(e.value)
    assert "'mock-gpt-4': litellm_params.api_base 'http://127.0.0.1:9100/v1' is this machine's loopback" in msg
    assert "vllm.model_source '.doka/models/tiny-llama'" in msg
    assert "router.registry '.doka/registry'" in msg and "server.data_dir '.doka'" in msg
    assert "--allow-local" in msg
    for base in ("http://localhost:9100/v1", "http://[::1]:9100", "http://0.0.0.0:9100", "http://127.1.2.3/v1"):
        raw = yaml.safe_load(GPU.read_text())
        raw["model_list"][1]["litellm_params"]["api_base"] = base
        with pytest.raises(ConfigError, match="loopback"):
            render_all(parse_config(raw), load_options(VALUES))
    # the override renders the same config
    assert "rayservice.yaml" in render_all(cfg, load_options(storage={"postgres": True}, allow_local=True))
    # the CLI: refused, then `--allow-local` writes the files
    values = tmp_path / "values.yaml"
    values.write_text("storage: {postgres: true}\n")
    out = tmp_path / "k8s"
    assert doka(["k8s", "render", "--values", str(values), "--out", str(out)]) == 1
    assert "loopback" in capsys.readouterr().err and not out.exists()
    assert doka(["k8s", "render", "--values", str(values), "--out", str(out), "--allow-local"]) == 0
    assert (out / "secret.yaml").is_file() and (out / "networkpolicy.yaml").is_file()


def test_render_output_is_ignored_by_git(tmp_path):
    """The folder the docs render into, and secret.yaml wherever it is written, never reach git."""
    def ignored(repo: Path, path: str) -> bool:
        return subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", path]).returncode == 0

    assert ignored(REPO, "k8s/secret.yaml") and ignored(REPO, "k8s/rayservice.yaml")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert doka(["k8s", "render", "--config", str(GPU), "--values", str(VALUES), "--out", str(repo / "deploy")]) == 0
    assert ignored(repo, "deploy/secret.yaml")
    assert not ignored(repo, "deploy/rayservice.yaml")  # the manifests themselves may be committed
