#!/usr/bin/python3
"""Submits test mail to one relay for the cluster test (standard library only).

Usage: cluster_submit.py PORT NODE FIRST COUNT [marketing|transactional [RCPT]]

Sends COUNT transactional messages (with `marketing`: marketing ones, X-Optin-Stream:
marketing) over one SMTP connection to 127.0.0.1:PORT, from app@app.test to RCPT
(default rcpt@example.net), with the subjects `NODE FIRST` … `NODE FIRST+COUNT-1` (what
the sink records); with CAMPAIGN=NAME in the environment each carries
`X-Optin-Campaign: NAME`. Exits 0 when every message was accepted, 2 when the relay refused the
recipient (at RCPT, or at the end of DATA when it withholds a message's only recipient),
3 when it refused the sender at MAIL (a frozen account), 1 on anything else; a refusal's
reply is printed.
"""

import os
import smtplib
import sys


def main():
    if len(sys.argv) not in (5, 6, 7):
        sys.exit("usage: cluster_submit.py PORT NODE FIRST COUNT [marketing|transactional [RCPT]]")
    port, node, first, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    stream = "X-Optin-Stream: marketing\r\n" if sys.argv[5:6] == ["marketing"] else ""
    if os.environ.get("CAMPAIGN"):
        stream += f"X-Optin-Campaign: {os.environ['CAMPAIGN']}\r\n"
    rcpt = sys.argv[6] if len(sys.argv) == 7 else "rcpt@example.net"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for n in range(first, first + count):
            body = (
                f"From: app@app.test\r\nTo: {rcpt}\r\nSubject: {node} {n}\r\n"
                f"Message-ID: <{node}.{n}@app.test>\r\n{stream}\r\n"
                f"message {n} through {node}\r\n"
            )
            try:
                s.sendmail("app@app.test", [rcpt], body)
            except smtplib.SMTPRecipientsRefused as e:
                for code, text in e.recipients.values():
                    print(f"refused: {code} {text.decode(errors='replace')}")
                sys.exit(2)
            except smtplib.SMTPSenderRefused as e:
                print(f"refused: {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
                sys.exit(3)
            except smtplib.SMTPDataError as e:
                # One recipient, withheld: the relay refuses at the end of DATA.
                print(f"refused: {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
                sys.exit(2 if 500 <= e.smtp_code < 600 else 1)
    print(f"{count} accepted by {node}")


if __name__ == "__main__":
    main()
