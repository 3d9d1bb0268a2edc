"""The kubernetes-client code against a real HTTP server on 127.0.0.1 that implements the
API-server endpoints it uses (get/create/replace/merge-patch/watch of ray.io custom objects).
Every request is recorded and asserted: path, verb, query, content type and body.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from app.cli import main as doka
from app.config import load_config
from app.serve_config import router_owner, serve_config
from kuberay.client import KubeRay, KubeRayError, api_client, with_router_user_config
from kuberay.options import load_options
from kuberay.render import CLUSTER_PLACEHOLDER, rayjob, rayservice

REPO = Path(__file__).resolve().parent.parent
BASE = "/apis/ray.io/v1/namespaces/ns1"
TOKEN = "test-token-123"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeApiServer:
    """Just enough of the Kubernetes API server for ray.io/v1 rayservices and rayjobs."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.job_progress: list[dict[str, Any]] = []  # statuses a watched RayJob goes through
        self._rv = 100
        self.before_patch: Any = None  # called once with the stored object before the next PATCH
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # keep test output clean
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, verb: str) -> None:
                url = urlsplit(self.path)
                body = self._body() if verb in ("POST", "PUT", "PATCH") else None
                server.requests.append({
                    "verb": verb, "path": url.path, "query": parse_qs(url.query),
                    "content_type": self.headers.get("Content-Type"),
                    "auth": self.headers.get("Authorization"), "body": body,
                })
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, _status(401, "Unauthorized"))
                code, obj = server.dispatch(verb, url.path, parse_qs(url.query), body, self)
                if code:
                    self._send(code, obj)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return obj

    def dispatch(self, verb: str, path: str, query: dict[str, list[str]], body: Any,
                 handler: BaseHTTPRequestHandler) -> tuple[int, Any]:
        if not path.startswith(BASE + "/"):
            return 404, _status(404, "NotFound")
        parts = path[len(BASE) + 1:].split("/")
        plural, name = parts[0], (parts[1] if len(parts) > 1 else None)
        if plural not in ("rayservices", "rayjobs"):
            return 404, _status(404, "NotFound")
        with self._lock:
            key = (plural, name or "")
            if verb == "GET" and name is None and query.get("watch") == ["true"]:
                self._stream_watch(plural, query, handler)
                return 0, None
            if verb == "GET":
                obj = self.objects.get(key)
                return (200, obj) if obj else (404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            if verb == "POST":
                key = (plural, body["metadata"]["name"])
                if key in self.objects:
                    return 409, _status(409, "AlreadyExists")
                obj = self._bump(copy.deepcopy(body))
                obj["metadata"]["namespace"] = "ns1"
                self.objects[key] = obj
                return 201, obj
            if key not in self.objects:
                return 404, _status(404, "NotFound")
            if verb == "PUT":
                if body["metadata"].get("resourceVersion") != self.objects[key]["metadata"]["resourceVersion"]:
                    return 409, _status(409, "Conflict")
                obj = self._bump(copy.deepcopy(body))
                obj["status"] = self.objects[key].get("status")
                self.objects[key] = obj
                return 200, obj
            if verb == "PATCH":
                if self.before_patch is not None:  # a concurrent writer, between the client's GET and PATCH
                    self.before_patch(self.objects[key])
                    self.before_patch = None
                sent_rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
                if sent_rv is not None and sent_rv != self.objects[key]["metadata"]["resourceVersion"]:
                    return 409, _status(409, "Conflict", "the object has been modified")
                obj = self._bump(merge_patch(self.objects[key], body))
                self.objects[key] = obj
                return 200, obj
        return 405, _status(405, "MethodNotAllowed")

    def _stream_watch(self, plural: str, query: dict[str, list[str]], handler: BaseHTTPRequestHandler) -> None:
        """A watch response: one JSON event per line; the connection closes at the end."""
        selector = query.get("fieldSelector", [""])[0]
        name = selector.removeprefix("metadata.name=")
        obj = self.objects[(plural, name)]
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        events = [("ADDED", copy.deepcopy(obj))]
        for status in self.job_progress:
            obj["status"] = status
            self._bump(obj)
            events.append(("MODIFIED", copy.deepcopy(obj)))
        for kind, o in events:
            handler.wfile.write(json.dumps({"type": kind, "object": o}).encode() + b"\n")
            handler.wfile.flush()
        handler.close_connection = True


def _status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": message or reason, "code": code}


@pytest.fixture()
def server():
    s = FakeApiServer()
    yield s
    s.close()


@pytest.fixture()
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "tester", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "tester", "namespace": "ns1"}}],
    }))
    return path


