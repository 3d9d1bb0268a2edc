"""OpenAI's Batch API on doka: files, batches and the background runner (Ray-free core).

`lines` parses input files, `store` keeps files' and batches' state in the accounts database,
`files` keeps file bytes in fsspec storage, `core` is the API and the runner; the ingress
(deployments/ingress.py) is the HTTP shell and serves each line through the gateway core (app/request/core.py).
"""
