#!/usr/bin/python3
"""A backlog for a relay whose next hop is down (attacks.sh, check 11).

  attack_backlog.py submit PORT SOURCE COUNT SESSIONS TAG
      COUNT messages of about 1 KiB (Subject: TAG N) over SESSIONS parallel sessions from
      SOURCE (an account's network), each to one recipient; every one must be answered
      "250 ... queued". Prints the rate.
  attack_backlog.py drain OPS-URL TOKEN PID SINK COUNT TAG TIMEOUT
      Waits (TIMEOUT seconds at most) until the admin API's queue is empty while sampling
      the relay's resident set every 20 ms; then the sink (SINK, sink.py) must hold each
      of the COUNT messages TAG 0 .. TAG COUNT-1 exactly once (their files are deleted
      once counted: they take room). Prints the drain time and rate and the peak RSS.
  attack_backlog.py queued OPS-URL TOKEN COUNT TIMEOUT
      Waits until the admin API counts COUNT queued messages; prints how long it took.
"""

import collections
import glob
import os
import re
import sys
import threading
import time

from attack_common import Client, Closed, RssSampler, admin, mib, rss

BODY = ("x" * 70 + "\r\n") * 13


def submit(port, source, count, sessions, tag):
    failures = []
    lock = threading.Lock()
    next_n = iter(range(count))

    def worker():
        c = Client(port, source)
        c.ehlo("backlog.test")
        while True:
            with lock:
                n = next(next_n, None)
            if n is None:
                break
            try:
                c.expect("MAIL FROM:<backlog@app.example>", 250)
                c.expect(f"RCPT TO:<backlog-{n % 100}@dest.example>", 250)
                c.expect("DATA", 354)
                c.send(f"From: <backlog@app.example>\r\nSubject: {tag} {n}\r\n\r\n"
                       f"{BODY}.\r\n".encode())
                r = c.reply()
                if not r.startswith("250 2.0.0 OK queued"):
                    raise AssertionError(r)
            except (AssertionError, Closed, OSError) as e:
                with lock:
                    failures.append(f"{tag} {n}: {e}")
                c.close()
                c = Client(port, source)
                c.ehlo("backlog.test")
        c.cmd("QUIT")
        c.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    print(f"{count - len(failures)} of {count} messages queued over {sessions} sessions in "
          f"{took:.1f}s ({count / took:.0f}/s)")
    for f in failures[:5]:
        print("FAILURE: " + f)
    return not failures


def queued(ops, token, count, timeout):
    started = time.monotonic()
    while True:
        status, q = admin(ops, token, "GET", "/admin/queue")
        if status == 200 and q["messages"] == count:
            print(f"the admin API counts {count} queued messages after "
                  f"{time.monotonic() - started:.1f}s")
            return True
        if time.monotonic() - started > timeout:
            print(f"after {timeout}s the admin API says: {q}")
            return False
        time.sleep(0.25)


def drain(ops, token, pid, sink, count, tag, timeout):
    before = rss(pid)[0]
    sampler = RssSampler(pid)
    started = time.monotonic()
    q = {}
    while time.monotonic() - started < timeout:
        _, q = admin(ops, token, "GET", "/admin/queue")
        if q.get("messages") == 0:
            break
        time.sleep(0.5)
    took = time.monotonic() - started
    peak = sampler.stop()
    now, hwm = rss(pid)
    if q.get("messages") != 0:
        print(f"not drained after {timeout}s: {q}")
        return False
    print(f"drained {count} messages in {took:.1f}s ({count / took:.0f}/s); relay RSS "
          f"{mib(before)} before, peak {mib(peak)} while draining, {mib(now)} after "
          f"(VmHWM {mib(hwm)})")
    time.sleep(1)  # a duplicate would arrive now
    subject = re.compile(rb"^Subject: " + re.escape(tag.encode()) + rb" (\d+)\r$", re.M)
    seen = collections.Counter()
    for path in glob.glob(os.path.join(sink, "*.eml")):
        with open(path, "rb") as f:
            m = subject.search(f.read(4096))
        if m:
            seen[int(m.group(1))] += 1
            os.remove(path)
            os.remove(path[:-4] + ".json")
    missing = [n for n in range(count) if seen[n] == 0]
    twice = [n for n, k in seen.items() if k > 1]
    print(f"the sink holds {sum(seen.values())} backlog messages: {len(seen)} distinct, "
          f"{len(missing)} missing, {len(twice)} more than once")
    return not missing and not twice and len(seen) == count


def main():
    a = sys.argv[1:]
    if len(a) == 6 and a[0] == "submit":
        ok = submit(int(a[1]), a[2], int(a[3]), int(a[4]), a[5])
    elif len(a) == 8 and a[0] == "drain":
        ok = drain(a[1], a[2], int(a[3]), a[4], int(a[5]), a[6], float(a[7]))
    elif len(a) == 5 and a[0] == "queued":
        ok = queued(a[1], a[2], int(a[3]), float(a[4]))
    else:
        sys.exit(__doc__)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
