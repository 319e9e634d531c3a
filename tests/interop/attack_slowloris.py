#!/usr/bin/python3
"""Slow clients against a running relay (attacks.sh, checks 2 and 9).

  attack_slowloris.py smtp PORT PREFIX ADDRESSES PER-ADDRESS IDLE SESSION TRUSTED STRANGER
      PER-ADDRESS connections from each of PREFIX.1 .. PREFIX.ADDRESSES (strangers) to the
      plain listener. Those the per-client cap refuses must get 421 4.7.0 at once; of those
      accepted, half stop mid-line after a few octets ("stallers") and half send one octet
      every IDLE*2/3 seconds, never finishing a line ("drippers"). Asserted: stallers are
      closed with 421 4.4.2 about IDLE seconds after their last octet, drippers with 421
      4.4.2 about SESSION seconds after connecting; while all of them are held, a client
      from TRUSTED (an account's network) and one from STRANGER get their 220 greeting at
      once (latency printed) and complete EHLO; afterwards PREFIX.1 is served again.
  attack_slowloris.py longline PORT SOURCE MAX
      a command line of 1.5 * MAX octets without CRLF: 500 5.5.2 and a close, at once.
  attack_slowloris.py tls TLS-PORT PORT SOURCE HANDSHAKE
      a connection to the implicit-TLS listener that never sends a ClientHello, and a
      STARTTLS that is never followed by one: both closed about HANDSHAKE seconds later.
  attack_slowloris.py http PORT PREFIX PER-CLIENT TOTAL HEADER BODY
      against the public HTTP listener: a half-sent head, a head dripping an octet every
      HEADER/4 s, a half-sent body, a body dripping: each cut off (the bodies with 408)
      within about HEADER / BODY seconds; PER-CLIENT half-sent heads from PREFIX.1 hold
      its share and the next one is answered 503; more clients up to TOTAL fill the
      listener and the next client gets 503; once the heads time out, the refused
      clients are served (GET /healthz 200). Also: /metrics and /admin/queue are 404 there
      (they are on the operator listener only), and an answer (the page for a bad token)
      carries Content-Security-Policy, X-Frame-Options: DENY, Referrer-Policy:
      no-referrer, X-Content-Type-Options: nosniff, Cache-Control: no-store, no cookie.
Prints its figures; exits 1 when an assertion fails.
"""

import socket
import sys
import threading
import time

from attack_common import Client, Closed, done, expect

SLACK = 3.0  # seconds a loaded 2-core machine may add to a timeout



# ---------------------------------------------------------------- SMTP


class Slow(threading.Thread):
    """One slow connection: refused at once, or held until the relay closes it."""

    def __init__(self, port, source, drip, gap, limit):
        super().__init__(daemon=True)
        self.port, self.source, self.drip, self.gap, self.limit = port, source, drip, gap, limit
        self.outcome = None  # "refused", "closed", "open", "error"
        self.greeting = ""
        self.closed_after = None  # seconds from the last octet sent (staller) or connect
        self.sent_text = ""

    def run(self):
        try:
            self.c = Client(self.port, self.source, timeout=10)
        except (Closed, OSError) as e:
            self.outcome, self.greeting = "error", str(e)
            return
        self.connected = time.monotonic()
        self.greeting = self.c.greeting
        if not self.greeting.startswith("220"):
            waited, _ = self.c.closed_within(5)
            self.outcome = "refused" if waited is not None else "open"
            self.c.close()
            return
        try:
            if self.drip:
                self.dripping()
            else:
                self.c.send(b"MAIL FROM:<slow")
                waited, text = self.c.closed_within(self.limit)
                self.finish(waited, text, waited)
        except OSError as e:
            self.outcome, self.sent_text = "error", str(e)
        finally:
            self.c.close()

    def dripping(self):
        for octet in b"MAIL FROM:<" + b"a" * 1000:
            try:
                self.c.send(bytes([octet]))
            except OSError:
                break
            waited, text = self.c.closed_within(self.gap)
            if waited is not None or text:
                if waited is None:  # a reply, not yet the close
                    more_waited, more = self.c.closed_within(SLACK)
                    text += more
                    waited = more_waited
                self.finish(waited, text, time.monotonic() - self.connected)
                return
            if time.monotonic() - self.connected > self.limit:
                break
        self.outcome = "open"

    def finish(self, waited, text, after):
        self.sent_text = text.strip()
        if waited is None:
            self.outcome = "open"
        else:
            self.outcome = "closed"
            self.closed_after = after


def greeting_latency(port, source):
    started = time.monotonic()
    c = Client(port, source, timeout=10)
    latency = time.monotonic() - started
    ok = c.greeting.startswith("220")
    if ok:
        c.ehlo("legit.test")
        c.cmd("QUIT")
    c.close()
    return ok, latency, c.greeting


