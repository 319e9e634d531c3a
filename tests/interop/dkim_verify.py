#!/usr/bin/python3
"""Verifies the DKIM signatures of one delivered message with dkimpy (for run.sh).

Usage: dkim_verify.py DIR SUBJECT DOMAIN KEY...

DIR is a sink.py directory; exactly one message in it must have the Subject SUBJECT.
Each KEY is "SELECTOR:ALGORITHM:RECORD", e.g.
  "rsa2026:rsa-sha256:v=DKIM1; k=rsa; p=MIIBIjAN..."
RECORD is the TXT record published (here: served by a fake DNS function, no network) at
SELECTOR._domainkey.DOMAIN. The message must carry exactly one DKIM-Signature per KEY,
each with d=DOMAIN, that key's s= and a=, and an h= that lists From, Subject,
List-Unsubscribe and List-Unsubscribe-Post (case-insensitive). Then, with Debian's
python3-dkim (python3-nacl for Ed25519), for every signature i:
  - DKIM(message).verify(idx=i) passes;
  - the same message with its Subject changed fails;
  - the same message with a second List-Unsubscribe field put on top fails (the relay
    over-signs it: h= names it once more than it occurs).
Prints what it found and dkimpy's log; exit 1 on any mismatch.
"""

import email
import email.policy
import glob
import logging
import os
import re
import sys

import dkim
import dkim.util

REQUIRED_IN_H = ("from", "subject", "list-unsubscribe", "list-unsubscribe-post")


def unfold(value):
    return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip()


def find_message(directory, subject):
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.eml"))):
        with open(path, "rb") as f:
            raw = f.read()
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if unfold(msg.get("Subject", "")) == subject:
            found.append((path, raw))
    return found


def split_header(raw):
    """(header section incl. the blank line, body) of a CRLF message."""
    i = raw.find(b"\r\n\r\n")
    if i < 0:
        return raw, b""
    return raw[: i + 4], raw[i + 4 :]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


def verify(raw, idx, dnsfunc):
    """(result, dkimpy's log lines) of verifying signature idx of raw."""
    capture = Capture()
    logger = logging.getLogger(f"dkim-verify-{idx}-{id(raw)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        ok = dkim.DKIM(raw, logger=logger).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        ok = False
        capture.lines.append(f"exception: {type(e).__name__}: {e}")
    logger.removeHandler(capture)
    return ok, capture.lines


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    directory, subject, domain = sys.argv[1:4]
    keys = {}
    for arg in sys.argv[4:]:
        selector, algorithm, record = arg.split(":", 2)
        keys[selector] = (algorithm, record)

    records = {
        f"{sel}._domainkey.{domain}.".encode(): rec.encode() for sel, (_, rec) in keys.items()
    }
    queried = []

    def dnsfunc(name, timeout=5):
        queried.append(name.decode(errors="replace"))
        return records.get(name.lower())

    found = find_message(directory, subject)
    if len(found) != 1:
        print(f"{len(found)} messages with Subject: {subject} in {directory}, expected 1")
        return 1
    path, raw = found[0]
    print(f"message: {path}")
    problems = []

    header, body = split_header(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    sigs = msg.get_all("DKIM-Signature") or []
    if len(sigs) != len(keys):
        problems.append(f"{len(sigs)} DKIM-Signature fields, expected {len(keys)}")

    seen = []
    for i, value in enumerate(sigs):
        tags = dkim.util.parse_tag_value(unfold(value).encode())
        tag = {k.decode(): v.decode() for k, v in tags.items()}
        s, a, d = tag.get("s", ""), tag.get("a", ""), tag.get("d", "")
        h = [x.strip().lower() for x in tag.get("h", "").split(":")]
        print(
            f"signature {i}: d={d} s={s} a={a} c={tag.get('c', '')} t={tag.get('t', '-')} "
            f"h={':'.join(h)}"
        )
        seen.append(s)
        if d != domain:
            problems.append(f"signature {i}: d={d}, expected {domain}")
        if s not in keys:
            problems.append(f"signature {i}: s={s} is none of {sorted(keys)}")
        elif a != keys[s][0]:
            problems.append(f"signature {i}: a={a}, expected {keys[s][0]} for s={s}")
        missing = [f for f in REQUIRED_IN_H if f not in h]
        if missing:
            problems.append(f"signature {i}: h= lacks {', '.join(missing)}")

        ok, log = verify(raw, i, dnsfunc)
        print(f"signature {i} (s={s}): verify {'passed' if ok else 'FAILED'}")
        if not ok:
            problems.append(f"signature {i} (s={s}) does not verify")
            for line in log:
                print(f"    dkimpy {line}")

        # The same message with its Subject changed must fail.
        changed_header, n = re.subn(
            rb"(?im)^Subject:[^\r\n]*(\r\n[ \t][^\r\n]*)*",
            b"Subject: " + subject.encode() + b" (changed)",
            header,
            count=1,
        )
        if n != 1:
            problems.append("no Subject field to change")
        else:
            ok, log = verify(changed_header + body, i, dnsfunc)
            print(f"signature {i} (s={s}), Subject changed: verify {'PASSED' if ok else 'failed'}")
            if ok:
                problems.append(f"signature {i} (s={s}) still verifies with the Subject changed")

        # A second List-Unsubscribe put on top must fail too (over-signing).
        added = b"List-Unsubscribe: <https://attacker.example/u/x>\r\n" + raw
        ok, log = verify(added, i, dnsfunc)
        print(
            f"signature {i} (s={s}), List-Unsubscribe added on top: verify "
            f"{'PASSED' if ok else 'failed'}"
        )
        if ok:
            problems.append(
                f"signature {i} (s={s}) still verifies with a List-Unsubscribe added on top"
            )

    if sorted(seen) != sorted(keys):
        problems.append(f"selectors {sorted(seen)}, expected one signature each by {sorted(keys)}")
    print(f"DNS queries answered by the fake resolver: {sorted(set(queried))}")

    if problems:
        print("the message's header section:")
        for line in header.decode("utf-8", errors="replace").splitlines():
            print(f"    {line}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
