"""Webhook delivery: POST the alert JSON to every configured URL, at least once.

Deliveries run in a background task so a slow receiver never stalls the pipeline. Each
URL gets `retries` more attempts with exponential backoff; a delivery that still fails
is counted in `failed` and logged with the reason. Receivers de-duplicate by
`alert_id` + `status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ballpass import __version__
from ballpass.config import WebhookConfig
from ballpass.log import kv

log = logging.getLogger(__name__)


@dataclass
class WebhookCounters:
    delivered: int = 0
    failed: int = 0
    attempts: int = 0


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> int:
    """POST `body` as JSON; return the HTTP status. Raises OSError on a network error."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"ballpass/{__version__}",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class WebhookSender:
    """Queue of alert deliveries, drained by `run()` until `close()`."""

    def __init__(self, hooks: tuple[WebhookConfig, ...], backoff_s: float = 1.0) -> None:
        self.hooks = hooks
        self.backoff_s = backoff_s
        self.counters = WebhookCounters()
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def submit(self, alert: dict[str, Any]) -> None:
        self._queue.put_nowait(alert)

    async def close(self) -> None:
        """Deliver what is queued, then stop `run()`."""
        await self._queue.put(None)

    async def run(self) -> None:
        while (alert := await self._queue.get()) is not None:
            await asyncio.gather(*(self._deliver(h, alert) for h in self.hooks
                                   if alert.get("status") in h.events))

    async def _deliver(self, hook: WebhookConfig, alert: dict[str, Any]) -> None:
        reason = ""
        for attempt in range(hook.retries + 1):
            self.counters.attempts += 1
            try:
                status = await asyncio.to_thread(post_json, hook.url, alert, hook.timeout_s)
                if 200 <= status < 300:
                    self.counters.delivered += 1
                    log.info(kv("webhook_delivered", url=hook.url, alert_id=alert["alert_id"],
                                status=alert["status"], http=status))
                    return
                reason = f"http {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    break  # the receiver refuses this body: retrying will not help
            except OSError as e:
                reason = str(getattr(e, "reason", e))
            if attempt < hook.retries:
                delay = self.backoff_s * 2**attempt
                log.warning(kv("webhook_retry", url=hook.url, alert_id=alert["alert_id"],
                               attempt=attempt + 1, reason=reason, retry_in_s=delay))
                await asyncio.sleep(delay)
        self.counters.failed += 1
        log.error(kv("webhook_failed", url=hook.url, alert_id=alert["alert_id"],
                     status=alert["status"], reason=reason))
