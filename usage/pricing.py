"""What a provider call cost, from `genai-prices` or the config's own price override.

Decimal throughout. A model the price table does not know is unpriced (`cost_usd=None`), never $0.

Token classes, as `providers.clients.base.TokenUsage` normalises them: `input_tokens` includes cache reads
and cache writes, `output_tokens` includes reasoning. genai-prices nests them the same way: it prices
`input_tokens - cache_read_tokens - cache_write_tokens` at the input rate and each cache class at its own
rate (a class the model has no rate for stays in plain input), and `output_reasoning_tokens` at a reasoning
rate where a model has one, else as output. Anthropic cache writes are priced at the 5-minute rate: the usage
we record does not tell 5-minute from 1-hour writes. Tiered prices (e.g. above 200k input tokens) apply to
every token once the input crosses the tier, as the providers bill them.

`genai_prices.calc_price` costs 60-80 µs of CPU a call, a few percent of the gateway's budget per request,
mostly in working out which usage classes a model's price list involves. That depends only on the price list,
so it is worked out once per price list (`_Plan`) and each call is a handful of Decimal operations. A price
list with anything the plan does not cover (per-request prices, or classes that would change how our five
counts are split) goes to `calc_price`; a test checks the plans against `calc_price` for every model of the
three providers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

import genai_prices
from genai_prices.data_snapshot import get_snapshot
from genai_prices.data_units import unit_data
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices

from providers.clients.base import ProviderType, TokenUsage

if TYPE_CHECKING:
    from providers.models import ProviderConfig

logger = logging.getLogger(__name__)

GENAI_PRICES_SOURCE = f"genai-prices {genai_prices.__version__}"
OVERRIDE_SOURCE = "override"

# genai-prices' provider ids.
PRICE_PROVIDER_IDS: dict[str, str] = {
    ProviderType.OPENAI: "openai",
    ProviderType.CLAUDE: "anthropic",
    ProviderType.GEMINI: "google",
}

# Matches UsageRecord.cost_usd (decimal_places=10).
COST_QUANTUM = Decimal("1e-10")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class PriceQuote:
    cost_usd: Decimal | None
    source: str

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


UNPRICED = PriceQuote(cost_usd=None, source="")


@dataclass(frozen=True)
class _Parts:
    input_usd: Decimal
    output_usd: Decimal
    other_usd: Decimal = Decimal(0)  # prices with no direction, e.g. per request


def prices_load() -> None:
    """Load genai-prices' table (done on first use otherwise): for processes that load what they keep up front."""
    get_snapshot()


def price_quote(
    *,
    provider_type: str,
    model: str,
    usage: TokenUsage,
    config: ProviderConfig | None = None,
    at: datetime | None = None,
) -> PriceQuote:
    """Price `usage` of `model` at time `at` (default now): the config's override where set, else genai-prices.

    `model` is tried first (the provider's own name for what answered), then the config's `model_name`.
    With an override for one direction only, the other comes from genai-prices, and the quote is unpriced
    if genai-prices does not know the model.
    """
    input_rate = config.input_price_per_million if config is not None else None
    output_rate = config.output_price_per_million if config is not None else None
    if input_rate is not None and output_rate is not None:
        override = _override_parts(usage, input_rate, output_rate)
        return PriceQuote(cost_usd=_quantize(override.input_usd + override.output_usd), source=OVERRIDE_SOURCE)

    models = [model]
    if config is not None and config.model_name and config.model_name != model:
        models.append(config.model_name)
    parts = _table_parts(provider_type, models, usage, at or datetime.now(tz=UTC))
    if parts is None:
        return UNPRICED
    if input_rate is None and output_rate is None:
        return PriceQuote(
            cost_usd=_quantize(parts.input_usd + parts.output_usd + parts.other_usd), source=GENAI_PRICES_SOURCE
        )

    override = _override_parts(usage, input_rate or Decimal(0), output_rate or Decimal(0))
    input_usd = override.input_usd if input_rate is not None else parts.input_usd
    output_usd = override.output_usd if output_rate is not None else parts.output_usd
    return PriceQuote(
        cost_usd=_quantize(input_usd + output_usd + parts.other_usd),
        source=f"{OVERRIDE_SOURCE} + {GENAI_PRICES_SOURCE}",
    )


def _override_parts(usage: TokenUsage, input_rate: Decimal, output_rate: Decimal) -> _Parts:
    # An override is one rate per direction, so it cannot express a cache discount or a cache-write premium:
    # every input token (uncached, cache read, cache write) is charged at the input rate, and every output
    # token (reasoning included) at the output rate. For cache reads that errs on the high side.
    return _Parts(
        input_usd=Decimal(usage.input_tokens) * input_rate / _MILLION,
        output_usd=Decimal(usage.output_tokens) * output_rate / _MILLION,
    )


# (provider id, model ref) -> the table's provider and model, or None when the table does not know it. A miss
# scans every model of the provider and raises, so it is remembered too. Bounded: refs come from providers.
_models: dict[tuple[str, str], tuple[Provider, ModelInfo] | None] = {}
_MODELS_MAX = 1024


