#!/usr/bin/python3
"""Submits test mail to one relay for the cluster test (standard library only).

Usage: cluster_submit.py PORT NODE FIRST COUNT

Sends COUNT transactional messages over one SMTP connection to 127.0.0.1:PORT, from
app@app.test to rcpt@example.net, with the subjects `NODE FIRST` … `NODE FIRST+COUNT-1`
(what the sink records). Exits 1 unless every message was accepted.
"""

import smtplib
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: cluster_submit.py PORT NODE FIRST COUNT")
    port, node, first, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for n in range(first, first + count):
            body = (
                f"From: app@app.test\r\nTo: rcpt@example.net\r\nSubject: {node} {n}\r\n"
                f"Message-ID: <{node}.{n}@app.test>\r\n\r\nmessage {n} through {node}\r\n"
            )
            s.sendmail("app@app.test", ["rcpt@example.net"], body)
    print(f"{count} accepted by {node}")


if __name__ == "__main__":
    main()
