#!/usr/bin/python3
"""SMTP sink for the interop test: an aiosmtpd server that saves every transaction.

Usage: sink.py PORT DIR

Listens on 127.0.0.1:PORT with SMTPUTF8 and 8BITMIME offered (aiosmtpd always offers
8BITMIME), accepts every message, and writes for each transaction two files into DIR:
  N.json  the envelope: mail_from, rcpt_tos, mail_options, rcpt_options, smtp_utf8
  N.eml   the message content exactly as received (bytes, dot-unstuffed, CRLF kept)
The .eml file is written first and the .json file is renamed into place last, so a
reader that sees N.json can trust N.eml is complete. Runs until SIGTERM/SIGINT.
"""

import itertools
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class SaveHandler:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.counter)
        base = os.path.join(self.directory, f"{n:06d}")
        content = envelope.original_content or envelope.content
        with open(base + ".eml", "wb") as f:
            f.write(content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "smtp_utf8": bool(envelope.smtp_utf8),
            "peer": str(session.peer),
        }
        tmp = base + ".json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        os.rename(tmp, base + ".json")
        return "250 2.0.0 Message accepted for delivery"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: sink.py PORT DIR")
    port, directory = int(sys.argv[1]), sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    controller = Controller(
        SaveHandler(directory),
        hostname="127.0.0.1",
        port=port,
        enable_SMTPUTF8=True,
        decode_data=False,
        ident="interop-sink",
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"sink listening on 127.0.0.1:{port}, saving to {directory}", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
