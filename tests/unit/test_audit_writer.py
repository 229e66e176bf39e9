"""The audit writer batches rows after a short linger and loses none of them at shutdown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from gateway import audit
from gateway.audit import AuditInfo, AuditWriter


def _submit(writer: AuditWriter, n: int) -> None:
    for i in range(n):
        writer.submit(datetime.now(UTC), f"req-{i}", "GET", "/v1/models", 200, 1.0, AuditInfo(api_key_id="k"))


def test_rows_of_one_linger_are_one_insert(monkeypatch) -> None:
    batches: list[list[dict]] = []
    monkeypatch.setattr(audit, "_insert", lambda rows: batches.append(list(rows)))

    async def scenario() -> None:
        writer = AuditWriter(linger_s=0.2)
        writer.start()
        _submit(writer, 5)
        await asyncio.sleep(0.05)
        assert batches == []  # still lingering
        await asyncio.sleep(0.4)
        await writer.stop()

    asyncio.run(scenario())
    assert [len(b) for b in batches] == [5]
    assert [r["request_id"] for r in batches[0]] == [f"req-{i}" for i in range(5)]


def test_stop_writes_rows_taken_during_the_linger(monkeypatch) -> None:
    batches: list[list[dict]] = []
    monkeypatch.setattr(audit, "_insert", lambda rows: batches.append(list(rows)))

    async def scenario() -> None:
        writer = AuditWriter(linger_s=10)
        writer.start()
        _submit(writer, 3)
        await asyncio.sleep(0.05)  # the writer took the first row and waits out the linger
        await writer.stop()

    asyncio.run(scenario())
    assert sum(len(b) for b in batches) == 3
