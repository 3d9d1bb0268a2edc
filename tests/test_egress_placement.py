"""`egress.placement`: provider calls from each ingress replica (default) or from the Egress deployment.

The default graph has no Egress deployment: the ingress holds `deployments.egress.EgressService`
and calls providers itself. The Egress deployment placement is killed under load in
tests/test_faults_replicas.py and rendered from config/gpu.example.yaml in
tests/test_kuberay_render.py; models on `deployments.egress_translated` keep their own deployment
with either placement (tests/test_gateway_providers.py). The cancel and timeout paths of the
in-process egress are those of every gateway test (tests/test_gateway_cancel.py, ...), which run
the default placement.
"""

from __future__ import annotations

import openai
import pytest

from app.config import load_config, parse_config
from app.serve_config import serve_config
from tests.conftest import REPO


def _deployment_names(raw: dict) -> set[str]:
    return {d["name"] for d in serve_config(parse_config(raw))["applications"][0]["deployments"]}


@pytest.mark.parametrize("placement, translated, expected", [
    ("ingress", False, set()),
    ("deployment", False, {"Egress"}),
    ("ingress", True, {"EgressTranslated"}),
    ("deployment", True, {"Egress", "EgressTranslated"}),
])
def test_serve_config_has_options_only_for_the_egress_deployments_the_graph_has(placement, translated, expected):
    raw = load_config(REPO / "config" / "default.yaml").model_dump(mode="json", exclude_unset=True)
    raw["egress"] = {"placement": placement}
    if translated:
        raw["deployments"]["egress_translated"] = {"num_cpus": 0.1}
    # `serve deploy` refuses options for a deployment the graph lacks
    assert _deployment_names(raw) & {"Egress", "EgressTranslated"} == expected


_PASSTHROUGH = {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:1/v1"}}
_ROUTER_PATH = {"model_name": "heavy", "litellm_params": {"model": "cohere_chat/command-r", "api_base": "http://127.0.0.1:1"}}


@pytest.mark.parametrize("placement", ["ingress", "deployment"])
@pytest.mark.parametrize("translated", [False, True])
@pytest.mark.parametrize("models", [[_PASSTHROUGH], [_ROUTER_PATH], [_PASSTHROUGH, _ROUTER_PATH]],
                         ids=["passthrough", "router-path", "both"])
def test_serve_config_options_name_exactly_the_deployments_the_graph_binds(placement, translated, models):
    # `serve deploy` refuses options for a deployment the graph lacks: e.g. `placement: deployment`
    # with every external model on the translated egress binds no Egress
    from ray.serve._private.build_app import build_app as serve_build

    from app.graph import build_app
    from app.serve_config import deployment_options

    raw = {"model_list": models, "egress": {"placement": placement}, "deployments": {}}
    if translated:
        raw["deployments"]["egress_translated"] = {"num_cpus": 0.1}
    cfg = parse_config(raw)
    graph = {d.name for d in serve_build(build_app(cfg), name=cfg.server.app_name).deployments}
    options = {d["name"] for d in deployment_options(cfg)}
    assert options <= graph
    egress = {"Egress", "EgressTranslated"}
    assert options & egress == graph & egress
    expected = ({"EgressTranslated"} if translated and _ROUTER_PATH in models else set()) | (
        {"Egress"} if placement == "deployment" and (_PASSTHROUGH in models or not translated) else set())
    assert graph & egress == expected  # so the check above sees an Egress whenever the graph has one


def test_default_config_calls_providers_from_the_ingress_and_the_gpu_example_from_a_deployment():
    assert load_config(REPO / "config" / "default.yaml").egress.placement == "ingress"
    assert load_config(REPO / "config" / "gpu.example.yaml").egress.placement == "deployment"


def test_the_default_gateway_has_no_egress_deployment_and_answers_every_call_kind(gateway, mock):
    from ray import serve

    status = serve.status().applications[parse_config(gateway.cfg).server.app_name]
    assert "Ingress" in status.deployments and "Egress" not in status.deployments
    client = gateway.client(timeout=30)
    mock.reset()
    chat = client.chat.completions.create(model="mock-gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content
    chunks = list(client.chat.completions.create(model="mock-gpt-4", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    text = client.completions.create(model="mock-gpt-4", prompt="hi", max_tokens=8)
    assert text.choices[0].text
    assert mock.state()["counts"]["requests"] == 3  # each reached the provider, once
    mock.state(faults={"gpt-4-turbo": "400"})  # the provider refuses the request
    with pytest.raises(openai.BadRequestError) as e:  # a provider's 400 stays the client's
        client.chat.completions.create(model="mock-gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400
    assert mock.state()["counts"]["fault_400"] == 1