def _table_parts(provider_type: str, models: list[str], usage: TokenUsage, at: datetime) -> _Parts | None:
    provider_id = PRICE_PROVIDER_IDS.get(provider_type)
    if provider_id is None:
        return None
    for model in models:
        found = _model_lookup(provider_id, _model_ref(model))
        if found is None:
            continue
        provider, info = found
        model_price = info.get_prices(at)
        plan = _plan_for(model_price)
        parts = plan.parts(usage) if plan is not None else _calc_parts(provider, info, usage, at)
        if parts is None:
            # Inconsistent counts (e.g. more cached tokens than input tokens): record the call unpriced rather
            # than lose it.
            logger.warning("usage of %s/%s could not be priced: inconsistent token counts", provider_id, info.id)
        return parts
    return None


def _model_lookup(provider_id: str, ref: str) -> tuple[Provider, ModelInfo] | None:
    key = (provider_id, ref)
    try:
        return _models[key]
    except KeyError:
        pass
    try:
        found = get_snapshot().find_provider_model(ref, None, provider_id, None) if ref else None
    except LookupError:
        found = None
    if len(_models) >= _MODELS_MAX:
        _models.clear()
    _models[key] = found
    return found


def _calc_parts(provider: Provider, info: ModelInfo, usage: TokenUsage, at: datetime) -> _Parts | None:
    try:
        calculation = info.calc_price(_library_usage(usage), provider, genai_request_timestamp=at)
    except ValueError:
        return None
    return _Parts(
        input_usd=calculation.input_price,
        output_usd=calculation.output_price,
        other_usd=calculation.total_price - calculation.input_price - calculation.output_price,
    )


def _library_usage(usage: TokenUsage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )


# The five classes we count, by genai-prices price key.
_INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT, _REASONING = (
    "input_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "output_mtok",
    "output_reasoning_mtok",
)
_OURS = (_INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT, _REASONING)
_DIMENSIONS = {unit["price_key"]: unit.get("dimensions", {}).items() for unit in unit_data.values()}
_PER = {unit["price_key"]: unit["per"] for unit in unit_data.values()}


def _plan_covers(price_key: str) -> bool:
    """Whether a price in the list leaves our five counts' costs as the plan computes them.

    True for our own classes, and for a class we never report that is not an ancestor of ours (audio, text,
    1-hour cache writes, web searches): genai-prices counts it as 0 and splits nothing off ours for it.
    """
    if price_key in _OURS:
        return _PER[price_key] == 1_000_000
    dimensions = _DIMENSIONS.get(price_key)
    if dimensions is None or unit_data.get("requests", {}).get("price_key") == price_key:
        return False  # unknown to us, or charged per request whatever the usage
    return not any(dimensions <= _DIMENSIONS[ours] for ours in _OURS)


@dataclass(frozen=True)
class _Plan:
    rates: dict[str, Decimal | TieredPrices | None]

    def parts(self, usage: TokenUsage) -> _Parts | None:
        rates = self.rates
        cached = usage.cached_input_tokens if rates[_CACHE_READ] is not None else 0
        written = usage.cache_write_tokens if rates[_CACHE_WRITE] is not None else 0
        reasoning = usage.reasoning_tokens if rates[_REASONING] is not None else 0
        plain_input = usage.input_tokens - cached - written
        plain_output = usage.output_tokens - reasoning
        if plain_input < 0 or plain_output < 0:
            return None
        total_input = usage.input_tokens
        input_usd = (
            _cost(rates[_INPUT], plain_input, total_input)
            + _cost(rates[_CACHE_READ], cached, total_input)
            + _cost(rates[_CACHE_WRITE], written, total_input)
        )
        output_usd = _cost(rates[_OUTPUT], plain_output, total_input) + _cost(rates[_REASONING], reasoning, total_input)
        return _Parts(input_usd=input_usd, output_usd=output_usd)


def _cost(price: Decimal | TieredPrices | None, count: int, total_input: int) -> Decimal:
    # As genai_prices.types.calc_unit_price: a tier's price applies to every token once the input crosses it.
    if price is None or not count:
        return Decimal(0)
    if isinstance(price, TieredPrices):
        rate = price.base
        for tier in reversed(price.tiers):
            if total_input > tier.start:
                rate = tier.price
                break
        price = rate
    return price * Decimal(count) / _MILLION


# id(ModelPrice) -> (the ModelPrice, kept alive so the id stays its own; its plan, or None to use calc_price)
_plans: dict[int, tuple[ModelPrice, _Plan | None]] = {}


def _plan_for(model_price: ModelPrice) -> _Plan | None:
    cached = _plans.get(id(model_price))
    if cached is not None and cached[0] is model_price:
        return cached[1]
    keys = [key for key, value in vars(model_price).items() if not key.startswith("_") and value is not None]
    plan = None
    if all(_plan_covers(key) for key in keys):
        rates = {key: getattr(model_price, key, None) for key in _OURS}
        if all(rate is None or isinstance(rate, Decimal | TieredPrices) for rate in rates.values()):
            plan = _Plan(rates=rates)
    if len(_plans) >= _MODELS_MAX:
        _plans.clear()
    _plans[id(model_price)] = (model_price, plan)
    return plan


def _model_ref(model: str) -> str:
    # Gemini names models "models/gemini-2.5-flash" in some places; the price table does not.
    return model.strip().removeprefix("models/").lower()


def _quantize(amount: Decimal) -> Decimal:
    return amount.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)
