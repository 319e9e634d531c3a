#!/usr/bin/python3
"""Minimal raw SMTP client for protocol probes the other tools will not send.

Usage: smtp_say.py HOST PORT LINE...

Reads the greeting, then sends each LINE (CRLF appended) and prints every reply as
"<code> <text>" lines (multi-line replies keep their "-" continuation marker), exactly as
received. Sends QUIT at the end. Exits 0 unless the connection fails.
Example: smtp_say.py 127.0.0.1 2525 "EHLO client.test" "AUTH PLAIN AGZvbwBiYXI="
"""

import socket
import sys


def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            lines.append("(connection closed)")
            break
        line = line.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            break
    return lines


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    host, port, commands = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with socket.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rb")
        print("\n".join(read_reply(f)))
        for command in commands + ["QUIT"]:
            print(f">>> {command}")
            s.sendall(command.encode("utf-8") + b"\r\n")
            print("\n".join(read_reply(f)))


if __name__ == "__main__":
    main()
