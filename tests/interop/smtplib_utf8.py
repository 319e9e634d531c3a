#!/usr/bin/python3
"""Python smtplib as a relay client: SMTPUTF8 and 8BITMIME messages.

  smtplib_utf8.py send HOST PORT USER PASSWORD TAG
      Connects, does STARTTLS (certificate not verified: the relay's is self-signed) and
      AUTH as USER, then sends two messages whose Subject contains TAG:
        utf8   MAIL ... SMTPUTF8 BODY=8BITMIME, non-ASCII recipient and display names,
               8-bit UTF-8 body
        8bit   MAIL ... BODY=8BITMIME, ASCII addresses, 8-bit UTF-8 body
      Prints "SENT <kind> <reply>" per message; exits 1 if any was not accepted.

  smtplib_utf8.py verify SINKDIR TAG TIMEOUT
      Waits up to TIMEOUT seconds for both messages in an aiosmtpd sink directory (see
      sink.py) and checks that the envelope and the original UTF-8 bytes arrived intact.
      Prints "OK <kind>: ..." or "BAD <kind>: ..." per message; exits 1 on any BAD.
"""

import email.policy
import glob
import json
import os
import re
import smtplib
import ssl
import sys
import time
from email.message import EmailMessage

UTF8_SENDER = "zoë@example.com"
UTF8_RECIPIENT = "用户@例子.广告"
UTF8_FROM_NAME = "Zoë Ünïcødé"
UTF8_TO_NAME = "测试用户"
PLAIN_SENDER = "sender@example.com"
PLAIN_RECIPIENT = "rcpt@example.net"
# A line starting with "." exercises dot-stuffing in both directions.
BODY = (
    "Grüße aus Köln — ça marche? 你好，世界。 Ελληνικά, русский, emoji 🚀.\n"
    ".a line that starts with a dot\n"
    "last line: ÆØÅ æøå\n"
)


def messages(tag):
    """(kind, envelope sender, envelope recipient, mail options, message bytes)."""
    utf8 = EmailMessage(policy=email.policy.SMTPUTF8)
    utf8["From"] = f"{UTF8_FROM_NAME} <{UTF8_SENDER}>"
    utf8["To"] = f"{UTF8_TO_NAME} <{UTF8_RECIPIENT}>"
    utf8["Subject"] = f"{tag} utf8 Grüße 你好"
    utf8["Message-ID"] = f"<{tag}-utf8@client.test>"
    utf8.set_content(BODY, charset="utf-8", cte="8bit")

    eight = EmailMessage(policy=email.policy.SMTP)
    eight["From"] = f"Sender <{PLAIN_SENDER}>"
    eight["To"] = f"Recipient <{PLAIN_RECIPIENT}>"
    eight["Subject"] = f"{tag} 8bit"
    eight["Message-ID"] = f"<{tag}-8bit@client.test>"
    eight.set_content(BODY, charset="utf-8", cte="8bit")

    return [
        ("utf8", UTF8_SENDER, UTF8_RECIPIENT, ["SMTPUTF8", "BODY=8BITMIME"],
         utf8.as_bytes(policy=email.policy.SMTPUTF8)),
        ("8bit", PLAIN_SENDER, PLAIN_RECIPIENT, ["BODY=8BITMIME"],
         eight.as_bytes(policy=email.policy.SMTP)),
    ]


def send(host, port, user, password, tag):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ok = True
    with smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        s.starttls(context=context)
        s.ehlo()
        for extension in ("smtputf8", "8bitmime"):
            if not s.has_extn(extension):
                print(f"relay does not offer {extension.upper()} after STARTTLS")
                ok = False
        s.login(user, password)
        for kind, sender, rcpt, options, data in messages(tag):
            # mail/rcpt/data one by one (not sendmail) to get the DATA reply text.
            code, reply = s.mail(sender, options)
            if code == 250:
                code, reply = s.rcpt(rcpt)
            if code in (250, 251):
                code, reply = s.data(data)
            else:
                s.rset()
            text = reply.decode("utf-8", "replace")
            print(f"SENT {kind} {code} {text}")
            ok = ok and code == 250 and "queued as" in text
    return ok


def find_message(sinkdir, message_id):
    """The (meta, content) of the sink transaction carrying message_id, or None."""
    needle = f"Message-ID: {message_id}".encode()
    for meta_path in sorted(glob.glob(os.path.join(sinkdir, "*.json"))):
        with open(meta_path[: -len(".json")] + ".eml", "rb") as f:
            content = f.read()
        if needle in content:
            with open(meta_path, encoding="utf-8") as f:
                return json.load(f), content
    return None


def check(kind, meta, content, sender, rcpt):
    problems = []
    unix = content.replace(b"\r\n", b"\n")
    if meta["rcpt_tos"] != [rcpt]:
        problems.append(f"recipients {meta['rcpt_tos']!r}, expected [{rcpt!r}]")
    # The relay sends with its own return path (VERP): bounces+TOKEN@its mail domain, the
    # token lower-case base32; the client's sender stays in the content and the envelope.
    if not re.fullmatch(r"bounces\+[a-z2-7]{40,}@[^@]+", meta["mail_from"]):
        problems.append(f"sender {meta['mail_from']!r}, expected the relay's return path "
                        f"(the client's was {sender!r})")
    if BODY.encode("utf-8") not in unix:
        problems.append("the original UTF-8 body bytes are not in the delivered content")
    if not unix.startswith(b"Received:"):
        problems.append("no Received: header at the top")
    if not any(o.upper() == "BODY=8BITMIME" for o in meta["mail_options"]):
        problems.append(f"8-bit content delivered without BODY=8BITMIME "
                        f"(MAIL options {meta['mail_options']!r})")
    if kind == "utf8":
        if not meta["smtp_utf8"]:
            problems.append("delivered without SMTPUTF8")
        for header in (f"From: {UTF8_FROM_NAME} <{UTF8_SENDER}>",
                       f"To: {UTF8_TO_NAME} <{UTF8_RECIPIENT}>"):
            if header.encode("utf-8") not in unix:
                problems.append(f"raw UTF-8 header {header!r} not found")
    return problems


def verify(sinkdir, tag, timeout):
    deadline = time.monotonic() + float(timeout)
    expected = {
        "utf8": (UTF8_SENDER, UTF8_RECIPIENT),
        "8bit": (PLAIN_SENDER, PLAIN_RECIPIENT),
    }
    found = {}
    while True:
        for kind in expected:
            if kind not in found:
                hit = find_message(sinkdir, f"<{tag}-{kind}@client.test>")
                if hit:
                    found[kind] = hit
        if len(found) == len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ok = True
    for kind, (sender, rcpt) in expected.items():
        if kind not in found:
            print(f"BAD {kind}: not delivered to the sink within {timeout}s")
            ok = False
            continue
        problems = check(kind, *found[kind], sender, rcpt)
        if problems:
            print(f"BAD {kind}: " + "; ".join(problems))
            ok = False
        else:
            print(f"OK {kind}: envelope, headers and body bytes intact")
    return ok


def main():
    args = sys.argv[1:]
    if len(args) == 6 and args[0] == "send":
        ok = send(*args[1:])
    elif len(args) == 4 and args[0] == "verify":
        ok = verify(*args[1:])
    else:
        sys.exit(__doc__)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
