"""What happens to one request: the gateway core, Ray-free (Serve is the shell around it).

Follow one chat request, one module per hop:

  deployments/ingress.py  the HTTP route (FastAPI on Serve) hands the request to the core
  core.py                 `GatewayCore.serve`: read + validate the body, authorize the key,
                          then plan -> run -> answer; every way out goes through the context
  context.py              `RequestContext`: one object per request (id, grant, decision, what
                          answered, what it delivered); `ctx.settle(status)` settles once
  catalog.py              which names the gateway answers to, their modes, `/v1/models`
  options.py              the client's routing options (`x-doka-cost-weight`, `doka: {...}`)
  plan.py                 `Planner`: auto routing, chains, cascades, allow-lists, capabilities,
                          provider limits, down and full tiers -> the ordered tiers to try
  tiers.py                `Tiers`: the backends by model name and whether each serves now
  run.py                  `ChainRunner`: each tier with its own timeout, first answer wins
  cascade.py              a cascade: weak + verifier agree, else the strong chain
  respond.py              the answer: headers, the model's public name, the JSON body
  stream.py               SSE: chunks as they come, settle on close however the stream ends
  ledger.py               one charge rule (app/pricing.py prices) -> accounts + observability
  http.py                 request id, body reading, errors in the endpoint's dialect

The backends (deployments/backends.py), the router, the accounts and observability are passed
in, so tests/test_request_core*.py run the whole path with fake ones in milliseconds.
"""