def smtp(port, prefix, addresses, per_address, idle, session, trusted, stranger):
    gap = idle * 2 / 3
    conns = []
    started = time.monotonic()
    for a in range(1, addresses + 1):
        for i in range(per_address):
            # Alternate per accepted slot: the order of acceptance is the order of connect.
            t = Slow(port, f"{prefix}.{a}", drip=i % 2 == 1, gap=gap,
                     limit=session + 2 * SLACK)
            t.start()
            conns.append(t)
            # One at a time, so the relay sees them in order (the first ones are accepted).
            time.sleep(0.005)
    print(f"{len(conns)} connections opened from {addresses} addresses in "
          f"{time.monotonic() - started:.1f}s")
    time.sleep(1.0)
    for source in (trusted, stranger):
        ok, latency, greeting = greeting_latency(port, source)
        expect(ok and latency < 1.0,
               f"while held: greeting for {source} after {latency * 1000:.0f} ms: {greeting}")
    for t in conns:
        t.join()
    refused = [t for t in conns if t.outcome == "refused"]
    stallers = [t for t in conns if t.outcome != "refused" and not t.drip]
    drippers = [t for t in conns if t.outcome != "refused" and t.drip]
    wrong_refusal = [t.greeting for t in refused if not t.greeting.startswith("421 4.7.0")]
    print(f"refused at once: {len(refused)} (421 4.7.0: {len(refused) - len(wrong_refusal)}); "
          f"held: {len(stallers)} stallers, {len(drippers)} drippers; total "
          f"{time.monotonic() - started:.1f}s")
    expect(not wrong_refusal, f"every refusal is 421 4.7.0 ({set(wrong_refusal) or 'yes'})")
    shares = {}
    for t in conns:
        if t.outcome != "refused":
            shares[t.source] = shares.get(t.source, 0) + 1
    expect(len(set(shares.values())) == 1 and max(shares.values()) < per_address,
           f"each address got the same share: {sorted(set(shares.values()))} connections")
    for name, group, expected in (("staller", stallers, idle), ("dripper", drippers, session)):
        bad = [t for t in group if t.outcome != "closed" or "421 4.4.2" not in t.sent_text]
        times = sorted(t.closed_after for t in group if t.closed_after is not None)
        spread = f"{times[0]:.1f}s..{times[-1]:.1f}s" if times else "none"
        expect(not bad, f"{len(group)} {name}s closed with 421 4.4.2 "
               f"({len(bad)} not: {[(t.outcome, t.sent_text) for t in bad[:3]]})")
        expect(bool(times) and times[0] >= expected - 0.5 and times[-1] <= expected + SLACK,
               f"{name}s closed after {spread} (expected about {expected}s)")
    ok, latency, greeting = greeting_latency(port, f"{prefix}.1")
    expect(ok, f"afterwards {prefix}.1 is served again: {greeting} ({latency * 1000:.0f} ms)")


def longline(port, source, limit):
    c = Client(port, source)
    c.ehlo()
    started = time.monotonic()
    try:
        c.send(b"MAIL FROM:<" + b"a" * int(limit * 1.5))
    except OSError:
        pass  # the relay may close before it read everything
    waited, text = c.closed_within(5)
    c.close()
    expect(waited is not None and "500 5.5.2" in text,
           f"a {int(limit * 1.5)}-octet line without CRLF: {text.strip()!r}, closed after "
           f"{time.monotonic() - started:.2f}s")


def tls(tls_port, port, source, handshake):
    s = socket.create_connection(("127.0.0.1", tls_port), timeout=handshake + 10,
                                 source_address=(source, 0))
    started = time.monotonic()
    try:
        got = s.recv(100)
    except OSError:
        got = b""
    waited = time.monotonic() - started
    s.close()
    expect(got == b"" and handshake - 0.5 <= waited <= handshake + SLACK,
           f"implicit TLS without a ClientHello: closed after {waited:.2f}s ({got!r})")
    c = Client(port, source)
    c.ehlo()
    c.expect("STARTTLS", 220)
    waited, text = c.closed_within(handshake + 10)
    c.close()
    expect(waited is not None and handshake - 0.5 <= waited <= handshake + SLACK,
           f"STARTTLS without a ClientHello: closed after "
           f"{'never' if waited is None else f'{waited:.2f}s'} ({text!r})")


