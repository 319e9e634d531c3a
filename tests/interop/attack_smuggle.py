#!/usr/bin/python3
"""SMTP smuggling matrix against a running relay (attacks.sh, check 1).

Usage: attack_smuggle.py PORT SOURCE SINK-DIR TIMEOUT

From SOURCE (a loopback address of an account's network) to the relay's plain listener on
127.0.0.1:PORT. Each case is one connection: a first message whose content holds a false
end of data -- every combination of CR, LF, CRLF, NUL (and CRLF NUL / NUL CRLF) before
and after the dot, except the true <CR><LF>.<CR><LF> -- followed by a complete second
transaction (MAIL, RCPT, DATA, a message with its own true end). Sent with DATA, with one
BDAT LAST chunk, and with two BDAT chunks split right before the dot. Then NOOP and a
legitimate third transaction on the same connection.

Asserted per case: the first message gets exactly one reply, a 5xx (after a split BDAT's
first chunk, its "250 ... octets received"); the next reply is NOOP's 250 (nothing of the
smuggled transaction was answered as commands); the third transaction is queued. At the
sink (SINK-DIR, written by sink.py): once every third message arrived (TIMEOUT seconds),
no message carries a smuggled or a first subject.

Controls (their outcome is legitimate, and shows the sink would see a smuggled message):
  - DATA with the true end: two separate messages arrive (pipelining, not smuggling);
  - DATA with the false end dot-stuffed (<CR><LF>..<CR><LF>), BDAT with <CR><LF>.<CR><LF>
    inside its content (one chunk, and split before the dot): accepted, and exactly one
    message arrives, with the second transaction's text inside it -- the relay dot-stuffs
    what it relays, so it never smuggles to the next hop either.
Prints one line per case and the totals; exits 1 on any failure.
"""

import glob
import json
import os
import sys
import time
import uuid

from attack_common import Client, Closed

BEFORE = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "NUL": b"\0", "CRLF-NUL": b"\r\n\0"}
AFTER = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "NUL": b"\0", "NUL-CRLF": b"\0\r\n"}
SENDER = "app@attacker.test"
RCPT = "victim@victim.example"


def smuggled(tag):
    return (
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
        f"Subject: smuggled-{tag}\r\n\r\nsmuggled message\r\n.\r\n"
    ).encode()


def first_part(tag):
    return f"From: <{SENDER}>\r\nSubject: first-{tag}\r\n\r\nfirst message".encode()


def envelope(c):
    c.expect(f"MAIL FROM:<{SENDER}>", 250)
    c.expect(f"RCPT TO:<{RCPT}>", 250)


def send_data(c, head, tail):
    """DATA with content head + tail (tail includes the client's own true end)."""
    envelope(c)
    c.expect("DATA", 354)
    c.send(head + tail)
    return [c.reply()]


def send_bdat(c, content, split_at=None):
    envelope(c)
    replies = []
    if split_at is not None:
        c.send(b"BDAT %d\r\n" % split_at + content[:split_at])
        replies.append(c.reply())
        content = content[split_at:]
    c.send(b"BDAT %d LAST\r\n" % len(content) + content)
    replies.append(c.reply())
    return replies


def third(c, tag):
    """A legitimate transaction after the attack: the session goes on."""
    envelope(c)
    c.expect("DATA", 354)
    c.send(f"From: <{SENDER}>\r\nSubject: after-{tag}\r\n\r\nlegitimate\r\n.\r\n".encode())
    r = c.reply()
    if not r.startswith("250 2.0.0 OK queued"):
        raise AssertionError(f"third transaction answered {r!r}")


def run_case(port, source, kind, tag, before, after):
    """Returns the replies to the first message; raises on a protocol failure."""
    c = Client(port, source)
    try:
        c.ehlo()
        head = first_part(tag) + before + b"." + after
        if kind == "DATA":
            replies = send_data(c, head, smuggled(tag))
            if (before, after) == (b"\r\n", b"\r\n"):
                # A true end: the second transaction is a real, pipelined one.
                replies += [c.reply() for _ in range(4)]
        elif kind == "BDAT":
            # BDAT content is not dot-stuffed and has no end marker of its own.
            replies = send_bdat(c, head + smuggled(tag))
        else:  # BDAT split before the dot
            split_at = len(first_part(tag) + before)
            replies = send_bdat(c, head + smuggled(tag), split_at=split_at)
        noop = c.cmd("NOOP")
        third(c, tag)
        c.cmd("QUIT")
        return replies, noop
    finally:
        c.close()


def sink_messages(directory):
    out = []
    for meta in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(meta[:-5] + ".eml", "rb") as f:
            out.append((json.load(open(meta)), f.read()))
    return out


def subjects(eml):
    head = eml.split(b"\r\n\r\n", 1)[0]
    return [line[9:].decode() for line in head.split(b"\r\n")
            if line.lower().startswith(b"subject: ")]


