"""`doka run` for real, in its own process session: a tier that cannot start is left out (the rest
serves, readiness names it), and SIGTERM / SIGINT stop every process the run started (mock
upstream, Serve, the local Ray cluster and its agents) within a bound, with one line, no traceback
(issue 31)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from app.run_cli import STOP_BOUND_S, _listening
from load.isolation import haproxy_env
from tests.conftest import REPO, free_port, gateway_test_config
from tests.router_deployment_support import GPT35, KEY, publish, train_artifact

TINY = {"model_name": "local-tiny", "provider": "vllm",
        "model_info": {"tier": "local", "timeout": 3, "parallel": True},
        "vllm": {"model_source": "", "engine_kwargs": {"max_model_len": 512, "dtype": "float32"},
                 "placement_group_config": {"bundles": [{"CPU": 1}]}}}


def _session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _start(tmp_path, with_missing_tiny: bool, registry=None) -> tuple[subprocess.Popen, list[str], int, int]:
    mock_port, port = free_port(), free_port()
    raw = gateway_test_config(mock_port, port)
    raw["server"]["data_dir"] = str(tmp_path / "data")
    if registry is not None:  # a learned router following the registry's latest
        raw["router"].update(strategy="learned", registry=str(registry), artifact="latest", signing_key=KEY,
                             poll_interval_s=0)
    if with_missing_tiny:  # the default config's demo model, its weights never built
        raw["model_list"].insert(0, {**TINY, "vllm": {**TINY["vllm"], "model_source": str(tmp_path / "no-tiny")}})
        raw["fallbacks"]["local-demo"] = ["local-tiny", "mock-mixtral", "mock-gpt-4"]
    path = tmp_path / "doka.yaml"
    path.write_text(yaml.safe_dump(raw))
    # its own HAProxy ports: the session's cluster (inherited in os.environ) holds the others
    env = {**os.environ, "MOCK_API_KEY": "mock-key", **haproxy_env(Path(f"/tmp/dkl-{free_port()}"))}
    env.pop("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", None)  # the test session's; `doka run` sets its own
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run", "--config", str(path), "--no-dashboard",
                             "--num-cpus", "2", "--mock-latency-ms", "1"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    deadline = time.time() + 300
    while not any("doka: ready" in line for line in lines):
        assert proc.poll() is None, "".join(lines)[-4000:]
        assert time.time() < deadline, "".join(lines)[-4000:]
        time.sleep(0.5)
    return proc, lines, port, mock_port


def _stop_and_check(proc: subprocess.Popen, lines: list[str], sig: int, mock_port: int) -> None:
    procs = _session_processes(proc.pid)
    names = " ".join(" ".join(p.cmdline()) for p in procs if p.is_running())
    assert "load.mock_upstream" in names and "raylet" in names and "gcs_server" in names  # what must go
    assert _listening("127.0.0.1", mock_port)
    started = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=STOP_BOUND_S + 15)
    _, alive = psutil.wait_procs(procs, timeout=max(1.0, STOP_BOUND_S + 15 - (time.monotonic() - started)))
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    assert not alive and not _session_processes(proc.pid), [p.pid for p in alive]
    assert not _listening("127.0.0.1", mock_port)  # the mock upstream's port is free
    tail = out[out.index("doka: ready"):]
    assert "Traceback" not in tail and "Aborted" not in tail, tail[-3000:]
    assert sum("doka: stopped" in line for line in tail.splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_missing_tier_is_left_out_and_sigterm_stops_everything(tmp_path, sig):
    proc, lines, port, mock_port = _start(tmp_path, with_missing_tiny=True)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/health/readiness", timeout=30)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "degraded" and "weights not found" in body["down"]["local-tiny"], body
        # its own Serve application failed (its builder says why): one line from `doka run`, not fatal
        said = [line for line in lines if line.startswith("doka: vLLM tier local-tiny is not serving:")]
        assert len(said) == 1 and "DEPLOY_FAILED" in said[0] and "weights not found" in said[0], said
        for model in ("auto", "default", "local-tiny"):  # local-tiny: answered along its chain
            r = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
                "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, (model, r.text)
            assert r.headers["x-doka-model"] != "local-tiny"
    finally:
        if proc.poll() is None:
            _stop_and_check(proc, lines, sig, mock_port)


def test_router_reload_then_sigint_stops_everything_and_a_taken_mock_port_is_refused(tmp_path):
    registry = tmp_path / "registry"
    v1 = publish(registry, train_artifact(tmp_path / "a1"))
    proc, lines, port, mock_port = _start(tmp_path, with_missing_tiny=False, registry=registry)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while (httpx.get(f"{base}/health/readiness", timeout=10).json().get("router") or {}).get(
                "artifact_version") != v1:
            assert time.time() < deadline, "v1 never loaded"
            time.sleep(0.5)
        # `doka router publish --reload`: the running local app loads the new latest in place
        address = next(line for line in lines if "doka: ready" in line).split("Ray cluster: ")[1].split(";")[0]
        a2 = train_artifact(tmp_path / "a2", code_label=GPT35)
        time.sleep(1.1)  # versions carry a seconds timestamp
        out = subprocess.run([sys.executable, "-m", "app.cli", "router", "publish", "--artifact", str(a2),
                              "--registry", str(registry), "--reload", "--config", str(tmp_path / "doka.yaml"),
                              "--address", address], cwd=REPO, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "DOKA_SIGNING_KEY": KEY})
        assert out.returncode == 0, out.stderr[-3000:]
        import json

        report = json.loads(out.stdout)
        assert report["reload"]["serving"] == "ready" and report["reload"]["via"] == "controller", report
        ready = httpx.get(f"{base}/health/readiness", timeout=10).json()
        assert ready["status"] == "ok" and ready["router"]["artifact_version"] == report["version"] != v1
    finally:
        if proc.poll() is None:
            _stop_and_check(proc, lines, signal.SIGINT, mock_port)
    squatter = subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(mock_port)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not _listening("127.0.0.1", mock_port) and time.time() < deadline:
            time.sleep(0.2)
        # a later run finds the port taken (a stale mock): refused with one line, not silently reused
        path = tmp_path / "doka.yaml"
        again = subprocess.run([sys.executable, "-m", "app.cli", "run", "--config", str(path), "--no-dashboard"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.returncode != 0 and "already in use" in again.stderr and "Traceback" not in again.stderr
    finally:
        squatter.terminate()
        squatter.wait(timeout=10)


def test_a_taken_gateway_port_is_refused_before_anything_starts(tmp_path):
    """Without the check, Serve's HAProxy died at start-up with a page of traceback (after the
    cluster and the mock upstream were up); now one line, and nothing of this run is left."""
    import socket

    port, mock_port = free_port(), free_port()
    raw = gateway_test_config(mock_port, port)
    path = tmp_path / "doka.yaml"
    path.write_text(yaml.safe_dump(raw))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = subprocess.run([sys.executable, "-m", "app.cli", "run", "--config", str(path), "--no-dashboard"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f"127.0.0.1:{port} is already in use" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "doka run --port" in out.stderr
    assert "mock upstream" not in out.stdout and not _listening("127.0.0.1", mock_port)  # nothing was started


def test_an_unreachable_provider_is_reported_not_fatal():
    """`doka run` names a provider nobody answers for at start (and serves anyway)."""
    from app.config import parse_config
    from app.run_cli import unreachable_providers

    dead = free_port()
    raw = gateway_test_config(dead, free_port())
    report = unreachable_providers(parse_config(raw))
    assert report.get("mock-gpt-4") == f"127.0.0.1:{dead}" and "mock-embed" in report
