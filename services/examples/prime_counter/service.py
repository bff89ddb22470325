"""A CPU-heavy ``@distributed`` service: plain sync code, run on the pool."""

from __future__ import annotations

import math

from kernel import BaseService, distributed, task


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


@distributed
class PrimeCounter(BaseService):
    name = "prime-counter"

    def __init__(self) -> None:
        self.counted = 0  # state: how many numbers this copy has examined

    def count_primes(self, limit: int) -> int:
        """Primes below ``limit``."""
        return self.count_range(0, limit)

    def count_range(self, start: int, stop: int) -> int:
        """Primes in ``[start, stop)``; adds the span to ``self.counted``. Reports its
        progress to the caller as it goes (``kernel.task``)."""
        self.counted += max(0, stop - start)
        found = 0
        for low in range(start, stop, 10_000):
            high = min(low + 10_000, stop)
            found += sum(1 for n in range(low, high) if is_prime(n))
            task.progress((high - start) / (stop - start), f"at {high:,}")
        return found

    async def count_range_async(self, start: int, stop: int) -> int:
        """The same, as an async method (awaitable on the caller's side either way)."""
        return self.count_range(start, stop)

    def total_counted(self) -> int:
        return self.counted
