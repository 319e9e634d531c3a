#!/usr/bin/python3
"""Submits numbered messages to the relay for faults.sh (standard library only).

Usage: faults_send.py PORT PREFIX FIRST COUNT SIZE [STOP-CODE]

Sends messages FIRST..FIRST+COUNT-1, one SMTP session each, from app@shop.example to
reader@x.example, each with "Subject: PREFIX-N", an "X-Token: PREFIX-N" header and about
SIZE octets of body. Prints one line per message: "PREFIX-N CODE TEXT" with the reply to
the end of DATA (or to the command that failed). With STOP-CODE, stops after the first
message answered with that code. Exits 0 unless the relay cannot be reached at all.
"""

import smtplib
import sys


def send(port, token, size):
    line = ("x" * 70 + "\r\n").encode()
    body = b"".join([line] * max(1, size // len(line)))
    message = (
        f"From: app@shop.example\r\nTo: reader@x.example\r\nSubject: {token}\r\n"
        f"X-Token: {token}\r\n\r\n"
    ).encode() + body
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("faults.test")
        code, text = s.mail("app@shop.example")
        if code != 250:
            return code, text
        code, text = s.rcpt("reader@x.example")
        if code != 250:
            return code, text
        try:
            code, text = s.data(message)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
        return code, text


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    port, prefix = int(sys.argv[1]), sys.argv[2]
    first, count, size = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    stop = int(sys.argv[6]) if len(sys.argv) == 7 else None
    for n in range(first, first + count):
        token = f"{prefix}-{n}"
        try:
            code, text = send(port, token, size)
        except smtplib.SMTPResponseException as e:
            code, text = e.smtp_code, e.smtp_error
        except OSError as e:
            sys.exit(f"{token}: cannot reach the relay: {e}")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        print(f"{token} {code} {text}", flush=True)
        if stop is not None and code == stop:
            break


if __name__ == "__main__":
    main()
