"""`edge-relay run` as launchd runs it: a real process, drained by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import pytest
import yaml
from relay_support import TOKEN, wait_for

pytestmark = pytest.mark.asyncio

HANDLE = "+15550001111"
DRAIN_BOUND_S = 10.0


def start_relay(settings: dict, tmp_path) -> subprocess.Popen:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.Popen(
        [sys.executable, "-m", "edge_relay", "run", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


async def test_sigterm_finishes_the_send_under_way_and_exits_0(
    settings, backend, messages, osascript, tmp_path
):
    messages.chat(HANDLE)
    osascript.set("sleep:1.5")
    proc = start_relay(settings, tmp_path)
    try:
        await wait_for(lambda: backend.registrations, timeout_s=15, what="registration")
        backend.queue_command(
            {"id": "c1", "type": "send", "chat_guid": f"any;-;{HANDLE}", "bubbles": ["secret"]}
        )
        await wait_for(lambda: osascript.calls(), timeout_s=5, what="the send to start")
        rss = resident_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() - started < DRAIN_BOUND_S + 5:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    assert took < DRAIN_BOUND_S + 2
    assert backend.results["c1"]["status"] == "delivered"
    assert "send delivered: command c1" in stderr
    assert "drained" in stderr
    assert "secret" not in stderr and TOKEN not in stderr
    assert rss < 50 * 1024, f"resident memory {rss} KiB"


async def test_a_send_cut_off_by_the_bound_is_uncertain_at_next_start(
    settings, backend, messages, osascript, tmp_path
):
    messages.chat(HANDLE)
    osascript.set("sleep:30")
    proc = start_relay(settings, tmp_path)
    try:
        await wait_for(lambda: backend.registrations, timeout_s=15, what="registration")
        backend.queue_command(
            {"id": "c1", "type": "send", "chat_guid": f"any;-;{HANDLE}", "bubbles": ["x"]}
        )
        await wait_for(lambda: osascript.calls(), timeout_s=5, what="the send to start")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DRAIN_BOUND_S + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert "c1" not in backend.results

    osascript.set("send")
    proc = start_relay(settings, tmp_path)
    try:
        await wait_for(lambda: "c1" in backend.results, timeout_s=15, what="the report")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DRAIN_BOUND_S + 5)
        proc.communicate(timeout=5)
    # Messages may have sent it before the stop: reported, never sent a second time.
    assert backend.results["c1"]["status"] == "uncertain"
    assert len(osascript.calls()) == 1


def health(settings: dict) -> dict:
    url = f"http://127.0.0.1:{settings['health']['port']}/health"
    try:
        answer = urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as error:  # 503 while critical: still the report
        answer = error
    return json.loads(answer.read())


async def test_a_stop_without_a_drain_is_counted_at_the_next_start(settings, backend, tmp_path):
    runs = []

    async def run_once(stop: signal.Signals) -> None:
        backend.registrations.clear()
        proc = start_relay(settings, tmp_path)
        try:
            await wait_for(lambda: backend.registrations, timeout_s=15, what="registration")
            runs.append(health(settings)["undrained_stops"])
            proc.send_signal(stop)
            proc.wait(timeout=DRAIN_BOUND_S + 5)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate(timeout=5)
        runs[-1]["stderr"] = stderr

    await run_once(signal.SIGKILL)  # killed: the next start finds it
    await run_once(signal.SIGTERM)
    await run_once(signal.SIGTERM)  # after a drain: nothing new
    first, found, after_drain = runs
    assert (first["total"], first["last_found_at"]) == (0, None)
    assert found["total"] == 1 and found["last_found_at"].endswith("Z")
    assert "stopped without draining" in found["stderr"]
    assert after_drain["total"] == 1 and after_drain["last_found_at"] == found["last_found_at"]
    assert "stopped without draining" not in after_drain["stderr"]


def test_the_wheel_ships_the_messages_script_and_builds_reproducibly(tmp_path):
    relay_dir = os.path.join(os.path.dirname(__file__), "..", "..", "files", "relay")
    hashes = []
    for n in range(2):
        out = tmp_path / f"dist{n}"
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
            cwd=relay_dir,
            check=True,
            capture_output=True,
            timeout=120,
        )
        [wheel] = list(out.iterdir())
        hashes.append(wheel.read_bytes())
        names = zipfile.ZipFile(wheel).namelist()
        assert "edge_relay/send_messages.applescript" in names
    assert hashes[0] == hashes[1]


async def test_a_taken_health_port_stops_the_start_with_one_clear_line(settings, backend, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", settings["health"]["port"]))
    holder.listen()
    try:
        proc = start_relay(settings, tmp_path)
        _, stderr = proc.communicate(timeout=30)
    finally:
        holder.close()
    assert proc.returncode == 3
    assert f"cannot serve /health on 127.0.0.1:{settings['health']['port']}" in stderr
    assert "another process holds the port" in stderr
    assert "Traceback" not in stderr

    # That start took no work, so the next one is not an undrained stop.
    proc = start_relay(settings, tmp_path)
    try:
        await wait_for(lambda: backend.registrations, timeout_s=15, what="registration")
        assert health(settings)["undrained_stops"]["total"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DRAIN_BOUND_S + 5)
    assert proc.returncode == 0
