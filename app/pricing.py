"""The one price rule of the gateway: what a model's tokens cost in USD.

The ledger (accounts core), the router (cost-aware choice, `cheapest_healthy`) and the
observability layer all price through `ModelEntry.price`, so a model the config leaves unpriced
is treated the same everywhere: self-hosted (vLLM, Ollama, a hosted vLLM server) costs 0 USD,
any other unpriced model is unknown (None), never silently free to the router.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """USD per prompt token and per completion token."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input + completion_tokens * self.output

    @property
    def per_token(self) -> float:
        """One number to rank models by (input + output per token), as RouterBench's costs do."""
        return self.input + self.output


def price_of(input_cost: float | None, output_cost: float | None, self_hosted: bool) -> Price | None:
    """The configured price; an unpriced self-hosted model costs 0, any other unpriced model None."""
    if input_cost is None and output_cost is None:
        return Price() if self_hosted else None
    return Price(input_cost or 0.0, output_cost or 0.0)


def rank_price(price: Price | None) -> float:
    """Sort key for cheapest-first choices: an unpriced model sorts last."""
    return price.per_token if price is not None else float("inf")
