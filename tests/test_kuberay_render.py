"""`doka k8s render`: every manifest validates against the KubeRay CRDs (and core schemas),
the committed examples are what the command generates, secrets stay out of manifests, and
moat mode refuses configs that would call out.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from app.cli import main as doka
from app.config import ConfigError, load_config, parse_config
from app.serve_config import serve_config
from kuberay.options import load_options
from kuberay.checks import needed_gpus
from kuberay.render import MOAT_ENV, render_all, render_files
from kuberay.validate import load_crd_schemas, manifest_errors

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "data" / "kuberay-crds"  # CI: a fresh clone with shared/ beside it
DEFAULT = REPO / "config" / "default.yaml"
GPU = REPO / "config" / "gpu.example.yaml"
EXAMPLES = REPO / "kuberay" / "examples"
VALUES = EXAMPLES / "values.yaml"


def _containers(rs: dict) -> list[dict]:
    rc = rs["spec"]["rayClusterConfig"]
    pods = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]
    return [c for p in pods for c in p["spec"]["containers"]]


def _moat_config() -> dict:
    raw = yaml.safe_load(GPU.read_text())
    for m in raw["model_list"]:
        if m.get("provider") == "vllm":
            m["vllm"]["model_source"] = "s3://doka-models/Qwen/Qwen2.5-7B-Instruct"
        else:
            m["litellm_params"]["api_base"] = "https://llm-proxy.internal/v1"
    return raw


@pytest.fixture(scope="module")
def crds():
    assert CRDS.is_dir(), f"KubeRay CRDs expected at {CRDS}"
    return load_crd_schemas(str(CRDS))


# config/default.yaml targets this machine (127.0.0.1, .doka/) and keeps keys in SQLite: rendering
# it for a cluster needs both told (tests/test_kuberay_security.py checks the refusals)
LOCAL_OK = {"allow_local": True, "storage": {"postgres": True}}


@pytest.mark.parametrize("config, values, extra", [(DEFAULT, None, LOCAL_OK), (GPU, VALUES, {}), (GPU, None, {})])
def test_every_manifest_validates_against_the_crds(crds, config, values, extra):
    manifests = render_all(load_config(config), load_options(values, **extra))
    assert set(manifests) == {"rayservice.yaml", "rayjob-train.yaml", "secret.yaml", "networkpolicy.yaml"}
    for name, obj in manifests.items():
        assert manifest_errors(obj, CRDS) == [], name
    # the embedded Serve config is one Ray itself accepts for `serve deploy`
    ServeDeploySchema.model_validate(yaml.safe_load(manifests["rayservice.yaml"]["spec"]["serveConfigV2"]))


def test_committed_examples_are_what_render_generates(tmp_path, crds):
    expected = render_files(load_config(GPU), load_options(VALUES))
    for name, text in expected.items():
        assert (EXAMPLES / name).read_text() == text, f"{name} is stale: rerun the command in {VALUES}"
    # the command itself writes the same files
    rc = doka(["k8s", "render", "--config", str(GPU), "--values", str(VALUES), "--out", str(tmp_path),
               "--crds", str(CRDS)])
    assert rc == 0
    for name, text in expected.items():
        assert (tmp_path / name).read_text() == text
        assert manifest_errors(yaml.safe_load((EXAMPLES / name).read_text()), CRDS) == []


def test_validation_rejects_typos_and_wrong_types(crds):
    manifests = render_all(load_config(DEFAULT), load_options(**LOCAL_OK))
    rs = copy.deepcopy(manifests["rayservice.yaml"])
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    rs["metadata"]["name"] = "Doka_GW"
    errors = manifest_errors(rs, CRDS)
    assert any("imagePullPolicyy" in e for e in errors)
    assert any("maxReplicas" in e for e in errors)
    assert any("metadata.name" in e for e in errors)
    secret = copy.deepcopy(manifests["secret.yaml"])
    secret["stringData"]["OPENAI_API_KEY"] = 123
    assert any("stringData" in e for e in manifest_errors(secret, CRDS))


def test_serve_config_v2_is_the_app_config(crds):
    cfg = load_config(GPU)
    rs = render_all(cfg, load_options(VALUES))["rayservice.yaml"]
    sc = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert sc == serve_config(cfg)
    app = sc["applications"][0]
    assert app["import_path"] == "app.graph:app_builder" and app["name"] == cfg.server.app_name
    assert parse_config(app["args"]["config"]) == cfg  # the inline config is the same config
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["Router"]["ray_actor_options"] == {"num_cpus": 1.0}  # static featurizer: CPU replicas
    assert deps["Router"]["user_config"] == {"strategy": "learned", "artifact": "latest",
                                             "registry": "s3://doka/registry"}
    assert deps["Ingress"]["autoscaling_config"]["max_replicas"] == 8
    # the vLLM tier is an application of its own, unrouted, built from the same config's entry
    (tier,) = sc["applications"][1:]
    assert (tier["name"], tier["route_prefix"], tier["import_path"]) == (
        "doka-tier-qwen2.5-7b", None, "app.graph:tier_app_builder")
    assert tier["args"]["entry"]["vllm"] == cfg.model("qwen2.5-7b").vllm.model_dump(mode="json", exclude_unset=True)


def test_gpu_worker_group_only_when_the_config_needs_gpus(crds):
    gpu_cfg = load_config(GPU)
    assert needed_gpus(gpu_cfg) == 4  # 4 vLLM replicas x 1 GPU (routers run on CPU workers)
    raw = gpu_cfg.model_dump(mode="json", exclude_unset=True)
    raw["deployments"]["router"]["ray_actor_options"] = {"num_gpus": 0.25}  # GPU router replicas, up to 8
    assert needed_gpus(parse_config(raw)) == 6
    raw["router"]["placement"] = "ingress"  # no Router deployment: its section asks for nothing
    assert needed_gpus(parse_config(raw)) == 4
    groups = render_all(gpu_cfg, load_options(VALUES))["rayservice.yaml"]["spec"]["rayClusterConfig"][
        "workerGroupSpecs"]
    cpu, gpu = groups
    assert (cpu["groupName"], cpu["minReplicas"], cpu["maxReplicas"]) == ("cpu", 1, 6)
    assert (gpu["groupName"], gpu["minReplicas"], gpu["maxReplicas"]) == ("gpu-l4", 1, 4)
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"

    default_groups = render_all(load_config(DEFAULT), load_options(**LOCAL_OK))["rayservice.yaml"]["spec"][
        "rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in default_groups] == ["cpu"]  # local-tiny runs on CPU
    forced = render_all(load_config(DEFAULT), load_options(gpu="on", **LOCAL_OK))["rayservice.yaml"]
    assert [g["groupName"] for g in forced["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["cpu", "gpu"]


def test_autoscaling_probes_and_ports(crds):
    rs = render_all(load_config(GPU), load_options(VALUES))["rayservice.yaml"]
    rc = rs["spec"]["rayClusterConfig"]
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001, 8000}
    for c in _containers(rs):
        assert "local_raylet_healthz" in c["livenessProbe"]["exec"]["command"][-1]
        assert c["resources"]["limits"] == c["resources"]["requests"]
    worker = rc["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "localhost:8000/-/healthz" in worker["readinessProbe"]["exec"]["command"][-1]


def test_secrets_come_from_the_secret_never_the_manifest(monkeypatch, crds):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-very-secret")
    files = render_files(load_config(GPU), load_options(VALUES))
    assert all("sk-live-very-secret" not in text for text in files.values())
    manifests = render_all(load_config(GPU), load_options(VALUES))
    wanted = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DOKA_MASTER_KEY", "DOKA_SIGNING_KEY", "DOKA_DATABASE_URL",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(manifests["secret.yaml"]["stringData"]) == wanted
    for c in _containers(manifests["rayservice.yaml"]):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        assert set(refs) == wanted
        assert all(r == {"name": "doka-secrets", "key": n} for n, r in refs.items())
        plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        assert plain["FSSPEC_S3_ENDPOINT_URL"] == "http://minio.minio.svc.cluster.local:9000"


def test_postgres_setting_points_the_ledger_at_the_secret(crds):
    cfg = load_config(DEFAULT)
    rs = render_all(cfg, load_options(storage={"postgres": True}, allow_local=True))["rayservice.yaml"]
    inline = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    assert inline["accounts"]["database_url"] == "os.environ/DOKA_DATABASE_URL"


def test_moat_mode_refuses_configs_that_call_out_and_locks_down_pods(crds):
    with pytest.raises(ConfigError) as e:
        render_all(load_config(GPU), load_options(VALUES, moat=True))
    msg = str(e.value)
    assert "would download from a hub" in msg and "'gpt-4o': litellm_params.api_base" in msg

    raw = _moat_config()
    raw["router"]["signing_key"] = None
    with pytest.raises(ConfigError, match="signing_key"):
        render_all(parse_config(raw), load_options(VALUES, moat=True))

    manifests = render_all(parse_config(_moat_config()), load_options(VALUES, moat=True))
    for name, obj in manifests.items():
        assert manifest_errors(obj, CRDS) == [], name
    for c in _containers(manifests["rayservice.yaml"]):
        plain = {e["name"]: e.get("value") for e in c["env"]}
        assert {k: plain.get(k) for k in MOAT_ENV} == MOAT_ENV
        assert "DOKA_SIGNING_KEY" in plain


def test_bad_values_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "values.yaml"
    bad.write_text("name: Not_A_DNS_Name\ngpu: sometimes\n")
    assert doka(["k8s", "render", "--values", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "name:" in err and "gpu:" in err and "Traceback" not in err


def test_gpu_example_config_loads():
    cfg = load_config(GPU)
    qwen = cfg.model("qwen2.5-7b")
    assert qwen.provider == "vllm" and qwen.vllm.model_source == "Qwen/Qwen2.5-7B-Instruct"
    assert qwen.vllm.accelerator_type == "L4"
    assert "num_gpus" not in cfg.deployments.router.serve_options()["ray_actor_options"]
    raw = yaml.safe_load(GPU.read_text())  # a GPU share for transformer-featurizer routers reaches Serve
    raw["deployments"]["router"]["ray_actor_options"] = {"num_gpus": 0.25}
    assert parse_config(raw).deployments.router.serve_options()["ray_actor_options"]["num_gpus"] == 0.25
    assert all(m.litellm_params["api_key"].startswith("os.environ/") for m in cfg.model_list if m.provider == "litellm")
    assert cfg.chain_for("qwen2.5-7b") == ["qwen2.5-7b", "gpt-4o-mini", "gpt-4o"]
