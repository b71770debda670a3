"""Notifications: the messages a real HTTP receiver on 127.0.0.1 gets, in Slack's and Teams'
formats, and a hook that is down, slow, failing or refusing never failing the cycle."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from churnlab.cycle.notify import EVENT_KINDS, NotifySettings, notifier, send
from churnlab.errors import ChurnlabError
from churnlab.param_rules import NOTIFY_EVENTS, check_section
from churnlab.secrets import secret_values

VARIABLE = "CHURNLAB_WEBHOOK_URL"
TOKEN_PATH = "/services/T0000/B0000/xoxb-not-a-real-token-42"
EVENT = {
    "kind": "drift_alert",
    "month": "2026-04",
    "summary": "2 important features drifted: plan <monthly> & age",
    "numbers": {"drift score": 0.412345, "drifted features": 2, "realised recall": None},
    "report": "reports/monitoring.html",
}


class Receiver:
    """An incoming webhook on 127.0.0.1: answers each POST with the next of ``statuses``
    (the last one repeats) after ``delay`` seconds, and keeps what it received."""

    def __init__(self, statuses=(200,), delay: float = 0.0):
        self.statuses = list(statuses)
        self.delay = delay
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {"path": self.path, "type": self.headers["Content-Type"], "body": body}
                )
                time.sleep(receiver.delay)
                status = receiver.statuses[min(len(receiver.received), len(receiver.statuses)) - 1]
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"ok" if status == 200 else b"failure")
                except OSError:  # the client gave up waiting: what a slow hook sees
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{TOKEN_PATH}"

    def __enter__(self):
        serve = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        serve.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def messages(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.received]


@pytest.fixture
def settings(params) -> NotifySettings:
    # the shipped params with short pauses; the timeout stays long enough for a loaded
    # machine (the slow-hook test sets its own)
    return dataclasses.replace(NotifySettings.from_params(params), timeout=5, backoff=0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_event_kinds_are_those_the_params_accept():
    assert tuple(EVENT_KINDS) == NOTIFY_EVENTS


def test_a_slack_message_says_what_happened_with_its_numbers_and_report(settings):
    with Receiver() as hook:
        assert send(EVENT, settings, {VARIABLE: hook.url}) is None
    [request] = hook.received
    assert request["path"] == TOKEN_PATH and request["type"] == "application/json"
    message = json.loads(request["body"])
    assert message["text"].startswith("churnlab: Drift alert (2026-04): 2 important features")
    blocks = message["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "churnlab: Drift alert (2026-04)"},
    }
    # Slack reads <, > and & as markup: the summary arrives escaped
    assert blocks[1]["text"]["text"] == (
        "2 important features drifted: plan &lt;monthly&gt; &amp; age"
    )
    assert blocks[2]["text"]["text"].splitlines() == [
        "*drift score*: 0.4123",
        "*drifted features*: 2",
        "*realised recall*: n/a",
    ]
    assert "reports/monitoring.html" in blocks[3]["elements"][0]["text"]


def test_a_teams_message_is_an_adaptive_card_with_a_link_to_the_published_report(settings):
    teams = dataclasses.replace(settings, format="teams", report_url="https://ci.example/churn/")
    with Receiver() as hook:
        assert send({**EVENT, "kind": "promotion"}, teams, {VARIABLE: hook.url}) is None
    [message] = hook.messages()
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    title, summary, facts = card["body"]
    assert title["text"] == "churnlab: New champion promoted (2026-04)"
    assert summary["text"] == EVENT["summary"]  # no markup to escape in a TextBlock
    assert facts["facts"] == [
        {"title": "drift score", "value": "0.4123"},
        {"title": "drifted features", "value": "2"},
        {"title": "realised recall", "value": "n/a"},
    ]
    assert card["actions"] == [
        {
            "type": "Action.OpenUrl",
            "title": "Open the report",
            "url": "https://ci.example/churn/reports/monitoring.html",
        }
    ]


def test_every_event_kind_sends_its_own_title(settings):
    with Receiver() as hook:
        for kind in NOTIFY_EVENTS:
            send({**EVENT, "kind": kind}, settings, {VARIABLE: hook.url})
    titles = [m["blocks"][0]["text"]["text"] for m in hook.messages()]
    assert titles == [f"churnlab: {EVENT_KINDS[k]} (2026-04)" for k in NOTIFY_EVENTS]


def test_no_variable_or_an_event_left_out_sends_nothing(settings):
    quiet = dataclasses.replace(settings, events=("promotion",))
    with Receiver() as hook:
        assert send(EVENT, settings, {}) is None
        assert send(EVENT, quiet, {VARIABLE: hook.url}) is None
        assert notifier({"notify": dataclasses.asdict(quiet)}, {VARIABLE: hook.url})(EVENT) is None
    assert hook.received == []


def test_a_hook_that_is_down_gives_a_warning_without_its_url(settings, capsys):
    url = f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"
    start = time.monotonic()
    warning = send(EVENT, settings, {VARIABLE: url})
    elapsed = time.monotonic() - start
    assert warning.startswith(f"notify: ${VARIABLE}: the Drift alert message of 2026-04 was not")
    assert "after 3 attempt(s): could not connect" in warning
    assert elapsed < settings.longest_wait()
    err = capsys.readouterr().err
    assert err == f"churnlab: warning: {warning}\n"
    for shown in (warning, err):
        assert TOKEN_PATH not in shown and "127.0.0.1" not in shown


def test_a_slow_hook_is_given_up_on_within_the_bound(settings):
    slow = dataclasses.replace(settings, timeout=0.3, attempts=2)
    with Receiver(delay=30.0) as hook:
        start = time.monotonic()
        warning = send(EVENT, slow, {VARIABLE: hook.url})
        elapsed = time.monotonic() - start
    assert "after 2 attempt(s): no answer within 0.3 s" in warning
    assert len(hook.received) == 2
    # 2 x 0.3 s and one pause of 0.05 s; a sender that waited for the hook would take 60 s.
    # The margin is for a machine busy with other tests (1.24 s was seen for 0.65 s).
    assert slow.longest_wait() == pytest.approx(0.65)
    assert slow.longest_wait() <= elapsed < slow.longest_wait() + 2.5


def test_a_failing_hook_is_tried_attempts_times_then_warned_about(settings):
    with Receiver(statuses=(500,)) as hook:
        warning = send(EVENT, settings, {VARIABLE: hook.url})
    assert len(hook.received) == settings.attempts == 3
    assert "after 3 attempt(s): the hook answered 500" in warning
    assert TOKEN_PATH not in warning


def test_a_hook_that_recovers_gets_the_message_on_a_retry(settings):
    with Receiver(statuses=(500, 503, 200)) as hook:
        assert send(EVENT, settings, {VARIABLE: hook.url}) is None
    assert len(hook.received) == 3
    assert hook.messages()[0] == hook.messages()[2]  # the same message each time


def test_a_refused_message_is_not_retried(settings):
    with Receiver(statuses=(404,)) as hook:
        warning = send(EVENT, settings, {VARIABLE: hook.url})
    assert len(hook.received) == 1
    assert "the hook answered 404 (not retried" in warning


def test_an_address_that_is_not_http_is_refused_without_showing_it(settings):
    warning = send(EVENT, settings, {VARIABLE: "ftp://hooks.example/secret-path-123"})
    assert "expected an http(s) webhook URL" in warning
    assert "secret-path-123" not in warning and "hooks.example" not in warning


def test_the_webhook_url_is_masked_like_any_secret(params):
    url = "https://hooks.example.com" + TOKEN_PATH
    assert url in secret_values(params, {VARIABLE: url})
    assert url in secret_values({}, {"SLACK_WEBHOOK_URL": url})  # by its variable's name


def test_a_url_pasted_into_params_is_refused_and_not_repeated(params):
    notify = {**params["notify"], "url_variable": "https://hooks.example.com" + TOKEN_PATH}
    with pytest.raises(ChurnlabError) as caught:
        check_section("params/notify.yaml", "notify", notify)
    message = str(caught.value)
    assert message.startswith("params/notify.yaml: notify.url_variable: expected the name of")
    assert "hooks.example" not in message and TOKEN_PATH not in message


def test_the_cycles_own_events_read_as_messages(settings):
    from churnlab.cycle.run import _event

    verdict = {
        "alerts": {"quality": False, "feature_drift": True, "prediction_drift": True, "any": True}
    }
    events = [
        _event("drift_alert", "2026-04", "the month drifted", verdict=verdict),
        _event("kept_champion", "2026-04", "no rule fired", rule="none"),
    ]
    with Receiver() as hook:
        for event in events:
            assert send(event, settings, {VARIABLE: hook.url}) is None
    drift, kept = hook.messages()
    assert drift["blocks"][0]["text"]["text"] == "churnlab: Drift alert (2026-04)"
    assert drift["blocks"][2]["text"]["text"] == "*alerts*: feature_drift, prediction_drift"
    assert "reports/monitoring.html" in drift["blocks"][3]["elements"][0]["text"]
    assert kept["text"] == "churnlab: Champion kept (2026-04): no rule fired"
    assert kept["blocks"][2]["text"]["text"] == "*rule*: none"


def test_the_cycle_keeps_what_the_notifier_warned_for_the_decision(settings, capsys):
    from churnlab.cycle.run import _event, _send, _sent

    down = notifier(
        {"notify": {**dataclasses.asdict(settings), "attempts": 1}},
        {VARIABLE: f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"},
    )
    record: dict = {}
    _sent(record, _send(down, _event("promotion", "2026-04", "a better model")))
    [warning] = record["notifications"]
    assert "the New champion promoted message of 2026-04 was not delivered" in warning
    assert TOKEN_PATH not in warning

    def broken(event):
        raise RuntimeError("the notifier itself failed")

    _sent(record, _send(broken, _event("retrain", "2026-04", "drift")))
    assert (
        record["notifications"][1] == "notification of retrain failed: the notifier itself failed"
    )
    _sent(record, _send(None, _event("retrain", "2026-04", "drift")))  # no notifier: nothing
    assert len(record["notifications"]) == 2
    assert capsys.readouterr().err.count("churnlab: warning: ") == 2
