"""Messages to every shard of the lab, one every INTERVAL seconds, until STOP_FILE appears.

    python traffic.py RECORD STOP_FILE [--interval 0.5] [--limit-s 900]

Each message goes to the shards in turn, from a handle of its own per shard, with a text that
is unique in the run; RECORD gets one JSON line per message (phone, handle, text, guid) so a
check can count each of them in the backend and in the shard's chat.db afterwards.
"""

import argparse
import json
import time
from pathlib import Path

from edge_lab import hoststate, humans
from edge_lab.layout import known_hosts


def phones():
    found = []
    for host in known_hosts():
        found += sorted(hoststate.load(host.dir)["imessage"].values())
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path)
    parser.add_argument("stop_file", type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--limit-s", type=float, default=900)
    args = parser.parse_args()

    numbers = phones()
    deadline = time.monotonic() + args.limit_s
    count = 0
    with args.record.open("a") as record:
        while not args.stop_file.exists() and time.monotonic() < deadline:
            phone = numbers[count % len(numbers)]
            handle = "+1555700" + phone[-4:]
            text = f"rolling check {count}"
            guid = humans.phone_send(phone, handle, text)
            record.write(json.dumps(dict(phone=phone, handle=handle, text=text, guid=guid)) + "\n")
            record.flush()
            count += 1
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
