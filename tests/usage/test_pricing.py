"""Costs computed by hand from genai-prices 0.2.3's table (USD per million tokens), exact to the 10th decimal.

gpt-4o: input 2.5, cache read 1.25, output 10. gpt-4o-mini: 0.15 / 0.075 / 0.6.
claude-sonnet-4-5: input 3, cache read 0.3, cache write 3.75, output 15; above 200k input tokens 6 / 0.6 / 7.5 / 22.5.
gemini-2.5-flash: input 0.3, cache read 0.03, output 2.5.
"""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from providers.clients.base import TokenUsage
from usage import pricing
from usage.pricing import PriceQuote, price_quote

GENAI = "genai-prices 0.2.3"


def quote(provider_type: str, model: str, config=None, **tokens) -> PriceQuote:
    return price_quote(provider_type=provider_type, model=model, usage=TokenUsage(**tokens), config=config)


def test_openai_cached_input_and_reasoning_are_each_priced_at_their_rate():
    result = quote(
        "openai", "gpt-4o", input_tokens=12_345, cached_input_tokens=2_000, output_tokens=6_789, reasoning_tokens=1_234
    )

    # (12,345 - 2,000) x 2.5 + 2,000 x 1.25 + 6,789 x 10 (reasoning is output) = 96,252.5 per million
    assert result == PriceQuote(cost_usd=Decimal("0.0962525000"), source=GENAI)
    assert result.priced and isinstance(result.cost_usd, Decimal)


def test_anthropic_cache_reads_and_writes_are_priced_apart_from_plain_input():
    result = quote(
        "claude",
        "claude-sonnet-4-5-20250929",
        input_tokens=10_000,
        cached_input_tokens=4_000,
        cache_write_tokens=1_000,
        output_tokens=2_000,
        reasoning_tokens=500,
    )

    # 5,000 x 3 + 4,000 x 0.3 + 1,000 x 3.75 + 2,000 x 15 = 49,950 per million
    assert result.cost_usd == Decimal("0.0499500000")


def test_anthropic_long_prompts_are_priced_at_the_higher_tier():
    result = quote(
        "claude",
        "claude-sonnet-4-5",
        input_tokens=250_000,
        cached_input_tokens=100_000,
        cache_write_tokens=50_000,
        output_tokens=1_000,
    )

    # 100,000 x 6 + 100,000 x 0.6 + 50,000 x 7.5 + 1,000 x 22.5 = 1,057,500 per million
    assert result.cost_usd == Decimal("1.0575000000")


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "models/gemini-2.5-flash"])
def test_gemini_thinking_tokens_are_priced_as_output(model):
    result = quote(
        "gemini", model, input_tokens=100_001, cached_input_tokens=50_000, output_tokens=3_333, reasoning_tokens=3_000
    )

    # 50,001 x 0.3 + 50,000 x 0.03 + 3,333 x 2.5 = 24,832.8 per million
    assert result.cost_usd == Decimal("0.0248328000")


def test_a_tiny_call_keeps_its_cost_to_the_tenth_decimal():
    result = quote("openai", "gpt-4o-mini", input_tokens=7, cached_input_tokens=3, output_tokens=5)

    # 4 x 0.15 + 3 x 0.075 + 5 x 0.6 = 3.825 per million
    assert result.cost_usd == Decimal("0.0000038250")


def test_a_call_without_tokens_costs_nothing_but_is_priced():
    result = quote("openai", "gpt-4o")

    assert result.cost_usd == Decimal(0) and result.priced


def test_a_model_the_table_does_not_know_is_unpriced_not_free():
    result = quote("openai", "llama-3.3-70b-on-my-laptop", input_tokens=1_000, output_tokens=1_000)

    assert result == PriceQuote(cost_usd=None, source="")
    assert not result.priced


def test_a_model_is_still_unpriced_the_second_time():
    # The second lookup comes from the remembered misses, not the table.
    quote("openai", "llama-3.3-70b-on-my-laptop", input_tokens=1)

    assert quote("openai", "llama-3.3-70b-on-my-laptop", input_tokens=1).cost_usd is None


