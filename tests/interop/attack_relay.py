#!/usr/bin/python3
"""Open-relay tricks by hand (attacks.sh, check 7).

Usage: attack_relay.py PORT TLS-PORT PREFIX OWN-DOMAIN FEEDBACK SINK

From PREFIX.N (clients no account knows; each probe from an address of its own, so that
the per-client cap of reports and postmaster mail is not reached), on the plain listener
(without and with STARTTLS) and on the implicit-TLS listener: one MAIL
FROM:<attacker@evil.example> and one RCPT per recipient of the list in tricks(), each on
its own connection (a session ends after max_errors refusals).
Every one must be refused (4xx or 5xx) except the relay's own feedback address and
<postmaster> and postmaster@OWN-DOMAIN (RFC 5321 4.5.1), in any letter case. Then a
message to <postmaster> with three refused recipients is sent: it reaches the sink (SINK)
for postmaster@OWN-DOMAIN only, and no message there is for an outside recipient.
"""

import glob
import json
import os
import sys
import time

from attack_common import Client, Closed

EXT = "relay-victim.example"  # the outside domain of every trick


def tricks(own, ext=EXT):
    return [
        f"victim@{ext}",
        f"VICTIM@{ext.upper()}",
        f"victim@{ext}.",
        f"victim%{ext}@{own}",
        f"victim%{ext}@[127.0.0.1]",
        f"victim%{ext}",
        f"@{own}:victim@{ext}",
        f"@{own},@[127.0.0.1]:victim@{ext}",
        f"@[127.0.0.1]:victim@{ext}",
        f"\"victim@{ext}\"",
        f"\"victim@{ext}\"@{own}",
        f"\"victim%{ext}\"@{own}",
        f"\"victim@{ext}\"@[127.0.0.1]",
        f"victim@{ext}@{own}",
        f"victim@{ext}@[127.0.0.1]",
        f"{ext}!victim",
        f"{ext}!victim@{own}",
        f"{ext}!victim@[127.0.0.1]",
        "victim@[127.0.0.1]",
        "victim@[IPv6:::1]",
        f"postmaster@{ext}",
        f"abuse@{ext}",
        f"postmaster@{own}.{ext}",
        f"unsubscribe+forged@{own}",
        f"unsubscribe@{own}",
        f"fbl+x@{own}",
        f"fbl@{own}.{ext}",
        f"fbl@{ext}",
        "root",
        "victim",
    ]


def probe(port, source, listener, rcpt):
    c = Client(port, source, implicit_tls=listener == "implicit TLS")
    try:
        c.ehlo("evil.example")
        if listener == "STARTTLS":
            c.starttls()
            c.ehlo("evil.example")
        mail = c.cmd("MAIL FROM:<attacker@evil.example>")
        if not mail.startswith("250"):
            return f"MAIL: {mail}"
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        c.cmd("QUIT")
        return reply
    finally:
        c.close()


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    port, tls_port, prefix, own, feedback, sink = (int(sys.argv[1]), int(sys.argv[2]),
                                                   sys.argv[3], sys.argv[4], sys.argv[5],
                                                   sys.argv[6])
    allowed = {feedback.lower(), "postmaster", f"postmaster@{own}".lower()}
    failures = []
    recipients = tricks(own) + [feedback, feedback.upper(), "postmaster", "Postmaster",
                                f"postmaster@{own}", f"POSTMASTER@{own.upper()}"]
    for n, listener in enumerate(("plain", "STARTTLS", "implicit TLS")):
        accepted, refused = [], 0
        for i, rcpt in enumerate(recipients):
            source = f"{prefix}.{n * 60 + i + 1}"
            try:
                reply = probe(tls_port if listener == "implicit TLS" else port, source,
                              listener, rcpt)
            except (Closed, OSError, AssertionError) as e:
                reply = f"error: {e}"
            took = reply.startswith("250")
            if took:
                accepted.append(rcpt)
            else:
                refused += 1
            if took != (rcpt.lower() in allowed) or reply.startswith("error"):
                failures.append(f"{listener}: RCPT TO:<{rcpt}> answered {reply}")
            print(f"{listener:12} RCPT TO:<{rcpt}>: {reply.splitlines()[0]}")
        print(f"{listener}: {refused} refused, accepted: {accepted}")
    # What a stranger may send goes where it should and nowhere else.
    try:
        c = Client(port, f"{prefix}.250")
        c.ehlo("evil.example")
        c.expect("MAIL FROM:<attacker@evil.example>", 250)
        c.expect("RCPT TO:<postmaster>", 250)
        for rcpt in tricks(own)[:3]:
            c.cmd(f"RCPT TO:<{rcpt}>")
        c.expect("DATA", 354)
        c.send(b"From: <attacker@evil.example>\r\nSubject: open relay probe\r\n\r\nhello\r\n.\r\n")
        print(f"a message to <postmaster> (and three refused recipients): {c.reply()}")
        c.close()
    except (Closed, OSError, AssertionError) as e:
        failures.append(f"a message to <postmaster>: {e}")
    # The postmaster's copy arrives (the configured postmaster: postmaster@OWN-DOMAIN),
    # which also shows that delivery ran: nothing else came out of it.
    postmaster, leaked = [], []
    deadline = time.monotonic() + 30
    while not postmaster and time.monotonic() < deadline:
        time.sleep(0.5)
        postmaster, leaked = [], []
        for meta in glob.glob(os.path.join(sink, "*.json")):
            m = json.load(open(meta))
            if any(EXT in r.lower() or "evil.example" in r.lower() for r in m["rcpt_tos"]):
                leaked.append(m)
            if b"Subject: open relay probe" in open(meta[:-5] + ".eml", "rb").read():
                postmaster.append(m["rcpt_tos"])
    print(f"the message to <postmaster> reached the sink for: {postmaster}")
    if postmaster != [[f"postmaster@{own}"]]:
        failures.append(f"the message to <postmaster> went to {postmaster}")
    if leaked:
        failures.append(f"relayed to the sink: {leaked}")
    print(f"messages at the sink for an outside recipient: {len(leaked)}")
    for f in failures:
        print("FAILURE: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
