"""Currency conversion into the configured base currency.

Pure: a rate table in, amounts out.  An unknown currency is not guessed: the caller quarantines
the purchase with the reason, so revenue is never silently mis-stated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class CurrencyTable:
    """Units of base currency per one unit of each currency (the base itself is 1)."""

    base: str
    rates: Mapping[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_floats(cls, base: str, rates: Mapping[str, float]) -> CurrencyTable:
        table = {code.upper(): Decimal(str(rate)) for code, rate in rates.items()}
        table.setdefault(base.upper(), Decimal(1))
        return cls(base.upper(), table)

    def knows(self, currency: str) -> bool:
        return currency.upper() in self.rates

    def to_base(self, amount: Decimal, currency: str) -> Decimal:
        """``amount`` in the base currency; raises ``KeyError`` for an unknown currency."""
        return (amount * self.rates[currency.upper()]).quantize(Decimal("0.0001"))
