#!/usr/bin/python3
"""Small helpers for run.sh (Debian's /usr/bin/python3, standard library only).

  util.py ports N            print N distinct free TCP ports on 127.0.0.1, one per line
  util.py http URL           GET URL; print the body; exit 1 unless the status is 200
  util.py metric URL NAME [LABEL=VALUE]
                             GET a Prometheus text page and print the sum of every
                             sample of NAME (optionally only those with LABEL="VALUE");
                             prints "absent" and exits 1 when there is no such sample
  util.py upload URL TOKEN FILE
                             POST FILE (streamed from disk, text/csv) to URL with
                             Authorization: Bearer TOKEN; print the body; exit 1 unless
                             the status is 2xx
  util.py get-auth URL TOKEN GET URL with the bearer token; print the body; exit 1
                             unless the status is 200
  util.py prom-query URL QUERY
                             ask the Prometheus server at URL (its /api/v1/query) for
                             QUERY; print the value of each series of the answer, one per
                             line; exit 1 when the query failed or had no series
"""

import json
import re
import socket
import sys
import urllib.parse
import urllib.request


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url):
    # No proxy: an http_proxy in the environment must not capture 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return r.status, r.read().decode("utf-8", "replace")


def upload(url, token, path):
    import os

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with open(path, "rb") as f:
        req = urllib.request.Request(
            url,
            data=f,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/csv",
                "Content-Length": str(os.path.getsize(path)),
            },
        )
        with opener.open(req, timeout=600) as r:
            return r.status, r.read().decode("utf-8", "replace")


def get_auth(url, token):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with opener.open(req, timeout=30) as r:
        return r.status, r.read().decode("utf-8", "replace")


def metric_sum(text, name, label=None):
    want = None
    if label:
        key, value = label.split("=", 1)
        want = f'{key}="{value}"'
    sample = re.compile(r"^" + re.escape(name) + r"(\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)")
    total, seen = 0.0, False
    for line in text.splitlines():
        m = sample.match(line)
        if not m:
            continue
        if want and want not in (m.group("labels") or ""):
            continue
        total += float(m.group("v"))
        seen = True
    return total if seen else None


def prom_query(url, query):
    try:
        status, body = get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
        answer = json.loads(body)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        print(f"query failed: {e}", file=sys.stderr)
        return None
    if status != 200 or answer.get("status") != "success":
        return None
    return [r["value"][1] for r in answer["data"]["result"]]


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "ports":
        print("\n".join(map(str, free_ports(int(args[1])))))
    elif len(args) == 2 and args[0] == "http":
        status, body = get(args[1])
        print(body, end="")
        sys.exit(0 if status == 200 else 1)
    elif len(args) in (3, 4) and args[0] == "metric":
        _, body = get(args[1])
        total = metric_sum(body, args[2], args[3] if len(args) == 4 else None)
        if total is None:
            print("absent")
            sys.exit(1)
        print(int(total) if total == int(total) else total)
    elif len(args) == 4 and args[0] == "upload":
        try:
            status, body = upload(args[1], args[2], args[3])
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode("utf-8", "replace")
        print(body)
        sys.exit(0 if 200 <= status < 300 else 1)
    elif len(args) == 3 and args[0] == "get-auth":
        try:
            status, body = get_auth(args[1], args[2])
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode("utf-8", "replace")
        print(body)
        sys.exit(0 if status == 200 else 1)
    elif len(args) == 3 and args[0] == "prom-query":
        values = prom_query(args[1], args[2])
        if not values:
            print("no answer" if values is None else "no series")
            sys.exit(1)
        print("\n".join(values))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
