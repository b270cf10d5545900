"""Webhook notifications: a flow run failed or crashed, a model was promoted, or a scheduled run
retrains (with what changed in the data).

The webhook URL is configuration, never a flow parameter: ``$PHASE2_NOTIFY_WEBHOOK``, else the
Prefect Secret block ``phase2-notify-webhook`` (read when a message is sent, so a running worker
picks up a new URL without a restart; Slack/Teams URLs carry a token, hence a Secret). Messages
are JSON and never carry credentials: every known secret value is masked in the text.

Prefect state hooks (``on_failure``, ``on_crashed``, ``on_completion``) call
:func:`flow_run_hook`; a failing webhook is logged and never fails the flow.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable
from typing import Any, Literal, cast

from pydantic import BaseModel

from phase2.infra.secrets import RedactingFilter, redact

WEBHOOK_ENV = "PHASE2_NOTIFY_WEBHOOK"
WEBHOOK_SECRET_BLOCK = "phase2-notify-webhook"
TIMEOUT_S = 10
# Flow parameters worth showing in a message (paths and names; credentials are never parameters).
_SHOWN_PARAMETERS = ("data", "baseline", "recipe_name", "model_name", "run_name", "skip_if_unchanged")

Event = Literal["failed", "crashed", "promoted", "retraining"]
log = logging.getLogger("phase2.notifications")
log.addFilter(RedactingFilter())  # exception texts can carry the webhook URL's token


class Notification(BaseModel):
    """The JSON body POSTed to the webhook."""

    event: Event
    text: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    deployment_id: str | None = None
    state: str | None = None
    message: str | None = None
    parameters: dict[str, Any] = {}
    model: str | None = None
    ui_url: str | None = None
    changes: dict[str, Any] | None = None  # "retraining": counts of what changed since production's data


def webhook_url() -> str | None:
    """$PHASE2_NOTIFY_WEBHOOK, else the Secret block `phase2-notify-webhook`, else None."""
    if url := os.environ.get(WEBHOOK_ENV):
        return url
    from prefect.blocks.system import Secret

    # Block.load dispatches on the calling context and its type says "maybe a coroutine";
    # _sync=True asks for the synchronous loader, which returns the block itself.
    load_sync = cast("Callable[..., Secret[str]]", Secret.load)
    try:
        return str(load_sync(WEBHOOK_SECRET_BLOCK, _sync=True).get())
    except (ValueError, RuntimeError) as exc:  # block missing, or no API to ask
        log.debug("no webhook configured (%s)", type(exc).__name__)
        return None


def send(notification: Notification, url: str | None = None) -> bool:
    """POST the notification as JSON; False (logged, URL not shown) when it could not be sent."""
    url = url or webhook_url()
    if not url:
        return False
    body = redact(notification.model_dump_json()).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            status: int = response.status
            return 200 <= status < 300
    except OSError as exc:
        log.warning("webhook notification %s not delivered: %s", notification.event, exc)
        return False


def _ui_url(flow_run_id: str) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def flow_run_notification(event: Event, flow_run: Any, state: Any, model: str | None = None) -> Notification:
    """A message about a Prefect flow run (client FlowRun) in `state`."""
    run_id = str(flow_run.id)
    name = getattr(flow_run, "name", None)
    parameters = {k: v for k, v in (getattr(flow_run, "parameters", None) or {}).items() if k in _SHOWN_PARAMETERS}
    what = {"failed": "failed", "crashed": "crashed", "promoted": f"promoted {model} to production"}[event]
    return Notification(
        event=event,
        text=f"phase2 run {name or run_id} {what}",
        flow_run_id=run_id,
        flow_run_name=name,
        deployment_id=str(flow_run.deployment_id) if getattr(flow_run, "deployment_id", None) else None,
        state=state.type.value if state is not None else None,
        message=(state.message or "")[:2000] if state is not None else None,
        parameters=parameters,
        model=model,
        ui_url=_ui_url(run_id),
    )


def retraining_notification(
    run_key: str, flow_run_id: str | None, summary: str, diff: dict[str, Any] | None
) -> Notification:
    """A scheduled run retrains: `summary` says what changed since production's data; `diff` is
    ``phase2 diff``'s JSON (its counts go in the message, not its full lists)."""
    changes = None
    if diff is not None:
        changes = {
            "old": diff["old"],
            "new": diff["new"],
            "images": {kind: len(paths) for kind, paths in diff["images"].items()},
            "labels_changed": len(diff["labels"]["changed"]),
            "new_leaks": len(diff["new_leaks"]),
        }
    return Notification(
        event="retraining",
        text=f"phase2 run {run_key} retrains: {summary}",
        flow_run_id=flow_run_id,
        ui_url=_ui_url(flow_run_id) if flow_run_id else None,
        changes=changes,
    )


def promoted_model(state: Any) -> str | None:
    """The registry ref the flow promoted, from a Completed phase2 state's result."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # the result was not kept: nothing to announce
        log.warning("flow result unreadable (%s); no promotion message", type(exc).__name__)
        return None
    if isinstance(result, dict) and result.get("promoted"):
        return result.get("model")
    return None


def flow_run_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect state hook for on_failure, on_crashed and on_completion."""
    if state.is_completed():
        model = promoted_model(state)
        if model:
            send(flow_run_notification("promoted", flow_run, state, model=model))
        return
    event: Event = "crashed" if state.is_crashed() else "failed"
    send(flow_run_notification(event, flow_run, state))