@pytest.fixture()
def rendered():
    cfg = load_config(REPO / "config" / "default.yaml")
    opts = load_options(namespace="ns1")
    return cfg, opts


def test_apply_creates_then_replaces_with_resource_version(server, kubeconfig, rendered):
    cfg, opts = rendered
    kr = KubeRay(api_client(str(kubeconfig)), "ns1")
    manifest = rayservice(cfg, opts)

    action, obj = kr.apply_rayservice(manifest)
    assert action == "created"
    assert [(r["verb"], r["path"]) for r in server.requests] == [
        ("GET", f"{BASE}/rayservices/doka"), ("POST", f"{BASE}/rayservices")]
    assert server.requests[1]["body"] == manifest
    assert server.requests[1]["auth"] == f"Bearer {TOKEN}"

    server.requests.clear()
    changed = copy.deepcopy(manifest)
    changed["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 9
    action, obj = kr.apply_rayservice(changed)
    assert action == "updated"
    assert [(r["verb"], r["path"]) for r in server.requests] == [
        ("GET", f"{BASE}/rayservices/doka"), ("PUT", f"{BASE}/rayservices/doka")]
    put = server.requests[1]["body"]
    assert put["metadata"]["resourceVersion"] == "101"  # the version the GET returned
    assert put["spec"] == changed["spec"]
    assert server.objects[("rayservices", "doka")]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "maxReplicas"] == 9


def test_reload_router_merge_patches_only_the_router_user_config(server, kubeconfig, rendered):
    cfg, opts = rendered
    kr = KubeRay(api_client(str(kubeconfig)), "ns1")
    kr.apply_rayservice(rayservice(cfg, opts))
    before = copy.deepcopy(server.objects[("rayservices", "doka")])
    server.requests.clear()

    user_config = kr.reload_router("doka", artifact="v7", registry="s3://doka/registry")

    assert user_config == {"strategy": "learned", "artifact": "v7", "registry": "s3://doka/registry"}
    assert [(r["verb"], r["path"]) for r in server.requests] == [
        ("GET", f"{BASE}/rayservices/doka"), ("PATCH", f"{BASE}/rayservices/doka")]
    patch = server.requests[1]
    assert patch["content_type"] == "application/merge-patch+json"
    assert list(patch["body"]) == ["metadata", "spec"] and list(patch["body"]["spec"]) == ["serveConfigV2"]
    assert patch["body"]["metadata"] == {"resourceVersion": before["metadata"]["resourceVersion"]}
    sent = yaml.safe_load(patch["body"]["spec"]["serveConfigV2"])
    expected = serve_config(cfg)
    router = next(d for d in expected["applications"][0]["deployments"] if d["name"] == router_owner(cfg))
    router["user_config"] = {"strategy": "learned", "artifact": "v7", "registry": "s3://doka/registry"}
    assert sent == expected  # everything else in the Serve config is untouched
    after = server.objects[("rayservices", "doka")]
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]  # no new cluster


