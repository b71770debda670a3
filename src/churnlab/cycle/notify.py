"""Telling people what the cycle did: one short message per event to an incoming webhook.

An event is the mapping ``churnlab.cycle.run`` hands to the notifier::

    {"event": "drift_alert", "month": "2026-04",
     "summary": "2 important features drifted: ...",
     "alerts": {"feature_drift": true, "performance": false, ...},
     "rule": "feature_drift", "report": "reports/monitoring.html"}

``event`` (or ``kind``) is one of :data:`EVENT_KINDS`; ``summary`` says what happened in a
sentence; the other fields are the key figures (``numbers``, when given, holds them instead;
a mapping of flags is shown as the names that are true); ``report`` is the page to open (a
path in the project, turned into a link with ``notify.report_url``). Slack's and Microsoft
Teams' incoming-webhook formats are both built from it (``notify.format``).

The webhook's URL is a secret (whoever has it can post to the channel): it is read from the
environment variable that ``notify.url_variable`` names, never from params, and it never
appears in a message, a warning or anything churnlab writes. A hook that is down, slow or
failing never fails or holds up the cycle: each attempt has a timeout, the attempts are
bounded, and what is left is a warning on stderr that the notifier also returns, so the
cycle records it in its decision log.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from churnlab.config import get_key

NOTIFY_FILE = "params/notify.yaml"
# how each event the cycle tells people about is titled
EVENT_KINDS = {
    "drift_alert": "Drift alert",
    "quality_failure": "Data-quality failure",
    "retrain": "Model retrained",
    "promotion": "New champion promoted",
    "kept_champion": "Champion kept",
}  # the kinds themselves: param_rules.NOTIFY_EVENTS (tests/test_notify.py: the same)
# Answers worth another attempt: the hook is overloaded or failing for now. Any other 4xx
# (a revoked URL, a payload the service refuses) will answer the same again.
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
MAX_BODY = 64_000  # read of an answer: enough for any error text, never a flood


@dataclass(frozen=True)
class NotifySettings:
    """``params/notify.yaml``: where and how messages go."""

    url_variable: str
    format: str
    timeout: float
    attempts: int
    backoff: float
    report_url: str | None
    events: tuple[str, ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> NotifySettings:
        section = get_key(dict(params), "notify", NOTIFY_FILE)
        return cls(
            url_variable=section["url_variable"],
            format=section["format"],
            timeout=float(section["timeout"]),
            attempts=int(section["attempts"]),
            backoff=float(section["backoff"]),
            report_url=section["report_url"],
            events=tuple(section["events"]),
        )

    def longest_wait(self) -> float:
        """The most one event can take: every attempt timing out, with the pauses between."""
        pauses = sum(self.backoff * 2**i for i in range(self.attempts - 1))
        return self.attempts * self.timeout + pauses


def _figure(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, Mapping):
        if all(isinstance(v, bool) for v in value.values()):  # flags: the ones raised
            return ", ".join(str(k) for k, v in value.items() if v and k != "any") or "none"
        return ", ".join(f"{k} {_figure(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_figure(v) for v in value) or "none"
    return str(value)


# the fields of an event that are not figures
_FRAME = frozenset({"event", "kind", "month", "summary", "report", "numbers"})


def event_kind(event: Mapping[str, Any]) -> str:
    return str(event.get("event") or event.get("kind") or "")


def report_link(report: str | None, report_url: str | None) -> str | None:
    """The address of a report page: under ``report_url`` when reports are published there,
    else the page's path in the project."""
    if not report:
        return None
    if not report_url:
        return report
    return report_url.rstrip("/") + "/" + urllib.parse.quote(report.lstrip("/"))


