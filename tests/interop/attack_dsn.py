#!/usr/bin/python3
"""DSN consent bypass (attacks.sh, check 6): can a marketing sender use the relay's
delivery status notifications to mail someone the lists forbid, or to get a refused
message's content delivered anyway?

Usage: attack_dsn.py PORT NEWS-SOURCE SINK OPS-URL TOKEN

Through the admin API: consent for reader6@example.net on news/weekly, and a complaint
suppression (account news) for complained@news.example. Then two marketing messages from
NEWS-SOURCE (the account "news"), each with RET=FULL, NOTIFY=FAILURE and two recipients:
reader6@example.net (consented) and stranger6@example.net (not): one with the envelope
sender complained@news.example, one with bounce@news.example. Each is queued for the
consented reader, and the stranger is withheld at the end of DATA.

Asserted at the sink, once both copies for the reader and the DSN arrived and the queue is
empty: nothing at all went to complained@news.example; exactly one DSN (null sender) went
to bounce@news.example, naming the withheld recipient with Status 5.7.1, returning the
header section (text/rfc822-headers) and not the body; the stranger got nothing; and
optin_dsn_generated_total{action="failed"} rose by exactly one.
"""

import glob
import json
import os
import sys
import time
import uuid

from attack_common import Client, admin, done, expect, metric

READER = "reader6@example.net"
STRANGER = "stranger6@example.net"
SUPPRESSED = "complained@news.example"
GOOD = "bounce@news.example"



def send(port, source, sender, tag, secret):
    c = Client(port, source)
    c.ehlo()
    c.expect(f"MAIL FROM:<{sender}> RET=FULL ENVID={tag}", 250)
    c.expect(f"RCPT TO:<{READER}> NOTIFY=FAILURE", 250)
    c.expect(f"RCPT TO:<{STRANGER}> NOTIFY=FAILURE", 250)
    c.expect("DATA", 354)
    c.send(f"From: News <hello@news.example>\r\nTo: <{READER}>, <{STRANGER}>\r\n"
           f"Subject: {tag}\r\n\r\n{secret}\r\n.\r\n".encode())
    r = c.reply()
    c.cmd("QUIT")
    c.close()
    return r


def sink_messages(sink):
    out = []
    for meta in sorted(glob.glob(os.path.join(sink, "*.json"))):
        out.append((json.load(open(meta)), open(meta[:-5] + ".eml", "rb").read()))
    return out


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    port, (source, sink, ops, token) = int(sys.argv[1]), sys.argv[2:6]
    run = uuid.uuid4().hex[:8]
    s, a = admin(ops, token, "POST", "/admin/consent/grant",
                 {"address": READER, "account": "news", "list": "weekly"})
    expect(s == 200, f"consent for {READER}: {a}")
    s, a = admin(ops, token, "POST", "/admin/suppressions",
                 {"address": SUPPRESSED, "account": "news", "reason": "complaint"})
    expect(s == 200, f"complaint suppression for {SUPPRESSED}: {a}")
    dsn_before = metric(ops + "/metrics", "optin_dsn_generated_total", "action=failed")
    tags = {}
    for sender in (SUPPRESSED, GOOD):
        tag = f"dsn-{sender.split('@')[0]}-{run}"
        secret = f"BODY-SECRET-{tag}"
        tags[sender] = (tag, secret)
        r = send(port, source, sender, tag, secret)
        expect(r.startswith("250 2.0.0 OK queued"), f"from {sender}: {r}")

    def arrived():
        msgs = sink_messages(sink)
        to_reader = [m for m, e in msgs if m["rcpt_tos"] == [READER]
                     and any(t.encode() in e for t, _ in tags.values())]
        dsns = [(m, e) for m, e in msgs
                if m["mail_from"] in ("", "<>") and tags[GOOD][0].encode() in e]
        return msgs, to_reader, dsns

    deadline = time.monotonic() + 60
    while True:
        msgs, to_reader, dsns = arrived()
        _, q = admin(ops, token, "GET", "/admin/queue")
        if (len(to_reader) >= 2 and dsns and q["messages"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(1)  # a late second DSN would arrive now
    msgs, to_reader, dsns = arrived()
    dsn_after = metric(ops + "/metrics", "optin_dsn_generated_total", "action=failed")
    expect(len(to_reader) == 2, f"both messages delivered to {READER}: {len(to_reader)}")
    to_suppressed = [m for m, _ in msgs if SUPPRESSED in m["rcpt_tos"]]
    expect(not to_suppressed, f"nothing sent to the complaint-suppressed sender: {to_suppressed}")
    to_stranger = [m for m, _ in msgs if STRANGER in m["rcpt_tos"]]
    expect(not to_stranger, f"nothing sent to {STRANGER}: {to_stranger}")
    expect(len(dsns) == 1, f"DSNs to {GOOD} about {tags[GOOD][0]}: {len(dsns)}")
    if dsns:
        meta, dsn = dsns[0]
        text = dsn.decode("utf-8", "replace")
        expect(meta["rcpt_tos"] == [GOOD], f"the DSN's recipients: {meta['rcpt_tos']}")
        expect(f"Final-Recipient: rfc822; {STRANGER}" in text and "Status: 5.7.1" in text,
               "the DSN names the withheld recipient, Status 5.7.1")
        expect("text/rfc822-headers" in text and f"Subject: {tags[GOOD][0]}" in text,
               "the DSN returns the header section (text/rfc822-headers)")
        expect(tags[GOOD][1] not in text and "message/rfc822" not in text,
               "the DSN does not return the body, despite RET=FULL")
        print(f"the DSN ({len(dsn)} octets), its MIME parts: "
              + ", ".join(l.split(":", 1)[1].strip() for l in text.splitlines()
                          if l.lower().startswith("content-type:")))
    leaked = [m["rcpt_tos"] for m, e in msgs
              if any(sec.encode() in e for _, sec in tags.values()) and m["rcpt_tos"] != [READER]]
    expect(not leaked, f"the bodies reached nobody but {READER}: {leaked}")
    expect(dsn_after - dsn_before == 1,
           f"optin_dsn_generated_total{{action=\"failed\"}}: {dsn_before:g} -> {dsn_after:g}")
    done()


if __name__ == "__main__":
    main()
