"""What the /v1/messages translation costs: doka's hand-written module vs LiteLLM's adapter.

Each side runs in a fresh interpreter (import time and resident memory are per process, and the
ingress imports neither litellm nor anything heavy today): import seconds, RSS added by the
import, and microseconds of CPU per request for the request translation (Anthropic -> chat body)
plus the answer translation (chat completion -> Anthropic message), on a request with a system
prompt, two turns, a tool definition and a tool result.

    python -m load.bench_translation [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

REQUEST = {
    "model": "mock-gpt-3.5", "max_tokens": 256, "system": "You are terse.",
    "tools": [{"name": "get_weather", "description": "weather of a city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
    "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ],
}
ANSWER = {"id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-3.5-turbo",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is sunny in Paris."},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}}

_CHILD = r'''
import json, resource, sys, time
req, answer, n, which = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import fastapi, pydantic  # what the ingress has loaded anyway
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if which == "doka":
    from app import anthropic_api as a
    def run():
        r = a.validate(a.MessagesRequest, req)
        a.to_chat(r)
        a.from_chat(answer, r.model)
else:
    import os
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from litellm.llms.anthropic.pass_through.adapters.transformation import LiteLLMAnthropicMessagesAdapter
    from litellm.types.utils import ModelResponse
    ad = LiteLLMAnthropicMessagesAdapter()
    def run():
        body, mapping = ad.translate_anthropic_to_openai(dict(req))
        ad.translate_openai_response_to_anthropic(ModelResponse(**answer), mapping)
import_s = time.perf_counter() - t0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(50):
    run()
c0 = time.process_time()
for _ in range(n):
    run()
us = (time.process_time() - c0) / n * 1e6
print(json.dumps({"impl": which, "import_s": round(import_s, 3), "rss_added_mb": round((rss1 - rss0) / 1024, 1),
                  "cpu_us_per_request": round(us, 1)}))
'''


def measure(which: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(REQUEST), json.dumps(ANSWER), str(n), which],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args(argv)
    for which in ("doka", "litellm"):
        print(json.dumps(measure(which, args.n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