def test_the_configured_model_prices_a_call_whose_reported_model_is_unknown(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o")

    result = quote("openai", "my-fine-tune-7", config=config, input_tokens=1_000, output_tokens=100)

    # 1,000 x 2.5 + 100 x 10 = 3,500 per million
    assert result == PriceQuote(cost_usd=Decimal("0.0035000000"), source=GENAI)


def test_inconsistent_counts_leave_the_call_unpriced_instead_of_failing():
    result = quote("openai", "gpt-4o", input_tokens=10, cached_input_tokens=20, output_tokens=5)

    assert result.cost_usd is None


def test_an_override_wins_and_charges_every_input_token_at_the_input_rate(provider_config):
    config = provider_config(
        provider_type="openai",
        model_name="gpt-4o",
        input_price_per_million=Decimal("1.5"),
        output_price_per_million=Decimal("4.25"),
    )

    result = quote(
        "openai",
        "gpt-4o",
        config=config,
        input_tokens=10_000,
        cached_input_tokens=4_000,
        cache_write_tokens=500,
        output_tokens=2_000,
        reasoning_tokens=700,
    )

    # 10,000 x 1.5 + 2,000 x 4.25 = 23,500 per million
    assert result == PriceQuote(cost_usd=Decimal("0.0235000000"), source="override")


def test_an_override_prices_a_model_the_table_does_not_know(provider_config):
    config = provider_config(
        provider_type="openai",
        model_name="llama-3.3-70b-on-my-laptop",
        input_price_per_million=Decimal("0.1"),
        output_price_per_million=Decimal("0.3"),
    )

    result = quote("openai", config.model_name, config=config, input_tokens=1_000_000, output_tokens=10)

    assert result.cost_usd == Decimal("0.1000030000")


def test_an_override_of_one_direction_takes_the_other_from_the_table(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o", output_price_per_million=Decimal("4.25"))

    result = quote(
        "openai", "gpt-4o", config=config, input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000
    )

    # table input: 6,000 x 2.5 + 4,000 x 1.25 = 20,000; override output: 2,000 x 4.25 = 8,500 (per million)
    assert result == PriceQuote(cost_usd=Decimal("0.0285000000"), source=f"override + {GENAI}")


def test_an_override_of_one_direction_on_an_unknown_model_is_unpriced(provider_config):
    config = provider_config(provider_type="openai", model_name="llama-local", input_price_per_million=Decimal("1"))

    assert quote("openai", "llama-local", config=config, input_tokens=10, output_tokens=10).cost_usd is None


def models_of_our_providers():
    from genai_prices.data_snapshot import get_snapshot

    for provider in get_snapshot().providers:
        if provider.id in pricing.PRICE_PROVIDER_IDS.values():
            for model in provider.models:
                yield provider, model


USAGES = [
    TokenUsage(),
    TokenUsage(input_tokens=1, output_tokens=1),
    TokenUsage(input_tokens=12_345, output_tokens=6_789, cached_input_tokens=2_000, reasoning_tokens=1_234),
    TokenUsage(input_tokens=10_000, output_tokens=2_000, cached_input_tokens=4_000, cache_write_tokens=1_000),
    TokenUsage(input_tokens=250_001, output_tokens=70_001, cached_input_tokens=100_000, cache_write_tokens=50_000),
    TokenUsage(input_tokens=1_500_000, output_tokens=9, reasoning_tokens=9),
    TokenUsage(input_tokens=10, output_tokens=5, cached_input_tokens=20),  # inconsistent: unpriced
]


def test_the_price_plans_agree_with_calc_price_for_every_model_of_our_providers():
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    planned = compared = 0
    for provider, model in models_of_our_providers():
        plan = pricing._plan_for(model.get_prices(at))
        planned += plan is not None
        for usage in USAGES:
            compared += 1
            expected = pricing._calc_parts(provider, model, usage, at)
            actual = plan.parts(usage) if plan is not None else expected
            if expected is None:
                assert actual is None, (provider.id, model.id, usage)
            else:
                total = actual.input_usd + actual.output_usd + actual.other_usd
                expected_total = expected.input_usd + expected.output_usd + expected.other_usd
                assert pricing._quantize(total) == pricing._quantize(expected_total), (provider.id, model.id, usage)
                assert actual.input_usd == expected.input_usd and actual.output_usd == expected.output_usd

    assert compared > 500
    assert planned > 0.8 * (compared / len(USAGES)), "most price lists should take the fast path"


@pytest.mark.parametrize(
    ("provider_type", "model"),
    [("openai", "gpt-4o"), ("claude", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-flash")],
)
def test_the_usual_models_take_the_fast_path(provider_type, model):
    provider, info = pricing._model_lookup(pricing.PRICE_PROVIDER_IDS[provider_type], model)

    assert pricing._plan_for(info.get_prices(datetime.now(tz=UTC))) is not None


def test_a_price_list_the_plans_do_not_cover_is_priced_by_calc_price(monkeypatch):
    monkeypatch.setattr(pricing, "_plan_for", lambda model_price: None)

    result = quote(
        "openai", "gpt-4o", input_tokens=12_345, cached_input_tokens=2_000, output_tokens=6_789, reasoning_tokens=1_234
    )

    assert result == PriceQuote(cost_usd=Decimal("0.0962525000"), source=GENAI)
    assert quote("openai", "gpt-4o", input_tokens=10, cached_input_tokens=20).cost_usd is None
