"""A plain (not distributed) service that uses another service by name."""

from __future__ import annotations

import asyncio

from kernel import BaseService


class Reporter(BaseService):
    async def start(self) -> None:
        self.counter = self.get_service("prime-counter")

    async def prime_density(self, limit: int, parts: int = 8) -> str:
        """Counts primes below ``limit`` in ``parts`` calls spread over the pool."""
        step = -(-limit // parts)
        counts = await asyncio.gather(
            *(self.counter.count_range(i, min(i + step, limit)) for i in range(0, limit, step))
        )
        total = sum(counts)
        return f"{total} primes below {limit:,} ({total / limit:.2%})"
