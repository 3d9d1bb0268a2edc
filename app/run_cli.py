"""`doka run`, `doka config check`, `doka serve-config`: run and inspect one config.

`doka run` is what `make run` calls: it starts the in-repo mock upstream when the config
points a model at a local address nobody listens on, then serves the graph in the foreground
on a local Ray cluster (dashboard on http://127.0.0.1:8265) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from app.config import DEFAULT_CONFIG_PATH, ConfigError, DokaConfig, load_config

# Serve's high-throughput mode (Ray >= 2.55): gRPC between replicas, direct ingress, and HAProxy
# in front. Measured effect on this gateway: docs/benchmarks.md. Set to 0 to opt out.
PERF_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
LOCAL_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch LiteLLM's cost map at start-up
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",  # a local, loopback-only cluster
}
# A gateway starts its few actors once: no spare workers started ahead (each idle one holds ~45 MB).
# Names checked in Ray's ray_config_def.h (`RAY_<name>` env vars override them).
RAY_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
# Runs in every Ray worker before an actor's code loads (app/lean_imports.py: no pandas for Serve).
WORKER_SETUP_HOOK = "app.lean_imports.setup_worker"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_DRAIN_WINDOW_S = "2"  # as tests/conftest.py sets it


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def local_mock_ports(cfg: DokaConfig) -> list[int]:
    """Local ports the config sends models to (candidates for the mock upstream)."""
    ports: set[int] = set()
    for m in cfg.model_list:
        base = m.litellm_params.get("api_base")
        if m.provider == "litellm" and isinstance(base, str):
            u = urlparse(base)
            if u.hostname in LOCAL_HOSTS and u.port:
                ports.add(u.port)
    return sorted(ports)


def start_mocks(cfg: DokaConfig, latency_ms: float) -> list[subprocess.Popen]:
    """Start the mock upstream on each local port the config names; a port already taken is an
    error (a stale mock of an earlier run must not answer silently): `--no-mock` uses it."""
    procs = []
    for port in local_mock_ports(cfg):
        if _listening("127.0.0.1", port):
            raise SystemExit(f"doka: 127.0.0.1:{port} is already in use (a mock upstream left by an earlier "
                             f"run?); stop it (`fuser -k {port}/tcp`) or pass --no-mock to use it as the upstream")
        print(f"doka: starting the mock upstream on 127.0.0.1:{port} ({latency_ms:g} ms latency)")
        procs.append(subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(port),
                                       "--latency-ms", str(latency_ms)]))
    deadline = time.time() + 20
    for port in local_mock_ports(cfg):
        while not _listening("127.0.0.1", port) and time.time() < deadline:
            time.sleep(0.1)
    return procs


def check_gateway_port(cfg: DokaConfig) -> None:
    """Refuse to start when the gateway's port is taken: Serve's HAProxy would otherwise die at
    start-up with a page of traceback after the cluster is already up."""
    host = cfg.server.client_host
    if _listening(host, cfg.server.port):
        raise SystemExit(f"doka: {host}:{cfg.server.port} is already in use (another gateway, or a `doka run` "
                         f"still running?); stop it, or serve on another port: `doka run --port N` or server.port")


def unreachable_providers(cfg: DokaConfig) -> dict[str, str]:
    """model -> host:port for provider models whose configured `api_base` accepts no connection
    now. Reported at start, never fatal: the tier fails over until the provider answers."""
    out = {}
    for m in cfg.model_list:
        base = m.litellm_params.get("api_base") if m.provider == "litellm" else None
        if not isinstance(base, str):
            continue  # the provider's public endpoint: not probed
        u = urlparse(base)
        port = u.port or (443 if u.scheme == "https" else 80)
        if u.hostname and not _listening(u.hostname, port):
            out[m.model_name] = f"{u.hostname}:{port}"
    return out


def _load(path: str | None) -> DokaConfig:
    try:
        return load_config(path or DEFAULT_CONFIG_PATH)
    except ConfigError as e:
        print(f"doka: {e}", file=sys.stderr)
        raise SystemExit(2) from None


STOP_BOUND_S = 20.0  # every process `doka run` started is gone within this after SIGINT/SIGTERM


def _interrupt(*_: object) -> None:
    """First SIGINT/SIGTERM: stop (KeyboardInterrupt unwinds to the cleanup). Later ones while
    stopping are ignored, so a second Ctrl-C cannot interrupt the cleanup halfway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except Exception:
        return []


