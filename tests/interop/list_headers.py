#!/usr/bin/python3
"""Checks the unsubscribe headers of one delivered marketing message (for run.sh).

Usage: list_headers.py DIR SUBJECT RCPT MAIL_FROM PUBLIC_URL MAIL_DOMAIN LIST_ID

DIR is a sink.py directory. Exactly one message in it must have the Subject SUBJECT; its
envelope must be MAIL_FROM -> [RCPT] (MAIL_FROM may be a shell-style pattern, e.g. the
relay's return path bounces+*@relay.test), and it must carry exactly one of each of
  List-Unsubscribe: <PUBLIC_URL/u/TOKEN>, <mailto:unsubscribe+TOKEN@MAIL_DOMAIN>
  List-Unsubscribe-Post: List-Unsubscribe=One-Click
  List-Id: LIST_ID
(folded fields are unfolded first; both links must carry the same token). Prints what it
found; the last line is "URL <the http unsubscribe link>". Exit 1 on any mismatch.
Standard library only.
"""

import email
import fnmatch
import email.policy
import glob
import json
import os
import re
import sys


def unfold(value):
    return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip()


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    directory, subject, rcpt, mail_from, public_url, mail_domain, list_id = sys.argv[1:]
    problems = []

    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.eml"))):
        with open(path, "rb") as f:
            raw = f.read()
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if unfold(msg.get("Subject", "")) == subject:
            found.append((path, msg))
    if len(found) != 1:
        print(f"{len(found)} messages with Subject: {subject} in {directory}, expected 1")
        return 1
    path, msg = found[0]
    print(f"message: {path}")

    meta_path = path[: -len(".eml")] + ".json"
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    print(f"envelope: {meta['mail_from']} -> {meta['rcpt_tos']}")
    if meta["rcpt_tos"] != [rcpt]:
        problems.append(f"envelope recipients {meta['rcpt_tos']}, expected [{rcpt!r}]")
    if not fnmatch.fnmatchcase(meta["mail_from"], mail_from):
        problems.append(f"envelope sender {meta['mail_from']!r}, expected {mail_from!r}")

    fields = {}
    for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        values = [unfold(v) for v in (msg.get_all(name) or [])]
        for v in values:
            print(f"{name}: {v}")
        if len(values) != 1:
            problems.append(f"{len(values)} {name} fields, expected 1")
        fields[name] = values[0] if values else ""

    url = None
    m = re.fullmatch(
        r"<(" + re.escape(public_url) + r"/u/([A-Za-z0-9_-]+))>,\s*"
        r"<mailto:unsubscribe\+([A-Za-z0-9_-]+)@" + re.escape(mail_domain) + r">",
        fields["List-Unsubscribe"],
    )
    if not m:
        problems.append(
            f"List-Unsubscribe is not <{public_url}/u/TOKEN>, "
            f"<mailto:unsubscribe+TOKEN@{mail_domain}>"
        )
    else:
        url = m.group(1)
        if m.group(2) != m.group(3):
            problems.append("the http and mailto links carry different tokens")
    if fields["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click":
        problems.append("List-Unsubscribe-Post is not List-Unsubscribe=One-Click")
    if fields["List-Id"] != list_id:
        problems.append(f"List-Id is not {list_id}")

    for p in problems:
        print(f"problem: {p}")
    if url:
        print(f"URL {url}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
