"""`doka run`'s Ray head: only the processes a one-node gateway uses (docs/benchmarks.md, "Gateway memory").

Started for real in a subprocess (a test session already holds its own Ray cluster): no autoscaler
monitor, no log monitor, and a dashboard without Ray Data's and Ray Train's modules whose Serve
REST API (what live reloads use) and job API still answer.
"""

from __future__ import annotations

import json
import subprocess
import sys

from app.run_cli import GATEWAY_DASHBOARD_MODULES
from tests.conftest import REPO, free_port

PROBE = r"""
import json, sys, urllib.request
import psutil, ray
from app.run_cli import gateway_head
import contextlib
port, mode = int(sys.argv[1]), sys.argv[2]
head = contextlib.nullcontext() if mode == "plain" else gateway_head(log_monitor=False, full_dashboard=mode == "full")
with head:
    ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)
node = ray._private.worker._global_node
kinds = sorted(node.all_processes)
cmd = psutil.Process(node.all_processes["dashboard"][0].process.pid).cmdline()
def status(path):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({"kinds": kinds, "modules": [c for c in cmd if c.startswith("--modules-to-load")],
                  "serve": status("/api/serve/applications/"), "jobs": status("/api/jobs/"),
                  "after": ray._private.parameter.RayParams.__name__}))
ray.shutdown()
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(free_port()), mode], cwd=REPO, capture_output=True,
                         text=True, timeout=240, env={"RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_gateway_dashboard_list_is_every_module_but_data_and_train():
    import ray.dashboard.utils as dashboard_utils
    from ray.dashboard.subprocesses.module import SubprocessModule

    every = {c.__name__ for base in (dashboard_utils.DashboardHeadModule, SubprocessModule)
             for c in dashboard_utils.get_all_modules(base)}
    assert set(GATEWAY_DASHBOARD_MODULES) == every - {"DataHead", "TrainHead"}  # a Ray upgrade fails here first


def test_doka_runs_head_starts_without_monitors_and_with_the_gateway_dashboard():
    lean = _probe("lean")
    assert "monitor" not in lean["kinds"] and "log_monitor" not in lean["kinds"], lean
    assert {"gcs_server", "raylet", "dashboard"} <= set(lean["kinds"]), lean
    assert lean["modules"] == ["--modules-to-load=" + ",".join(GATEWAY_DASHBOARD_MODULES)]
    assert lean["serve"] == 200 and lean["jobs"] == 200  # live reloads and training jobs still work
    assert lean["after"] == "RayParams"  # the defaults applied to that one ray.init only
    full = _probe("full")  # `doka run --full-dashboard`: Ray's own module set
    assert full["modules"] == [] and "monitor" not in full["kinds"]
    plain = _probe("plain")  # a bare ray.init starts both monitors: the absence above is real
    assert {"monitor", "log_monitor"} <= set(plain["kinds"]) and plain["modules"] == [], plain


def test_a_loopback_run_skips_serves_load_balancer_drain_window_and_a_reachable_one_keeps_it():
    """Behind HAProxy, Serve keeps a draining ingress replica reachable for
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s by default) for external load balancers:
    every Ctrl-C of `make run` waited it out. A loopback gateway gets 2 s; one bound to all
    interfaces keeps Serve's default; a value the user exported wins (cmd_run uses setdefault)."""
    import inspect

    from ray.serve._private import constants

    from app.config import DEFAULT_CONFIG_PATH, load_config
    from app.run_cli import run_env

    knob = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
    assert f'os.environ.get("{knob}", "30")' in inspect.getsource(constants)  # Serve reads it, default 30 s
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.server.host == "127.0.0.1"
    assert run_env(cfg)[knob] == "2"
    assert run_env(cfg, perf=False)[knob] == "2"
    cfg.server.host = "0.0.0.0"
    assert knob not in run_env(cfg)
    assert run_env(cfg)["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