def stop_everything(mocks: list[subprocess.Popen], started: list[Any], bound_s: float = STOP_BOUND_S,
                    spare: frozenset[int] = frozenset()) -> None:
    """Stop what this run started, within `bound_s`: the mock upstream, Serve, the Ray cluster,
    then any of our child processes still alive (Ray's dashboard and runtime-env agents can
    outlive the raylet) get SIGTERM, then SIGKILL. Processes in `spare` were children before the
    run began (an embedding caller's own Ray cluster, say): they are not ours to stop."""
    import psutil

    deadline = time.monotonic() + bound_s
    for p in mocks:
        p.terminate()
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        import ray
        from ray import serve

        try:
            serve.shutdown()
        except Exception:
            pass
        try:
            ray.shutdown()
        except Exception:
            pass
    procs = {p.pid: p for p in [*started, *_descendants()] if p.pid not in spare}
    alive = [p for p in procs.values() if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=max(0.5, (deadline - time.monotonic()) / 2))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=max(0.5, deadline - time.monotonic()))
    for p in mocks:
        try:
            p.wait(timeout=1)
        except subprocess.TimeoutExpired:
            p.kill()


# Dashboard head modules a gateway's operators use: nodes/actors, reports and profiling, state,
# events, jobs (router training runs as a Ray job), Serve (its REST API applies live reloads),
# metrics, task events and usage stats. Ray Data's and Ray Train's pages are left out (~40 MB:
# a subprocess each). tests/test_run_cli.py checks the list against this Ray's modules.
GATEWAY_DASHBOARD_MODULES = ("EventHead", "JobHead", "MetricsHead", "NodeHead", "ReportHead", "ServeHead",
                             "StateHead", "TaskEventsHead", "UsageStatsHead", "PlatformEventsHead")