def test_reload_router_keeps_a_concurrent_edit(server, kubeconfig, rendered):
    """Someone edits the RayService between our read and our patch: 409, re-read, both edits kept."""
    cfg, opts = rendered
    kr = KubeRay(api_client(str(kubeconfig)), "ns1")
    kr.apply_rayservice(rayservice(cfg, opts))

    def concurrent_edit(obj: dict) -> None:
        serve_cfg = yaml.safe_load(obj["spec"]["serveConfigV2"])
        ingress = next(d for d in serve_cfg["applications"][0]["deployments"] if d["name"] == "Ingress")
        ingress["num_replicas"] = 7
        obj["spec"]["serveConfigV2"] = yaml.safe_dump(serve_cfg)
        server._bump(obj)

    server.before_patch = concurrent_edit
    server.requests.clear()
    kr.reload_router("doka", artifact="v8")

    verbs = [(r["verb"], r["path"].rsplit("/", 1)[-1]) for r in server.requests]
    assert verbs == [("GET", "doka"), ("PATCH", "doka"), ("GET", "doka"), ("PATCH", "doka")]
    final = yaml.safe_load(server.objects[("rayservices", "doka")]["spec"]["serveConfigV2"])
    deps = {d["name"]: d for d in final["applications"][0]["deployments"]}
    assert deps["Ingress"]["num_replicas"] == 7  # the concurrent edit survived
    assert deps[router_owner(cfg)]["user_config"]["artifact"] == "v8"  # and so did ours (same entry by default)


def test_submit_training_targets_the_active_cluster_and_follows_the_watch(server, kubeconfig, rendered):
    cfg, opts = rendered
    kr = KubeRay(api_client(str(kubeconfig)), "ns1")
    kr.apply_rayservice(rayservice(cfg, opts))
    server.objects[("rayservices", "doka")]["status"] = {
        "serviceStatus": "Running", "activeServiceStatus": {"rayClusterName": "doka-raycluster-abcde"}}
    server.job_progress = [
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "message": "done"},
    ]
    server.requests.clear()

    template = rayjob(cfg, opts, name="doka-train-1")
    assert template["spec"]["clusterSelector"] == {"ray.io/cluster": CLUSTER_PLACEHOLDER}
    created = kr.submit_rayjob(template, rayservice="doka")
    seen: list[str | None] = []
    result = kr.follow_rayjob("doka-train-1", timeout_s=30, on_event=lambda r: seen.append(r.job_status))

    assert created["spec"]["clusterSelector"] == {"ray.io/cluster": "doka-raycluster-abcde"}
    verbs = [(r["verb"], r["path"]) for r in server.requests]
    assert verbs == [("GET", f"{BASE}/rayservices/doka"), ("POST", f"{BASE}/rayjobs"), ("GET", f"{BASE}/rayjobs")]
    post = server.requests[1]["body"]
    assert post["spec"]["entrypoint"] == template["spec"]["entrypoint"]
    watch = server.requests[2]["query"]
    assert watch["watch"] == ["true"] and watch["fieldSelector"] == ["metadata.name=doka-train-1"]
    assert seen == [None, None, "RUNNING", "SUCCEEDED"]
    assert result.succeeded and result.message == "done"


def test_submit_training_without_an_active_cluster_is_a_clear_error(server, kubeconfig, rendered):
    cfg, opts = rendered
    kr = KubeRay(api_client(str(kubeconfig)), "ns1")
    with pytest.raises(KubeRayError, match="not found"):
        kr.submit_rayjob(rayjob(cfg, opts), rayservice="doka")
    kr.apply_rayservice(rayservice(cfg, opts))
    with pytest.raises(KubeRayError, match="no active Ray cluster"):
        kr.submit_rayjob(rayjob(cfg, opts), rayservice="doka")
    assert not [r for r in server.requests if r["path"].endswith("/rayjobs")]  # nothing was submitted


