"""The commission's arithmetic: the fee and the model's part always add up to the price."""
import pytest

from models.revenue import platform_fee
from models.settings import MAX_FEE_BPS, ConfigError, Settings


@pytest.mark.parametrize("bps", [0, 1, 333, 1500, 2000, 5000, MAX_FEE_BPS])
def test_fee_and_net_add_up_to_the_price_for_every_price(bps):
    for price in range(1, 100_000):
        fee = platform_fee(price, bps)
        assert 0 <= fee < price and fee + (price - fee) == price
        assert fee == price * bps // 10000  # rounded down: the model keeps the fraction


def test_examples():
    assert platform_fee(99, 2000) == 19  # 19.8 -> 19, the model gets 80
    assert platform_fee(4, 2500) == 1
    assert platform_fee(1, MAX_FEE_BPS) == 0  # a one-token sale pays the model its token


@pytest.mark.parametrize("raw", ["-1", "10000", "20%", "1.5"])
def test_a_rate_outside_0_to_9999_is_a_configuration_error(raw):
    with pytest.raises(ConfigError, match="PLATFORM_FEE_BPS"):
        Settings.from_env({"PLATFORM_FEE_BPS": raw})
    assert Settings.from_env({"PLATFORM_FEE_BPS": "2000"}).platform_fee_bps == 2000
