#!/usr/bin/python3
"""AUTH flood against a running relay (attacks.sh, check 3).

Usage: attack_auth.py PORT PREFIX SESSIONS ATTEMPTS SHARED-USER RELAY-PID LIMIT-KIB

SESSIONS clients, each from its own address (PREFIX.C.D, D = 1..250, from PREFIX.1.1 on,
so that no per-client limit stops them before the password checks do), connect to the
plain listener (one after the other, so that the TLS handshakes meet their timeout on a
busy machine), EHLO, STARTTLS, EHLO, wait for each other (with a NOOP every second, so
that the idle timeout does not end the wait), then all at once send ATTEMPTS AUTH PLAIN
with wrong passwords: the first two for a username of their own (flood-N), the others for
SHARED-USER, which all of them share (so its per-username counter passes its limit and
the later ones are locked out without a password check).

Prints the replies by kind and the relay's resident set: the peak sampled every 20 ms
during the flood, VmHWM (the peak since it started) and VmRSS after. Asserts that every
AUTH got 535 5.7.8 or 454 4.7.0 (or the session was closed with 421: too many errors, or
its time limit), that none succeeded, and that VmHWM stays under LIMIT-KIB.
"""

import base64
import collections
import sys
import threading
import time

from attack_common import Client, Closed, RssSampler, mib, rss


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Flooder(threading.Thread):
    def __init__(self, port, source, n, attempts, shared, ready, go):
        super().__init__(daemon=True)
        self.port, self.source, self.n = port, source, n
        self.attempts, self.shared, self.ready, self.go = attempts, shared, ready, go
        self.replies = []
        self.error = None

    def run(self):
        c = None
        try:
            c = Client(self.port, self.source, timeout=60)
            c.ehlo()
            c.starttls()
            c.ehlo()
        except (Closed, OSError, AssertionError) as e:
            self.error = f"setup: {e}"
        self.ready.release()
        if self.error:
            return
        try:
            while not self.go.wait(1.0):
                c.expect("NOOP", 250)
            for i in range(self.attempts):
                user = self.shared if i >= 2 else f"flood-{self.n}"
                self.replies.append(c.cmd(f"AUTH PLAIN {plain(user, f'wrong-{self.n}-{i}')}"))
                if self.replies[-1].startswith("421"):
                    break  # the relay closes the session
        except (Closed, OSError, AssertionError) as e:
            self.replies.append(f"closed: {e}")
        finally:
            c.close()


def kind(reply):
    first = reply.splitlines()[0] if reply else ""
    return first[:9] if first[:3].isdigit() else first.split(":")[0]


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    port, prefix, sessions, attempts = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                        int(sys.argv[4]))
    shared, pid, limit = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
    before_rss, before_hwm = rss(pid)
    ready, go = threading.Semaphore(0), threading.Event()
    threads = [
        Flooder(port, f"{prefix}.{1 + n // 250}.{1 + n % 250}", n, attempts, shared, ready, go)
        for n in range(sessions)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
        ready.acquire()
    print(f"{sessions} sessions set up (STARTTLS) in {time.monotonic() - started:.1f}s")
    go.set()
    sampler = RssSampler(pid)
    started = time.monotonic()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    peak = sampler.stop()
    after_rss, hwm = rss(pid)
    counts = collections.Counter(kind(r) for t in threads for r in t.replies)
    errors = [t.error for t in threads if t.error]
    print(f"{sessions} sessions x {attempts} AUTH in {took:.1f}s: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(f"relay RSS before {mib(before_rss)} (VmHWM {mib(before_hwm)}); "
          f"peak sampled during the flood {mib(peak)}; VmHWM {mib(hwm)}; "
          f"VmRSS after {mib(after_rss)}")
    ok = True
    if errors:
        print(f"FAIL: {len(errors)} sessions could not start: {errors[:3]}")
        ok = False
    # 421 4.7.0: too many errors in one session; 421 4.4.2: the session time limit
    # (sessions set up first on a slow machine may reach it).
    allowed = ("535 5.7.8", "454 4.7.0", "421 4.7.0", "421 4.4.2")
    unexpected = {k: v for k, v in counts.items() if k not in allowed}
    if unexpected:
        print(f"FAIL: unexpected replies {unexpected}")
        ok = False
    if sum(counts.values()) < sessions:
        print("FAIL: fewer replies than sessions")
        ok = False
    if hwm >= limit:
        print(f"FAIL: VmHWM {mib(hwm)} is not under {mib(limit)}")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
