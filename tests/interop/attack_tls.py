#!/usr/bin/python3
"""Judges testssl.sh's JSON findings (attacks.sh, check 8).

Usage: attack_tls.py FILE.json

Prints every finding (id, severity, text) and exits 1 unless: SSLv2, SSLv3, TLS 1.0 and
TLS 1.1 are "not offered"; TLS 1.2 or 1.3 is offered; the NULL, aNULL, EXPORT and LOW
cipher categories (LOW: 64-bit, DES, RC2, RC4) are "not offered" and RC4 is "not
vulnerable"; every vulnerability test ran and none has a severity of LOW or worse; and
testssl reported no scan problem (severity FATAL).
"""

import json
import sys

NOT_OFFERED = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL",
               "cipherlist_EXPORT", "cipherlist_LOW"]
VULNERABILITIES = ["heartbleed", "CCS", "ROBOT", "secure_renego", "secure_client_renego",
                   "CRIME_TLS", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
                   "LOGJAM", "BEAST", "LUCKY13", "RC4"]
BAD = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL"}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    findings = {}
    for e in json.load(open(sys.argv[1])):
        findings.setdefault(e["id"], []).append(e)
        print(f"{e['id']:24} {e['severity']:8} {e['finding'][:90]}")
    failures = []
    for id_ in NOT_OFFERED:
        got = [e["finding"] for e in findings.get(id_, [])]
        if not got or any(not f.startswith("not offered") for f in got):
            failures.append(f"{id_}: {got or 'not tested'}")
    offered = [i for i in ("TLS1_2", "TLS1_3")
               if any(e["finding"].startswith("offered") for e in findings.get(i, []))]
    if not offered:
        failures.append("neither TLS 1.2 nor TLS 1.3 offered")
    for id_ in VULNERABILITIES:
        got = findings.get(id_, [])
        if not got:
            failures.append(f"{id_}: not tested")
        for e in got:
            if e["severity"] in BAD:
                failures.append(f"{id_}: {e['severity']} {e['finding']}")
    for id_, entries in findings.items():
        for e in entries:
            if e["severity"] == "FATAL":
                failures.append(f"{id_}: FATAL {e['finding']}")
    ok = sum(1 for i in VULNERABILITIES for e in findings.get(i, []) if e["severity"] == "OK")
    print(f"summary: offered {', '.join(offered)}; not offered: {', '.join(NOT_OFFERED)}; "
          f"{len(VULNERABILITIES)} vulnerability tests, {ok} OK")
    for f in failures:
        print("FAILURE: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
