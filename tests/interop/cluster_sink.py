#!/usr/bin/python3
"""A measuring SMTP sink for the cluster test (Python's standard library only).

Usage: cluster_sink.py PORT LOG [DELAY]

Listens on 127.0.0.1:PORT, accepts every transaction and appends one line per message to
LOG: `<unix time> <connections open> <Subject>` (the subject names the node and the
message); a message with a List-Unsubscribe header (marketing) is also kept whole as
LOG.<subject>.eml (spaces as dashes), for that header. DELAY seconds (default 0) pass before the reply to the end of DATA, so that
connections overlap and a connection cap is put to the test (the second column says how
many were open as each message ended). A recipient whose local part starts with `defer`
is deferred (451 at RCPT), so mail to it stays queued at the relay. Runs until SIGTERM.
"""

import asyncio
import signal
import sys
import time

OPEN = 0


async def session(reader, writer, log, delay):
    global OPEN
    OPEN += 1

    async def say(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    try:
        await say("220 sink.test ESMTP")
        while True:
            line = await asyncio.wait_for(reader.readline(), 60)
            if not line:
                break
            verb = line.decode(errors="replace").strip().upper()
            if verb.startswith("EHLO"):
                await say("250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME")
            elif verb.startswith("HELO"):
                await say("250 sink.test")
            elif verb.startswith("DATA"):
                await say("354 go on")
                subject = "-"
                content = []
                while True:
                    data = await asyncio.wait_for(reader.readline(), 60)
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    content.append(data)
                    if subject == "-" and data.lower().startswith(b"subject:"):
                        subject = data[8:].decode(errors="replace").strip()
                if any(line.lower().startswith(b"list-unsubscribe:") for line in content):
                    with open(f"{log}.{subject.replace(' ', '-')}.eml", "wb") as f:
                        f.write(b"".join(content))
                if delay:
                    await asyncio.sleep(delay)
                with open(log, "a") as f:
                    f.write(f"{time.time():.3f} {OPEN} {subject}\n")
                await say("250 2.0.0 ok")
            elif verb.startswith("RCPT") and "<DEFER" in verb:
                await say("451 4.2.0 try again later")
            elif verb.startswith("QUIT"):
                await say("221 bye")
                break
            else:
                # MAIL, RCPT, RSET, NOOP
                await say("250 ok")
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        OPEN -= 1
        writer.close()


async def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: cluster_sink.py PORT LOG [DELAY]")
    port, log = int(sys.argv[1]), sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
    open(log, "a").close()
    server = await asyncio.start_server(
        lambda r, w: session(r, w, log, delay), "127.0.0.1", port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
