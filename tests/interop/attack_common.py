#!/usr/bin/python3
"""Shared pieces of the attack_*.py helpers of attacks.sh (Debian's /usr/bin/python3,
standard library only). Not a script of its own.

  Client          a raw SMTP client that can connect from any 127.x.y.z source address,
                  send exactly the octets it is given (bare CR, LF, NUL, half lines),
                  read replies, and upgrade with STARTTLS (no certificate check: the
                  relay under test has a self-signed one)
  rss(pid)        VmRSS and VmHWM of a process, in KiB, from /proc/PID/status
  RssSampler      samples VmRSS every 20 ms in a thread; .peak after .stop()
  metric(url, name, *labels) the summed samples of a Prometheus page with those labels
  admin(url, token, method, path, body)   a call to the relay's admin API: (status, json)
  expect(cond, what), done()  print "ok   what" or "FAIL what"; done() exits 1 if any
                  expectation failed

As a script:
  attack_common.py admin URL TOKEN METHOD PATH [JSON-BODY]
      prints the answer's JSON (keys sorted); exits 0 for a 2xx status, else 1
  attack_common.py metric URL NAME [LABEL=VALUE...]
      prints the sum of NAME's samples that have every LABEL=VALUE (0 when none)
"""

import json
import socket
import sys
import ssl
import threading
import time
import urllib.error
import urllib.request

import util

TIMEOUT = 30
failures = []  # what expect() found wrong


class Closed(Exception):
    """The relay closed the connection (or reset it) while a reply was awaited."""


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    def __init__(self, port, source="127.0.0.1", host="127.0.0.1", timeout=TIMEOUT,
                 implicit_tls=False, greet=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect((host, port))
        if implicit_tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError) as e:
                raise Closed(f"connection reset: {e}") from e
            if not chunk:
                raise Closed("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self):
        """One reply, its lines joined with newlines (e.g. "250-a\\n250 b")."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def expect(self, line, code):
        r = self.cmd(line)
        if not r.startswith(str(code)):
            raise AssertionError(f"{line!r} answered {r!r}, expected {code}")
        return r

    def ehlo(self, name="attacker.test"):
        return self.expect(f"EHLO {name}", 250)

    def starttls(self):
        self.expect("STARTTLS", 220)
        self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""

    def closed_within(self, seconds):
        """Reads until the relay closes; returns (seconds waited, what it sent), or
        (None, what it sent) when it is still open after `seconds`."""
        started = time.monotonic()
        got = self.buf
        self.buf = b""
        self.sock.settimeout(seconds)
        try:
            while True:
                left = seconds - (time.monotonic() - started)
                if left <= 0:
                    return None, got.decode("utf-8", "replace")
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            return None, got.decode("utf-8", "replace")
        except (ConnectionResetError, ssl.SSLError, OSError):
            pass
        return time.monotonic() - started, got.decode("utf-8", "replace")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def rss(pid):
    """(VmRSS, VmHWM) of `pid` in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class RssSampler:
    """The highest VmRSS of a process while something runs (VmHWM only ever grows)."""

    def __init__(self, pid, every=0.02):
        self.pid, self.every = pid, every
        self.peak = rss(pid)[0]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.wait(self.every):
            self.peak = max(self.peak, rss(self.pid)[0])

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.peak = max(self.peak, rss(self.pid)[0])
        return self.peak


def metric(url, name, *labels):
    """The sum of every sample of `name` that has each of `labels` ("key=value"); 0 when
    there is none."""
    _, body = util.get(url)
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in (l.split("=", 1) for l in labels)):
            total += float(value)
    return int(total) if total == int(total) else total


def admin(url, token, method, path, body=None):
    """(status, parsed JSON) of an admin API call."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def expect(cond, what):
    """Prints `what` as passed or failed; a failure is remembered for done()."""
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def done():
    sys.exit(1 if failures else 0)


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def main():
    args = sys.argv[1:]
    if len(args) in (5, 6) and args[0] == "admin":
        body = json.loads(args[5]) if len(args) == 6 else None
        status, answer = admin(args[1], args[2], args[3], args[4], body)
        print(json.dumps(answer, sort_keys=True))
        sys.exit(0 if 200 <= status < 300 else 1)
    if len(args) >= 3 and args[0] == "metric":
        print(metric(args[1], args[2], *args[3:]))
        sys.exit(0)
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
