"""/health's checks and bounds, and `edge-relay doctor`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest
import yaml
from edge_relay.config import HealthConfig
from edge_relay.health import QueueView, judge_queue
from relay_support import RunningRelay, free_port

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    "drops, arrivals, expected",
    [
        (1, 10, "warning"),  # 9% of a tiny sample: judged by the count only
        (0, 500, "healthy"),
        (1, 500, "warning"),  # 0.2%
        (5, 400, "critical"),  # 1.2%
    ],
)
def test_the_drop_rate_needs_a_minimum_sample(drops, arrivals, expected):
    assert judge_queue(QueueView(0, None, drops, arrivals), HealthConfig(), 0.0) == expected


async def test_no_gui_session_is_critical_and_says_what_to_do(settings, backend, tmp_path):
    url = f"http://127.0.0.1:{settings['health']['port']}"
    (tmp_path / "launchctl.exit").write_text("113")
    async with RunningRelay(settings), aiohttp.ClientSession() as session:
        async with session.get(url + "/health") as response:
            report = await response.json()
            status = response.status
        async with session.get(url + "/metrics") as response:
            metrics = await response.text()
    assert status == 503 and report["status"] == "critical"
    assert report["checks"]["gui_session"]["ok"] is False
    assert "log the user in at the GUI" in report["checks"]["gui_session"]["detail"]
    assert report["checks"]["inbound"]["detail"] == "no incoming message yet"
    assert "edge_relay_send_queue_uncertain_total 0.0" in metrics
    assert "edge_relay_undrained_stops_total 0.0" in metrics


async def test_a_quiet_inbound_warns_past_its_bound(settings, backend, messages):
    settings["health"]["inbound_quiet_warning_s"] = 60
    messages.incoming("+15550001111", text="long ago", date=1)
    async with RunningRelay(settings) as relay:
        report = relay.report()
    assert report["checks"]["inbound"]["warning"] is True
    assert report["status"] == "warning"


async def test_health_names_the_relay_process_itself(settings, backend, messages, tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    url = f"http://127.0.0.1:{settings['health']['port']}/health"
    with open(tmp_path / "relay.log", "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_relay", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    report = None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(url) as response:
                        report = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
    assert report is not None, (tmp_path / "relay.log").read_text()[-2000:]
    # The process launchd started, as a deploy's health gate compares them.
    assert report["pid"] == proc.pid != os.getpid()
    assert proc.returncode == 0


def doctor(settings, tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.run(
        [sys.executable, "-m", "edge_relay", "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_doctor_passes_on_a_good_shard(settings, backend, messages, tmp_path):
    result = await _in_thread(doctor, settings, tmp_path)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("ok") for line in lines)
    assert "parked events: none" in lines[-1]


async def test_doctor_names_each_fault_and_what_to_fix(settings, backend, messages, tmp_path):
    (tmp_path / "launchctl.exit").write_text("113")
    settings["backend"]["url"] = f"http://127.0.0.1:{free_port()}"
    messages.path.parent.chmod(0o000)
    try:
        result = await _in_thread(doctor, settings, tmp_path)
    finally:
        messages.path.parent.chmod(0o755)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    names = [line.split(":")[0].split(None, 1)[1] for line in failed]
    assert "GUI session" in names and "backend" in names
    assert "check backend.url" in result.stdout
    assert "TOKEN" not in result.stdout and "s3cr3t" not in result.stdout


async def test_doctor_passes_on_what_the_running_relay_found(settings, backend, tmp_path):
    # Only the relay sees some faults (Automation refused at a send, the GUI session gone):
    # doctor reports the running relay's own judgement beside its checks.
    async with RunningRelay(settings):
        (tmp_path / "launchctl.exit").write_text("113")
        await asyncio.sleep(0)
        result = await _in_thread(doctor, settings, tmp_path)
    assert result.returncode == 1
    port = settings["health"]["port"]
    [line] = [line for line in result.stdout.splitlines() if "running relay" in line]
    assert line.startswith(f"FAIL  running relay: this shard's relay on 127.0.0.1:{port} says")
    assert "gui_session: " in line and "log the user in at the GUI" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the token file to another user needs root")
async def test_doctor_run_by_another_user_than_the_shards_says_whom_to_run_it_as(
    settings, backend, messages, tmp_path
):
    os.chown(settings["backend"]["token_file"], 65534, -1)
    result = await _in_thread(doctor, settings, tmp_path)
    assert result.returncode == 1
    [line] = [line for line in result.stdout.splitlines() if "GUI session" in line]
    assert line.startswith("FAIL  GUI session: doctor runs as uid 0, not as the shard's user ")
    assert "edge-relay doctor --config" in line


async def test_doctor_lists_config_problems_and_stops(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("shard_id: nope\n")
    result = subprocess.run(
        [sys.executable, "-m", "edge_relay", "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "FAIL  config: persona is required" in result.stdout


async def _in_thread(function, *args):
    # The backend double answers in this event loop: doctor must not block it.
    return await asyncio.to_thread(function, *args)