@contextmanager
def gateway_head(log_monitor: bool, full_dashboard: bool = False) -> Iterator[None]:
    """`ray.init` without what a one-node gateway does not use (~50 MB a process).

    `ray.init` starts Ray's autoscaler monitor (nothing to autoscale on one local node; KubeRay
    clusters start their own head with `ray start`), the log monitor (it only copies worker
    stdout/stderr to this console; every log stays in the session's log files and the
    dashboard) and every dashboard module, and has no switch for any of them (`ray start` has
    `--no-monitor --include-log-monitor=false`; the dashboard takes `--modules-to-load`). For
    this call only, the node parameters get those defaults and the dashboard command the module
    list above (unless `full_dashboard`).
    """
    import ray._private.parameter as parameter
    import ray._private.services as services
    from ray._private import ray_constants

    base, start_process = parameter.RayParams, services.start_ray_process

    class GatewayHeadParams(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("no_monitor", True)
            if not log_monitor:
                kwargs.setdefault("include_log_monitor", False)
            super().__init__(*args, **kwargs)

    def start_ray_process(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if (process_type == ray_constants.PROCESS_TYPE_DASHBOARD and not full_dashboard
                and not any(c.startswith("--modules-to-load") for c in command)):
            command = [*command, "--modules-to-load=" + ",".join(GATEWAY_DASHBOARD_MODULES)]
        return start_process(command, process_type, *args, **kwargs)

    parameter.RayParams, services.start_ray_process = GatewayHeadParams, start_ray_process
    try:
        yield
    finally:
        parameter.RayParams, services.start_ray_process = base, start_process


def deploy_declaratively(cfg: DokaConfig, timeout_s: float = 900,
                         announce: Callable[[list[str]], None] | None = None) -> list[str]:
    """Deploy the graph the way a RayService does (a Serve config: the gateway application and
    one per vLLM tier), so `doka router reload` / `train-from-traces` patch its router
    user_config in place (Serve `reconfigure`) exactly as on Kubernetes.

    Waits until the gateway application runs (its failure is fatal) and each tier application
    runs or fails; returns one line per tier that did not come up: the gateway serves without
    it, its chains skip it, /health/readiness names it. `announce(starting)` is called once if
    the gateway runs while tiers are still starting: it answers from then on (a vLLM engine on
    CPU takes a minute or more).
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from app.serve_config import serve_config
    from deployments.tier_apps import reason_down, states_from_serve_status, tier_apps, tiers_starting

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(serve_config(cfg, inline=True)))
    tiers = {m: where["app"] for m, where in tier_apps(cfg).items()}
    deadline = time.monotonic() + timeout_s
    while True:
        states = states_from_serve_status(serve.status())
        main = states.get(cfg.server.app_name)
        status = main.status if main is not None else ""
        if status == "DEPLOY_FAILED" or (status != "RUNNING" and time.monotonic() > deadline):
            message = ((main.message if main is not None else "") or "timed out").strip().splitlines()
            raise SystemExit(f"doka: deploying {cfg.server.app_name} failed: {message[-1] if message else status}")
        starting = tiers_starting(tiers, states)
        if status == "RUNNING" and (not starting or time.monotonic() > deadline):
            return [f"doka: vLLM tier {m} is not serving: {why}; the other tiers serve, its chains skip it"
                    for m, app in tiers.items() if (why := reason_down(app, states.get(app))) is not None]
        if status == "RUNNING" and announce is not None:
            announce(starting)
            announce = None
        time.sleep(0.5)


def run_env(cfg: DokaConfig, perf: bool = True) -> dict[str, str]:
    """The environment `doka run` gives the local Ray cluster it starts (defaults only)."""
    env = {**LOCAL_ENV, **(PERF_ENV if perf else {})}
    if cfg.server.host in LOCAL_HOSTS:
        # Behind HAProxy a draining ingress replica stays reachable this long so external load
        # balancers can deregister it (Serve's default: 30 s, which made every Ctrl-C wait 30 s).
        # No load balancer reaches a loopback gateway. In-flight requests still drain, up to
        # graceful_shutdown_timeout_s.
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = LOOPBACK_DRAIN_WINDOW_S
    return env


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and container stops shut down cleanly too
    signal.signal(signal.SIGINT, _interrupt)
    if args.port:
        cfg.server.port = args.port
    check_gateway_port(cfg)  # before anything starts
    for k, v in run_env(cfg, perf=not args.no_perf).items():
        os.environ.setdefault(k, v)  # a value the user set wins
    mocks: list[subprocess.Popen] = []
    started: list[Any] = []  # every process of this run, swept again at the end
    spare = frozenset(p.pid for p in _descendants())  # not started by this run: never stopped by it
    try:
        from app.lean_imports import skip_serve_pandas

        skip_serve_pandas()  # before the first `import ray.serve`: app/lean_imports.py
        from app.graph import check_accounts

        check_accounts(cfg)  # keys required but uncheckable: one line, exit 2, nothing started
        if not args.no_mock:
            mocks = start_mocks(cfg, args.mock_latency_ms)
            if mocks:
                os.environ.setdefault("MOCK_API_KEY", "mock-key")
        for model, where in unreachable_providers(cfg).items():
            print(f"doka: provider of {model} ({where}) is unreachable now; serving anyway, its tier fails over "
                  "until it answers")
        import ray
        from ray import serve

        with gateway_head(log_monitor=args.console_logs, full_dashboard=args.full_dashboard):
            ray.init(num_cpus=args.num_cpus, include_dashboard=not args.no_dashboard, dashboard_host="127.0.0.1",
                     runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK}, _system_config=RAY_SYSTEM_CONFIG,
                     log_to_driver=args.console_logs)
        started = _descendants()
        # Ray's core worker installs its own fatal-signal handler for SIGTERM (a stack dump, then
        # abort: "Aborted", exit -6); ours goes back on top so SIGTERM stops as cleanly as Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        serve.start(http_options={"host": cfg.server.host, "port": cfg.server.port})
        base = f"http://{cfg.server.host}:{cfg.server.port}"

        def announce(starting: list[str]) -> None:
            print(f"doka: answering at {base}/v1 already; vLLM tier {', '.join(starting)} still starting (a minute "
                  "or more on CPU): until it serves, its chains answer from their next tier", flush=True)

        for line in deploy_declaratively(cfg, announce=announce):  # a tier that failed: one line each, not fatal
            print(line, flush=True)
        dash = "off" if args.no_dashboard else "http://127.0.0.1:8265"
        print(f"doka: ready at {base}/v1 (OpenAI base_url); models: {base}/v1/models; "
              f"Ray dashboard: {dash}; Ray cluster: {ray.get_runtime_context().gcs_address}; Ctrl-C stops",
              flush=True)
        if not args.console_logs:
            logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
            print(f"doka: replica logs in {logs} (`doka run --console-logs` also prints them here)")
        while True:
            time.sleep(3600)
    except ConfigError as e:  # e.g. keys required but the accounts deployment cannot be built
        print(f"doka: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_everything(mocks, started, spare=spare)
    print("doka: stopped (mock upstream, Serve app and the local Ray cluster are gone)", flush=True)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    chains = ", ".join(f"{k}: {' -> '.join(v)}" for k, v in cfg.fallbacks.items()) or "none"
    cascades = ", ".join(f"{k}: {c.weak} + {c.verifier} -> {c.strong}"
                         + ("" if c.compare == "text" else f" ({c.compare})")
                         for k, c in cfg.cascades.items()) or "none"
    print(f"{args.file}: OK — {len(cfg.model_list)} models, chains: {chains}, cascades: {cascades}, "
          f"auto strategy: {cfg.router.strategy}"
          + (f", novel prompts: {cfg.router.novel_cascade}" if cfg.router.novel_cascade else ""))
    return 0


def cmd_serve_config(args: argparse.Namespace) -> int:
    import yaml

    from app.serve_config import serve_config

    cfg = _load(args.config)
    path = None if args.inline else str(Path(args.config or DEFAULT_CONFIG_PATH))
    print(yaml.safe_dump(serve_config(cfg, inline=args.inline, config_path=path), sort_keys=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve the gateway in the foreground (starts the mock upstream if needed)")
    run.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG_PATH})")
    run.add_argument("--port", type=int, help="override server.port")
    run.add_argument("--no-mock", action="store_true", help="never start the mock upstream")
    run.add_argument("--mock-latency-ms", type=float, default=50.0)
    run.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster")
    run.add_argument("--no-perf", action="store_true", help="leave Serve's throughput/HAProxy mode off")
    run.add_argument("--no-dashboard", action="store_true",
                     help="start Ray without its dashboard UI and HTTP API (~240 MB less, docs/benchmarks.md; "
                     "Serve, the gateway's /metrics and Ray's metrics agent run as usual)")
    run.add_argument("--full-dashboard", action="store_true",
                     help="load every Ray dashboard module, Ray Data's and Ray Train's pages too (~40 MB)")
    run.add_argument("--console-logs", action="store_true",
                     help="also copy every replica's stdout/stderr to this console (starts Ray's log monitor, "
                     "~50 MB); without it they are in the Ray session's log files and the dashboard")
    run.set_defaults(handler=cmd_run)

    config = sub.add_parser("config", help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="validate a config file and summarise it")
    check.add_argument("file")
    check.set_defaults(handler=cmd_config_check)

    sc = sub.add_parser("serve-config", help="print the Serve config (serveConfigV2) for a doka config")
    sc.add_argument("--config")
    sc.add_argument("--inline", action="store_true", help="embed the config instead of naming the file")
    sc.set_defaults(handler=cmd_serve_config)