def test_cli_commands_against_the_fake_api_server(server, kubeconfig, capsys, tmp_path):
    kc = str(kubeconfig)
    # the default config targets this machine and keeps keys in SQLite: refused for a cluster...
    assert doka(["k8s", "apply", "--kubeconfig", kc, "--namespace", "ns1"]) == 1
    assert "k8s render refuses this config" in capsys.readouterr().err
    values = tmp_path / "values.yaml"  # ...unless told (PostgreSQL for the ledger, local targets allowed)
    values.write_text("storage: {postgres: true}\n")
    assert doka(["k8s", "apply", "--kubeconfig", kc, "--namespace", "ns1", "--allow-local", "--values", str(values)]) == 0
    assert "RayService ns1/doka created" in capsys.readouterr().out

    assert doka(["k8s", "reload-router", "--kubeconfig", kc, "--namespace", "ns1", "--artifact", "v3"]) == 0
    assert '"artifact": "v3"' in capsys.readouterr().out
    patch = server.requests[-1]
    assert (patch["verb"], patch["path"]) == ("PATCH", f"{BASE}/rayservices/doka")
    sent = yaml.safe_load(patch["body"]["spec"]["serveConfigV2"])
    # config/default.yaml decides in the ingress (router.placement), so the Ingress holds the router settings
    router = next(d for d in sent["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert router["user_config"] == {"strategy": "learned", "artifact": "v3", "registry": ".doka/registry"}

    server.objects[("rayservices", "doka")]["status"] = {
        "serviceStatus": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "activeServiceStatus": {"rayClusterName": "doka-raycluster-x1",
                                "applicationStatuses": {"doka": {"status": "RUNNING"}}}}
    server.job_progress = [{"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "boom"}]
    rc = doka(["k8s", "submit-training", "--kubeconfig", kc, "--namespace", "ns1", "--job-name", "t1",
               "--data", "s3://b/train.jsonl", "--registry", "s3://b/registry", "--wait", "--timeout", "30"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED boom" in out  # a failed job fails the command
    job = server.objects[("rayjobs", "t1")]
    assert job["spec"]["entrypoint"] == ("python -m kuberay.train_job --family knn --data s3://b/train.jsonl "
                                         "--registry s3://b/registry")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "doka-raycluster-x1"}

    assert doka(["k8s", "status", "--kubeconfig", kc, "--namespace", "ns1", "--job", "t1"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["ready"] == "True" and status["applications"] == {"doka": "RUNNING"}
    assert status["router_user_config"]["artifact"] == "v3"
    assert status["job"]["jobStatus"] == "FAILED"


def test_cli_reports_api_errors_without_a_traceback(server, kubeconfig, capsys):
    rc = doka(["k8s", "reload-router", "--kubeconfig", str(kubeconfig), "--namespace", "ns1", "--artifact", "v1"])
    assert rc == 1 and "RayService ns1/doka not found" in capsys.readouterr().err
    rc = doka(["k8s", "status", "--kubeconfig", str(kubeconfig), "--namespace", "ns1", "--name", "doka",
               "--job", "missing"])
    assert rc == 1 and "not found" in capsys.readouterr().err
    rc = doka(["k8s", "reload-router", "--kubeconfig", str(kubeconfig), "--namespace", "ns1"])
    assert rc == 1 and "needs --artifact" in capsys.readouterr().err


def test_with_router_user_config_adds_the_router_owner_when_missing():
    cfg = {"applications": [{"name": "a", "import_path": "x:y"}]}
    new, uc = with_router_user_config(cfg, artifact="v2", registry=None)
    # no inline config: the default placement (the router runs in the ingress)
    assert new["applications"][0]["deployments"] == [{"name": "Ingress", "user_config": {"artifact": "v2"}}]
    assert cfg == {"applications": [{"name": "a", "import_path": "x:y"}]}  # input untouched
    separate = {"applications": [{"name": "a", "import_path": "x:y",
                                  "args": {"config": {"router": {"placement": "deployment"}}}}]}
    new, uc = with_router_user_config(separate, artifact="v2", registry=None)
    assert new["applications"][0]["deployments"] == [{"name": "Router", "user_config": {"artifact": "v2"}}]
    with pytest.raises(KubeRayError):
        with_router_user_config(cfg, artifact="v2", registry=None, app_name="other")