def describe(event: Mapping[str, Any], report_url: str | None = None) -> dict[str, Any]:
    """What a message says, in either format: title, sentence, figures and link."""
    kind = event_kind(event) or "event"
    month = event.get("month")
    title = EVENT_KINDS.get(kind, kind.replace("_", " ").capitalize())
    numbers = event.get("numbers")
    if numbers is None:
        numbers = {k: v for k, v in event.items() if k not in _FRAME}
    return {
        "title": f"churnlab: {title}" + (f" ({month})" if month else ""),
        "summary": str(event.get("summary") or title),
        "facts": [(str(k).replace("_", " "), _figure(v)) for k, v in dict(numbers).items()],
        "link": report_link(event.get("report"), report_url),
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads &, < and > as markup (links, mentions): they are sent escaped
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (notifications, old clients) and blocks."""
    facts = "\n".join(f"*{_slack_escape(k)}*: {_slack_escape(v)}" for k, v in message["facts"])
    link = message["link"]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message["title"][:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message["summary"])}},
    ]
    if facts:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": facts}})
    if link:
        shown = (
            f"<{link}|Open the report>"
            if link.startswith(("http://", "https://"))
            else f"Report: `{_slack_escape(link)}`"
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": shown}]})
    text = f"{message['title']}: {message['summary']}"
    return {"text": _slack_escape(text), "blocks": blocks}


def teams_payload(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Microsoft Teams incoming-webhook body (Workflows): one Adaptive Card."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": message["title"],
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {"type": "TextBlock", "text": message["summary"], "wrap": True},
    ]
    if message["facts"]:
        facts = [{"title": k, "value": v} for k, v in message["facts"]]
        body.append({"type": "FactSet", "facts": facts})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    link = message["link"]
    if link and link.startswith(("http://", "https://")):
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the report", "url": link}]
    elif link:
        body.append({"type": "TextBlock", "text": f"Report: {link}", "wrap": True})
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def payload(event: Mapping[str, Any], settings: NotifySettings) -> dict[str, Any]:
    """The JSON body for one event in the configured format."""
    message = describe(event, settings.report_url)
    return slack_payload(message) if settings.format == "slack" else teams_payload(message)


def _attempt(url: str, body: bytes, timeout: float, outcome: list) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (scheme checked)
            answer.read(MAX_BODY)
            outcome.append(("ok", answer.status))
    except urllib.error.HTTPError as exc:
        outcome.append(("status", exc.code))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        outcome.append(("error", str(reason)))


def post(
    url: str,
    body: bytes,
    settings: NotifySettings,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str, int]:
    """POST ``body`` with bounded attempts, each held to ``settings.timeout``.

    Each attempt runs in a daemon thread that the caller waits for at most the timeout, so a
    hook that accepts the connection and then trickles its answer cannot hold the cycle up
    either (a socket timeout bounds each read, not the whole answer); the thread is left to
    end on its own.

    Returns:
        ``(delivered, what the last attempt found, attempts made)``; the text never holds
        the URL.
    """
    last = ""
    for number in range(1, settings.attempts + 1):
        outcome: list = []
        worker = threading.Thread(
            target=_attempt, args=(url, body, settings.timeout, outcome), daemon=True
        )
        worker.start()
        worker.join(settings.timeout + 0.05)
        if not outcome:
            last = f"no answer within {settings.timeout:g} s"
        else:
            kind, value = outcome[0]
            if kind == "ok":
                return True, f"answered {value}", number
            if kind == "status":
                last = f"the hook answered {value}"
                if value not in RETRY_STATUSES:
                    return False, last + " (not retried: the URL or the message is refused)", number
            else:
                timed_out = "timed out" in value
                last = (
                    f"no answer within {settings.timeout:g} s"
                    if timed_out
                    else f"could not connect ({value})"
                )
        if number < settings.attempts:
            sleep(settings.backoff * 2 ** (number - 1))
    return False, last, settings.attempts


def _masked(text: str, url: str) -> str:
    # the URL, and its path alone (Slack's and Teams' tokens live in the path), never shown
    path = urllib.parse.urlsplit(url).path
    for secret in (url, path if len(path) > 1 else ""):
        if secret:
            text = text.replace(secret, "***")
    return text


def send(
    event: Mapping[str, Any],
    settings: NotifySettings,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Send one event's message. Never raises for the hook's sake.

    Returns:
        None when the message was delivered or none was due (an event kind not in
        ``notify.events``, or the URL variable unset: notifications off); else the warning,
        also printed on stderr, for the cycle's decision log.
    """
    environ = os.environ if environ is None else environ
    kind = event_kind(event)
    if kind not in settings.events:
        return None
    url = environ.get(settings.url_variable, "").strip()
    if not url:
        return None
    what = f"the {EVENT_KINDS.get(kind, kind)} message" + (
        f" of {event['month']}" if event.get("month") else ""
    )
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        warning = (
            f"notify: ${settings.url_variable}: expected an http(s) webhook URL, found another "
            f"kind of address; {what} was not sent (the cycle goes on): set it to the hook's URL"
        )
    else:
        body = json.dumps(payload(event, settings)).encode()
        delivered, found, attempts = post(url, body, settings, sleep)
        if delivered:
            return None
        warning = _masked(
            f"notify: ${settings.url_variable}: {what} was not delivered after {attempts} "
            f"attempt(s): {found}; the cycle goes on: check the hook (notify.timeout, "
            f"notify.attempts in {NOTIFY_FILE})",
            url,
        )
    print(f"churnlab: warning: {warning}", file=sys.stderr)
    return warning


def notifier(
    params: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Callable[[Mapping[str, Any]], str | None]:
    """The callable the cycle is given: an event in, None or a warning out."""
    settings = NotifySettings.from_params(params)
    return lambda event: send(event, settings, environ)
