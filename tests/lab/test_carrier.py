"""The lab's carrier: canary answers, delivery between lab phones, and no repeat across restarts."""

import json
import signal
import subprocess
import sys
import time

import pytest
from edge_lab import carrier, hoststate, messages

A_PHONE = "+15551230001"
B_PHONE = "+15551230002"


def wait_until(predicate, timeout=8.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Lab:
    def __init__(self, lab_dir):
        self.dir = lab_dir
        self.a = self._phone("mini-01", "edge_a", A_PHONE)
        self.b = self._phone("mini-02", "edge_b", B_PHONE)
        self.process = None
        self.log = lab_dir / "carrier.log"

    def _phone(self, host, short_name, phone):
        host_dir = self.dir / "hosts" / host
        hoststate.update(host_dir, lambda s: s["imessage"].update({short_name: phone}))
        chat_db = host_dir / "Users" / short_name / "Library/Messages/chat.db"
        return messages.create_chat_db(chat_db, 0, 0)

    def start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_lab.carrier", "--lab-dir", str(self.dir)],
                stderr=log,
            )

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return None


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.stop()


def send(chat_db, to, text, outcome="sent"):
    guid = messages.add_outgoing(
        chat_db, target=to, mode="handle", text=text, account_phone=A_PHONE
    )
    if outcome == "sent":
        messages.mark_sent(chat_db, guid)
    elif outcome == "failed":
        messages.mark_sent(chat_db, guid, error=messages.SEND_FAILED_ERROR)
    return guid


def texts(chat_db):
    return [(r["handle"], r["text"]) for r in messages.incoming_after(chat_db, 0)]


def test_the_canary_answers_after_about_100_ms(lab):
    lab.start()
    sent_at = time.monotonic()
    send(lab.a, carrier.CANARY_HANDLE, "canary 7f3a")

    wait_until(lambda: texts(lab.a))
    elapsed = time.monotonic() - sent_at

    assert texts(lab.a) == [(carrier.CANARY_HANDLE, "ack canary 7f3a")]
    assert 0.1 <= elapsed < 3
    answer = messages.incoming_after(lab.a, 0)[0]
    assert answer["chat_guid"] == f"any;-;{carrier.CANARY_HANDLE}"
    assert answer["account"] == f"p:{A_PHONE}"


def test_messages_reach_the_lab_phone_signed_in_with_the_handle(lab):
    lab.start()
    send(lab.a, B_PHONE, "not yet", outcome=None)  # Messages has not finished sending
    time.sleep(0.4)
    assert texts(lab.b) == []

    send(lab.a, B_PHONE, "never", outcome="failed")
    first = messages.outgoing_after(lab.a, 0)[0]["guid"]
    messages.mark_sent(lab.a, first)
    send(lab.a, B_PHONE, "hello B")

    wait_until(lambda: len(texts(lab.b)) == 2)
    time.sleep(0.3)
    assert texts(lab.b) == [(A_PHONE, "not yet"), (A_PHONE, "hello B")]
    log = lab.log.read_text()
    assert log.count("delivered ") == 2
    assert "hello B" not in log and "not yet" not in log


def test_a_restart_neither_repeats_nor_skips(lab):
    lab.start()
    send(lab.a, carrier.CANARY_HANDLE, "one")
    send(lab.a, B_PHONE, "to b")
    wait_until(lambda: len(texts(lab.a)) == 1 and len(texts(lab.b)) == 1)
    assert lab.stop() == 0

    send(lab.a, carrier.CANARY_HANDLE, "two")  # sent while the carrier is down
    lab.start()

    wait_until(lambda: len(texts(lab.a)) == 2)
    time.sleep(0.5)
    assert texts(lab.a) == [
        (carrier.CANARY_HANDLE, "ack one"),
        (carrier.CANARY_HANDLE, "ack two"),
    ]
    assert texts(lab.b) == [(A_PHONE, "to b")]
    positions = json.loads((lab.dir / "carrier.json").read_text())
    assert positions == {"hosts/mini-01/Users/edge_a/Library/Messages/chat.db": 4}


def test_a_lab_dir_without_hosts_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge_lab.carrier", "--lab-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and "run edge-lab up first" in result.stderr


def test_an_unchanged_database_is_not_opened_every_tick(lab, monkeypatch):
    # Each scan opens the database, and a root connection makes SQLite chown its WAL: every
    # relay watching the folder would hear of it ten times a second.
    scans = []
    monkeypatch.setattr(
        messages, "outgoing_after", lambda chat_db, rowid: scans.append(chat_db) or []
    )
    network = carrier.Carrier(lab.dir)
    for _ in range(20):  # two seconds of ticks
        network.tick()
        time.sleep(carrier.TICK_S)
    per_db = len(scans) / 2
    assert per_db <= 2 / carrier.RESCAN_S + 1, scans

    scans.clear()
    messages.add_incoming(lab.a, sender=B_PHONE, text="a change", account_phone=A_PHONE)
    network.tick()
    assert lab.a in scans
