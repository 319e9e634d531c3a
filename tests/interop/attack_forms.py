#!/usr/bin/python3
"""Attacks on what the public listener offers strangers besides unsubscribing (for
attacks.sh): the subscription form, the confirmation links and the account API's keys.

Usage: attack_forms.py HTTP_PORT SOURCE_PREFIX SINK_DIR ACCOUNT LIST VICTIM

  1. a form flood from one client address: 30 posts; at most [subscribe] max_per_ip (10)
     answered 200, the rest 429
  2. a mail bomb: the VICTIM's address posted 12 times from 12 client addresses
     (SOURCE_PREFIX.1 .. .12): the same "check your inbox" page every time, and at most
     max_per_address (3) confirmation messages reach the sink (SINK_DIR, one file per
     message) within 20 s
  3. made-up confirmation links (random, truncated, 5000 characters, a path trick): GET
     and POST refused (400/404/414/431), never 200
  4. 60 made-up account API keys (right shape, wrong shape, huge): every one 401
Prints each step; exit 1 on any mismatch.
"""

import base64
import http.client
import os
import sys
import time
import urllib.parse

FAILED = []


def expect(ok, what):
    print(("ok: " if ok else "FAILED: ") + what)
    if not ok:
        FAILED.append(what)


def request(port, method, path, body=b"", source=None, headers=None):
    conn = http.client.HTTPConnection(
        "127.0.0.1", int(port), timeout=10, source_address=(source, 0) if source else None
    )
    try:
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return f"error {e}", ""
    finally:
        conn.close()


def flood(port, account, lst):
    statuses = []
    for i in range(30):
        body = urllib.parse.urlencode({"email": f"flood{i}@example.org"}).encode()
        statuses.append(request(port, "POST", f"/s/{account}/{lst}", body)[0])
    taken = statuses.count(200)
    expect(taken <= 10 and statuses.count(429) == 30 - taken and statuses[-1] == 429,
           f"30 posts from one address: {taken} taken, {statuses.count(429)} answered 429")


def confirmations_for(sink, victim):
    n = 0
    for name in os.listdir(sink):
        try:
            with open(os.path.join(sink, name), "rb") as f:
                data = f.read()
        except OSError:
            continue
        if victim.encode() in data and b"/s/confirm/" in data:
            n += 1
    return n


def bomb(port, prefix, sink, account, lst, victim):
    answers = set()
    for i in range(1, 13):
        body = urllib.parse.urlencode({"email": victim}).encode()
        status, page = request(port, "POST", f"/s/{account}/{lst}", body, source=f"{prefix}.{i}")
        answers.add((status, "Please check your inbox" in page))
    expect(answers == {(200, True)}, f"12 posts for one address, one answer for all: {answers}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and confirmations_for(sink, victim) < 3:
        time.sleep(0.5)
    time.sleep(2)  # anything past the cap would have arrived by now
    n = confirmations_for(sink, victim)
    expect(1 <= n <= 3, f"confirmation messages to the victim at the sink: {n} (cap 3)")


def links(port):
    junk = base64.urlsafe_b64encode(os.urandom(150)).decode().rstrip("=")
    paths = [f"/s/confirm/{junk}", f"/s/confirm/{junk[:20]}", "/s/confirm/" + "A" * 5000,
             f"/s/confirm/{junk}/..%2F..%2Fadmin", "/s/confirm/"]
    for path in paths:
        for method, body in (("GET", b""), ("POST", b"confirm=yes")):
            status, _ = request(port, method, path, body)
            shown = path if len(path) < 60 else path[:57] + "..."
            expect(status in (400, 404, 405, 414, 431), f"{method} {shown}: {status}")


def keys(port):
    shapes = []
    for i in range(50):
        shapes.append("ork_%012x_%s" % (int.from_bytes(os.urandom(6), "big"),
                                        base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")))
    shapes += ["", "ork_", "ork__", "Bearer", "x" * 300, "ork_" + "0" * 12 + "_" + "A" * 4000,
               "admin-token-guess", "ork_000000000000_", "ork_../../_x", "%00"]
    statuses = set()
    for key in shapes:
        status, _ = request(port, "GET", "/account", headers={"Authorization": f"Bearer {key}"})
        statuses.add(status)
    expect(statuses <= {401, 431}, f"{len(shapes)} made-up account keys: {sorted(statuses, key=str)}")


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    port, prefix, sink, account, lst, victim = sys.argv[1:]
    flood(port, account, lst)
    bomb(port, prefix, sink, account, lst, victim)
    links(port)
    keys(port)
    if FAILED:
        print(f"{len(FAILED)} failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