# ---------------------------------------------------------------- HTTP

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Slow: "
BODY_HEAD = (b"POST /u/sometoken HTTP/1.1\r\nHost: relay.test\r\n"
             b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")


def http_conn(port, source):
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def read_until_closed(s, limit, drip=None, gap=None):
    """(seconds until the relay closed, what it sent); None when still open at `limit`."""
    started = time.monotonic()
    got = b""
    s.settimeout(gap or limit)
    while time.monotonic() - started < limit:
        try:
            chunk = s.recv(4096)
            if not chunk:
                return time.monotonic() - started, got.decode("latin-1")
            got += chunk
        except socket.timeout:
            if drip:
                try:
                    s.send(drip)
                except OSError:
                    return time.monotonic() - started, got.decode("latin-1")
        except OSError:
            return time.monotonic() - started, got.decode("latin-1")
    return None, got.decode("latin-1")


def healthz(port, source):
    s = http_conn(port, source)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n")
    _, answer = read_until_closed(s, 10)
    s.close()
    return answer.split("\r\n", 1)[0]


def request(port, source, method, path):
    """(status line, lower-case header names to values, body) of one request."""
    s = http_conn(port, source)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n".encode())
    _, answer = read_until_closed(s, 10)
    s.close()
    head, _, body = answer.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


def public_surface(port, source):
    for path in ("/metrics", "/admin/queue", "/admin/openapi.json"):
        status, _, body = request(port, source, "GET", path)
        expect(status.startswith("HTTP/1.1 404") and "optin_" not in body,
               f"GET {path} on the public listener: {status}")
    status, h, body = request(port, source, "GET", "/u/not-a-token")
    want = {
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
    }
    for name, value in want.items():
        expect(h.get(name) == [value], f"{status}: {name}: {h.get(name)}")
    csp = h.get("content-security-policy", [""])
    expect(len(csp) == 1 and "default-src 'none'" in csp[0] and "frame-ancestors 'none'" in csp[0],
           f"Content-Security-Policy: {csp}")
    expect("set-cookie" not in h, f"no cookie: {h.get('set-cookie')}")


def http(port, prefix, per_client, total, header, body):
    public_surface(port, f"{prefix}.201")
    cases = (
        ("a half-sent head", HALF_HEAD, None, header, None),
        ("a head dripping an octet every %.1fs" % (header / 4), HALF_HEAD, b"a", header, None),
        ("a half-sent body", BODY_HEAD + b"List-Unsu", None, body, "HTTP/1.1 408"),
        ("a body dripping an octet every %.1fs" % (body / 4), BODY_HEAD, b"x", body, None),
    )
    for what, first, drip, limit, status in cases:
        s = http_conn(port, f"{prefix}.200")
        s.sendall(first)
        waited, answer = read_until_closed(s, limit + 2 * SLACK, drip,
                                           limit / 4 if drip else None)
        s.close()
        head = answer.split("\r\n", 1)[0]
        expect(waited is not None and waited <= limit + SLACK
               and (status is None or head.startswith(status)),
               f"{what}: cut off after {'never' if waited is None else f'{waited:.2f}s'} "
               f"({head or 'closed without an answer'})")
    # Caps: one client's share, then every place.
    held = []
    for _ in range(per_client):
        s = http_conn(port, f"{prefix}.1")
        s.sendall(HALF_HEAD)
        held.append(s)
    time.sleep(0.3)
    first = healthz(port, f"{prefix}.1")
    expect(first.startswith("HTTP/1.1 503"),
           f"connection {per_client + 1} of {prefix}.1: {first}")
    client = 2
    while len(held) < total:
        for _ in range(min(per_client, total - len(held))):
            s = http_conn(port, f"{prefix}.{client}")
            s.sendall(HALF_HEAD)
            held.append(s)
        client += 1
    time.sleep(0.3)
    over = healthz(port, f"{prefix}.{client}")
    expect(over.startswith("HTTP/1.1 503"),
           f"{len(held)} half-sent heads from {client - 1} clients hold the listener; "
           f"client {prefix}.{client}: {over}")
    started = time.monotonic()
    closed = 0
    for s in held:
        waited, _ = read_until_closed(s, header + 2 * SLACK)
        closed += waited is not None
        s.close()
    expect(closed == len(held),
           f"{closed}/{len(held)} held heads cut off within "
           f"{time.monotonic() - started:.1f}s")
    for source in (f"{prefix}.1", f"{prefix}.{client}"):
        answer = ""
        for _ in range(40):
            answer = healthz(port, source)
            if answer.startswith("HTTP/1.1 200"):
                break
            time.sleep(0.1)
        expect(answer.startswith("HTTP/1.1 200"), f"afterwards {source}: {answer}")


def main():
    args = sys.argv[1:]
    if len(args) == 9 and args[0] == "smtp":
        smtp(int(args[1]), args[2], int(args[3]), int(args[4]), float(args[5]),
             float(args[6]), args[7], args[8])
    elif len(args) == 4 and args[0] == "longline":
        longline(int(args[1]), args[2], int(args[3]))
    elif len(args) == 5 and args[0] == "tls":
        tls(int(args[1]), int(args[2]), args[3], float(args[4]))
    elif len(args) == 7 and args[0] == "http":
        http(int(args[1]), args[2], int(args[3]), int(args[4]), float(args[5]), float(args[6]))
    else:
        sys.exit(__doc__)
    done()


if __name__ == "__main__":
    main()