def judge_replies(kind, true_end, replies, noop):
    """(expected outcome, whether the replies show it)."""
    if kind == "BDAT-split" and not replies[0].startswith("250 2.0.0"):
        return "attack", False
    ok_noop = noop.startswith("250 2.0.0 OK")
    if true_end and kind == "DATA":
        # A real second transaction behind a true end: two messages queued.
        queued = [r for r in replies if r.startswith("250 2.0.0 OK queued")]
        return "two", ok_noop and len(queued) == 2
    if true_end:
        return "one", ok_noop and replies[-1].startswith("250 2.0.0 OK queued")
    # One 5xx for the whole, and nothing answered as the smuggled commands: the next
    # reply is NOOP's.
    last = replies[-1]
    return "attack", ok_noop and last.startswith("5") and len(last.splitlines()) == 1


def send_cases(port, source, run, failures):
    """Sends every case; returns the tags by expected outcome ("attack", "one", "two")."""
    tags = {"attack": [], "one": [], "two": []}
    for kind in ("DATA", "BDAT", "BDAT-split"):
        for bname, before in BEFORE.items():
            for aname, after in AFTER.items():
                tag = f"{kind}-{bname}.{aname}-{run}"
                try:
                    replies, noop = run_case(port, source, kind, tag, before, after)
                except (AssertionError, Closed, OSError) as e:
                    failures.append(f"{tag}: {e}")
                    print(f"FAIL {tag}: {e}")
                    continue
                true_end = (bname, aname) == ("CRLF", "CRLF")
                outcome, ok = judge_replies(kind, true_end, replies, noop)
                tags[outcome].append(tag)
                line = f"{tag}: " + " | ".join(replies) + f" ; NOOP: {noop.splitlines()[0]}"
                print(("ok   " if ok else "FAIL ") + line)
                if not ok:
                    failures.append(line)
    # The dot-stuffed false end in DATA: content, relayed as one message.
    tag = f"DATA-stuffed-{run}"
    try:
        c = Client(port, source)
        c.ehlo()
        stuffed = smuggled(tag).replace(b"\r\n.\r\n", b"\r\n..\r\n") + b".\r\n"
        r = send_data(c, first_part(tag) + b"\r\n..\r\n", stuffed)
        noop = c.cmd("NOOP")
        third(c, tag)
        c.close()
        ok = r[0].startswith("250 2.0.0 OK queued") and noop.startswith("250 2.0.0 OK")
        print(("ok   " if ok else "FAIL ") + f"{tag}: {r[0]} ; NOOP: {noop}")
        tags["one"].append(tag)
        if not ok:
            failures.append(tag)
    except (AssertionError, Closed, OSError) as e:
        failures.append(f"{tag}: {e}")
        print(f"FAIL {tag}: {e}")
    return tags


def judge_sink(sink, tags, timeout, failures):
    """Once every third message arrived, what else did (or did not)."""
    every = tags["attack"] + tags["one"] + tags["two"]
    deadline = time.monotonic() + timeout
    while True:
        messages = [eml for _, eml in sink_messages(sink)]
        seen = {s for eml in messages for s in subjects(eml)}
        missing = [t for t in every if f"after-{t}" not in seen]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for t in missing:
        failures.append(f"after-{t} never reached the sink")
    arrived = 0
    for t in tags["attack"]:
        found = [s for s in seen if s in (f"first-{t}", f"smuggled-{t}")]
        inside = [eml for eml in messages if f"smuggled-{t}".encode() in eml]
        if found or inside:
            arrived += 1
            failures.append(f"{t}: reached the sink: {found} "
                            f"({len(inside)} with the smuggled text)")
    for t in tags["one"]:
        holding = [eml for eml in messages if f"smuggled-{t}".encode() in eml]
        if (len(holding) != 1 or f"smuggled-{t}" in seen
                or f"first-{t}" not in subjects(holding[0])):
            failures.append(f"{t}: expected one message (first-{t}) holding the text; "
                            f"{len(holding)} hold it, as its own message: "
                            f"{f'smuggled-{t}' in seen}")
    for t in tags["two"]:
        got = sorted(s for s in seen if s in (f"first-{t}", f"smuggled-{t}"))
        if got != [f"first-{t}", f"smuggled-{t}"]:
            failures.append(f"{t}: expected two separate messages, got {got}")
    print(f"sink: {len(messages)} messages; {len(every) - len(missing)}/{len(every)} "
          f"legitimate third messages arrived; messages of the smuggling attempts that "
          f"arrived: {arrived} of {len(tags['attack'])}")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    port, source, sink = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    timeout = float(sys.argv[4])
    run = uuid.uuid4().hex[:8]
    failures = []
    started = time.monotonic()
    tags = send_cases(port, source, run, failures)
    print(f"{sum(map(len, tags.values()))} cases sent in {time.monotonic() - started:.1f}s: "
          f"{len(tags['attack'])} smuggling attempts, {len(tags['one'])} one-message "
          f"controls, {len(tags['two'])} two-message control")
    judge_sink(sink, tags, timeout, failures)
    for f in failures:
        print("FAILURE: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
