"""What a completion costs: a price table per model, in integer micro-units of one currency.

Prices are per 1,000 tokens, prompt and completion apart, given as decimals (``"0.00015"``, never a float:
``0.1 + 0.2`` is not ``0.3``). A cost is an integer count of micro-units (millionths of the currency unit,
``1_000_000`` = 1 USD), rounded up per call, so that summing the costs of a workflow's calls is exact and a
budget compares integers. The table is keyed by ``"<provider>/<model>"`` or by the model alone; the first
wins, so two providers serving the same model name may be priced apart.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from pydantic import BaseModel, ConfigDict, Field

from relaybus.tasks.llm._models import Usage

#: Micro-units per currency unit.
MICROS = 1_000_000


class Price(BaseModel):
    """The price of 1,000 prompt tokens and of 1,000 completion tokens, in the table's currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_per_1k: Decimal = Field(ge=0)
    completion_per_1k: Decimal = Field(ge=0)

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of a call in micro-units, rounded up (a budget is never undercharged)."""
        exact = (self.prompt_per_1k * prompt_tokens + self.completion_per_1k * completion_tokens) * MICROS / 1000
        return int(exact.to_integral_value(rounding=ROUND_CEILING))


class PriceTable(BaseModel):
    """Prices by ``"<provider>/<model>"`` or model name, in ``currency`` (an ISO 4217 code)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prices: dict[str, Price] = Field(default_factory=dict)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")

    def price_of(self, provider: str, model: str) -> Price | None:
        return self.prices.get(f"{provider}/{model}") or self.prices.get(model)

    def cost_micros(self, provider: str, model: str, usage: Usage) -> int | None:
        """What ``usage`` cost on ``provider``/``model``; None when the model has no price."""
        price = self.price_of(provider, model)
        return None if price is None else price.cost_micros(usage.prompt_tokens, usage.completion_tokens)


def format_micros(micros: int, currency: str = "") -> str:
    """``1234`` → ``"0.001234"`` (with `` USD`` when a currency is given): exact, for people and for JSON."""
    text = str(Decimal(micros) / MICROS)
    if "E" in text or "e" in text:
        text = f"{Decimal(micros) / MICROS:f}"
    return f"{text} {currency}".strip()


def to_micros(amount: Decimal | str | int) -> int:
    """A currency amount (``"0.05"``) in micro-units, rounded down (a limit is never raised by rounding)."""
    value = Decimal(str(amount)) * MICROS
    return int(value.to_integral_value(rounding="ROUND_FLOOR"))
