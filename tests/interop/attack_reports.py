#!/usr/bin/python3
"""Hostile mail to the relay's feedback address (attacks.sh, checks 4 and 5).

  attack_reports.py limits PORT SOURCE FEEDBACK MAX-REPORT SPOOL RELAY-PID
      From SOURCE (a stranger): MAIL with SIZE= twice the limit (552 5.3.4 at MAIL); a
      2 MiB report without SIZE= (552 5.3.4 at the end of DATA); 24 MiB of empty MIME
      parts (552 5.3.4; the relay's resident set is sampled every 20 ms meanwhile and may
      not grow by more than 16 MiB); 300 parts in 12 KB, and 20 nested multiparts, both
      within the size (550 5.6.0). Nothing of it may be kept: SPOOL/complaints/malformed/
      holds no more files afterwards, and the relay still answers.
  attack_reports.py folded PORT SOURCE FEEDBACK SPOOL
      20 nested multiparts with every Content-Type field folded after its colon (legal
      header syntax): over the budget as well, so 550 5.6.0 and nothing kept.
  attack_reports.py inflight PORT PREFIX ADDRESSES PER-ADDRESS FEEDBACK MAX-REPORT RELAY-PID
      PER-ADDRESS connections from each of PREFIX.1 .. PREFIX.ADDRESSES (strangers) each
      send a report of MAX-REPORT octets less 1 KiB without its end (the relay must keep
      it all, it may still become a valid report). The relay's RSS may grow by no more
      than MAX-REPORT and 128 KiB (its read buffer, allocation slack) per connection and
      32 MiB; once they disconnect it falls back (to within 64 MiB of where it was). Prints the figures: what the limits allow strangers to hold.
  attack_reports.py rate PORT SOURCE FEEDBACK CAP
      CAP small reports from SOURCE are taken (250); the next one's RCPT gets 450 4.7.1.
  attack_reports.py forged PORT PROMO-SOURCE STRANGER FEEDBACK SINK OPS-URL TOKEN READER
      A marketing message of the account "promo" (from PROMO-SOURCE, its network; sender
      domain promo.example, default list "weekly") to READER is delivered
      to the sink; its copy there is the reported message. From STRANGER: a tokenless
      unsigned ARF report with its header section (text/rfc822-headers), one with the
      whole copy (message/rfc822), and one whose List-Unsubscribe carries a forged token
      (the genuine one with characters swapped). Each is answered 250 and changes nothing:
      the admin API shows "promo" not frozen with 0 complaints, READER has no complaint
      suppression and the marketing verdict stays "allowed". Then the positive control:
      the same report with the genuine List-Unsubscribe makes READER suppressed after a
      complaint, counts one complaint, and freezes "promo" ([health] min_volume = 1; the
      account is left frozen: its health window now holds the complaint).
  attack_reports.py unsubscribe PORT PROMO-SOURCE STRANGER SINK OPS-URL TOKEN READER MAX
      A marketing message of "promo" to READER is delivered; from STRANGER, mail to the
      mailto: unsubscribe address of its List-Unsubscribe field: declared larger than MAX
      (SIZE=, 552 5.3.4 at RCPT), then undeclared with MAX + 64 KiB of content (552 5.3.4
      at the end of DATA). READER is still not unsubscribed (admin API: verdict
      "allowed"). Then a short one to the same address is taken (250) and READER is
      unsubscribed from the list (the control).
  attack_reports.py tracking HTTP-PORT
      The click redirect and open pixel of the public listener with made-up tokens: an
      empty one, random base64, a URL in the token's place (plain and percent-encoded),
      one of 5000 characters, a path with more segments. Each is a 404 page without a
      Location header: nothing redirects anywhere, nothing counts.
(FEEDBACK may be a return path, bounces+TOKEN@DOMAIN: the same limits hold there.)
Prints what it sent and what it saw; exits 1 when an assertion fails.
"""

import base64
import glob
import http.client
import os
import re
import sys
import time
import uuid

from attack_common import Client, Closed, RssSampler, admin, done, expect, mib, rss




def transaction(port, source, sender, rcpt, content=None, size=None):
    """The replies of MAIL, RCPT and (when RCPT took) DATA and the content's end."""
    c = Client(port, source, timeout=60)
    replies = []
    try:
        c.ehlo()
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if size else "")
        replies.append(c.cmd(mail))
        if not replies[-1].startswith("250"):
            return replies
        replies.append(c.cmd(f"RCPT TO:<{rcpt}>"))
        if not replies[-1].startswith("250") or content is None:
            return replies
        replies.append(c.cmd("DATA"))
        if not replies[-1].startswith("354"):
            return replies
        # Large content goes out in pieces; the relay reads (and drops) what is past its
        # limit and answers at the end.
        for i in range(0, len(content), 1 << 20):
            c.send(content[i:i + (1 << 20)])
        c.send(b".\r\n")
        replies.append(c.reply())
        c.cmd("QUIT")
    except (Closed, OSError) as e:
        replies.append(f"closed: {e}")
    finally:
        c.close()
    return replies


def kept(spool):
    """Files kept aside: unusable feedback reports and mail to return paths."""
    return (len(glob.glob(os.path.join(spool, "complaints", "malformed", "*")))
            + len(glob.glob(os.path.join(spool, "bounces", "kept-aside", "*"))))


def report_head(boundary="arf"):
    return (f"From: <fbl@reporter.example>\r\nTo: <fbl@relay.test>\r\nSubject: report\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
            f"report-type=feedback-report; boundary=\"{boundary}\"\r\n\r\n").encode()


def nested(depth, folded):
    """A report of `depth` nested multiparts, each with one boundary line; `folded`: each
    Content-Type field folded after its colon."""
    ct = b"Content-Type:\r\n multipart/mixed" if folded else b"Content-Type: multipart/mixed"
    out = report_head("b0")
    for i in range(1, depth):
        out += b"--b%d\r\n" % (i - 1) + ct + b"; boundary=\"b%d\"\r\n\r\n" % i
    out += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % (depth - 1)
    for i in reversed(range(depth)):
        out += b"--b%d--\r\n" % i
    return out


def limits(port, source, feedback, max_report, spool, pid):
    before = kept(spool)
    r = transaction(port, source, "fbl@reporter.example", feedback, size=2 * max_report)
    expect(r[0].startswith("552 5.3.4"), f"MAIL SIZE={2 * max_report}: {r[0]}")

    big = report_head() + b"--arf\r\nContent-Type: text/plain\r\n\r\n" + (
        b"x" * 76 + b"\r\n") * (2 * 1024 * 1024 // 78) + b"--arf--\r\n"
    r = transaction(port, source, "fbl@reporter.example", feedback, big)
    expect(r[-1].startswith("552 5.3.4"), f"a {len(big) / 2**20:.1f} MiB report: {r[-1]}")

    empty_parts = report_head() + b"--arf\r\n\r\n" * (24 * 1024 * 1024 // 9)
    rss_before = rss(pid)[0]
    sampler = RssSampler(pid)
    started = time.monotonic()
    r = transaction(port, source, "fbl@reporter.example", feedback, empty_parts)
    took = time.monotonic() - started
    peak = sampler.stop()
    expect(r[-1].startswith("552 5.3.4"),
           f"{len(empty_parts) / 2**20:.1f} MiB of empty MIME parts in {took:.1f}s: {r[-1]}")
    expect(peak - rss_before < 16 * 1024,
           f"relay RSS during it: {mib(rss_before)} before, peak {mib(peak)} "
           f"(+{mib(peak - rss_before)}), after {mib(rss(pid)[0])}")

    many = report_head() + b"--arf\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 300 + b"--arf--\r\n"
    r = transaction(port, source, "fbl@reporter.example", feedback, many)
    expect(r[-1].startswith("550 5.6.0"), f"300 parts in {len(many)} octets: {r[-1]}")

    deep = nested(20, folded=False)
    r = transaction(port, source, "fbl@reporter.example", feedback, deep)
    expect(r[-1].startswith("550 5.6.0"), f"20 nested multiparts in {len(deep)} octets: {r[-1]}")
    after = kept(spool)
    expect(after == before, f"files kept aside (complaints/malformed/, bounces/kept-aside/): "
           f"{before} -> {after}")
    probe = Client(port, source)
    expect(probe.greeting.startswith("220"), f"the relay still answers: {probe.greeting}")
    probe.close()


def folded(port, source, feedback, spool):
    before = kept(spool)
    deep = nested(20, folded=True)
    r = transaction(port, source, "fbl@reporter.example", feedback, deep)
    expect(r[-1].startswith("550 5.6.0"),
           f"20 nested multiparts, each Content-Type folded, in {len(deep)} octets: {r[-1]}")
    expect(kept(spool) == before, f"files kept aside: {before} -> {kept(spool)}")


def inflight(port, prefix, addresses, per_address, feedback, max_report, pid, budget):
    """Strangers' connections each in the middle of a report: the relay holds no more of
    their content than the strangers' share of [smtp] max_data_memory (`budget` octets);
    those past it are answered 452 4.3.1 at their end, the others as usual."""
    before = rss(pid)[0]
    held = []
    part = b"Subject: slow report\r\n\r\n" + (b"x" * 76 + b"\r\n") * (
        (max_report - 1024) // 78)
    started = time.monotonic()
    try:
        for a in range(1, addresses + 1):
            for _ in range(per_address):
                c = Client(port, f"{prefix}.{a}")
                held.append(c)
                c.ehlo()
                c.expect("MAIL FROM:<fbl@reporter.example>", 250)
                c.expect(f"RCPT TO:<{feedback}>", 250)
                c.expect("DATA", 354)
                c.send(part)
    except (AssertionError, Closed, OSError) as e:
        expect(False, f"connection {len(held)}: {e}")
    time.sleep(1)
    peak = rss(pid)[0]
    sent = len(held) * len(part) // 1024
    # What they sent, or the strangers' budget, whichever is less; plus each connection's
    # read buffer and session, plus slack for the allocator.
    bound = min(len(held) * (max_report // 1024), budget // 1024) + len(held) * 128 + 32 * 1024
    expect(peak - before <= bound,
           f"{len(held)} strangers' connections each in the middle of a "
           f"{len(part) // 1024} KiB report ({time.monotonic() - started:.1f}s): relay RSS "
           f"{mib(before)} -> {mib(peak)} (+{mib(peak - before)} for {mib(sent)} sent; "
           f"at most +{mib(bound)})")
    codes = {}
    for c in held:
        try:
            c.send(b".\r\n")
            code = c.reply()[:9]
        except (Closed, OSError) as e:
            code = f"error {e}"
        codes[code] = codes.get(code, 0) + 1
        c.close()
    print(f"their ends answered: {codes}")
    busy = codes.get("452 4.3.1", 0)
    others = sum(n for code, n in codes.items() if code[:1] in "25" and code != "452 4.3.1")
    expect(busy + others == len(held), f"every end answered 452 4.3.1, 2xx or 5xx: {codes}")
    if sent * 1024 > budget:
        expect(busy > 0, f"{mib(sent)} sent over a {mib(budget // 1024)} budget: "
               f"{busy} answered 452 4.3.1 (at least one)")
        expect(others * max_report <= budget + max_report,
               f"{others} reports taken whole (at most {budget // max_report + 1}, "
               f"what the budget holds)")
    # The relay gives a burst's memory back within a second or two of its end.
    time.sleep(2.5)
    after = rss(pid)[0]
    deadline = time.monotonic() + 5
    while after - before > 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.25)
        after = rss(pid)[0]
    expect(after - before <= 64 * 1024, f"after they disconnect: {mib(after)} "
           f"(at most {mib(before + 64 * 1024)})")


def rate(port, source, feedback, cap):
    small = report_head() + b"--arf\r\nContent-Type: text/plain\r\n\r\nnot a report\r\n--arf--\r\n"
    for i in range(cap):
        r = transaction(port, source, "fbl@reporter.example", feedback, small)
        expect(r[-1].startswith("250"), f"report {i + 1} of {cap}: {r[-1]}")
    r = transaction(port, source, "fbl@reporter.example", feedback, small)
    expect(len(r) == 2 and r[1].startswith("450 4.7.1"), f"report {cap + 1}: RCPT {r[-1]}")


# ---------------------------------------------------------------- forged complaints


def deliver_marketing(port, source, reader, sink, tag):
    c = Client(port, source)
    c.ehlo()
    c.expect("MAIL FROM:<bounce@promo.example>", 250)
    c.expect(f"RCPT TO:<{reader}>", 250)
    c.expect("DATA", 354)
    c.send(f"From: Promo <hello@promo.example>\r\nTo: <{reader}>\r\nSubject: {tag}\r\n"
           f"Message-ID: <{tag}@promo.example>\r\n\r\nThis week's offers.\r\n.\r\n".encode())
    r = c.reply()
    c.close()
    expect(r.startswith("250 2.0.0 OK queued"), f"marketing to {reader}: {r}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(sink, "*.eml")):
            data = open(path, "rb").read()
            if f"Subject: {tag}".encode() in data:
                return data
        time.sleep(0.25)
    raise AssertionError(f"{tag} did not reach the sink")


def header_section(message):
    return message.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def without_list_unsubscribe(message):
    """The message with every List-Unsubscribe(-Post) field (and its folded lines) gone."""
    head, _, body = message.partition(b"\r\n\r\n")
    out, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(b"list-unsubscribe")
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def forge_token(message):
    """The message with the tokens in its List-Unsubscribe field altered."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    inside = False
    for i, line in enumerate(lines):
        if line[:1] not in (b" ", b"\t"):
            inside = line.lower().startswith(b"list-unsubscribe:")
        if inside:
            # Four more characters in front of each token: no longer one the relay sealed.
            lines[i] = line.replace(b"/u/", b"/u/AAAA").replace(
                b"unsubscribe+", b"unsubscribe+AAAA")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def arf(reader, original, kind):
    boundary = "arf-" + uuid.uuid4().hex[:8]
    ctype = "text/rfc822-headers" if kind == "headers" else "message/rfc822"
    return (
        f"From: <fbl@mailbox.example>\r\nTo: <fbl@relay.test>\r\nSubject: FW: complaint\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; "
        f"boundary=\"{boundary}\"\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: forger/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: <{reader}>\r\n\r\n"
        f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n"
    ).encode() + original + f"\r\n--{boundary}--\r\n".encode()


def standing(ops, token, reader):
    _, a = admin(ops, token, "GET", "/admin/accounts/promo")
    _, s = admin(ops, token, "GET", f"/admin/suppressions/{reader}?account=promo&list=weekly")
    return a, s


def complaint_suppressed(s):
    return any("complaint" in v for v in s["suppressed"].values())


def forged(port, promo_source, stranger, feedback, sink, ops, token, reader):
    tag = "forged-target-" + uuid.uuid4().hex[:8]
    copy = deliver_marketing(port, promo_source, reader, sink, tag)
    expect(b"List-Unsubscribe:" in copy, "the delivered copy has a List-Unsubscribe field")
    # The delivery must be counted before a complaint could be judged against it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a, s = standing(ops, token, reader)
        if (a.get("results") or {}).get("delivered", 0) >= 1:
            break
        time.sleep(0.25)
    print(f"before: account promo: frozen={a['frozen']} results={a['results']}; "
          f"{reader}: suppressed={s['suppressed']} verdict={s['verdict']!r}")
    reports = {
        "tokenless, unsigned, text/rfc822-headers": arf(
            reader, header_section(without_list_unsubscribe(copy)), "headers"),
        "tokenless, unsigned, message/rfc822": arf(
            reader, without_list_unsubscribe(copy), "message"),
        "forged token, unsigned, message/rfc822": arf(reader, forge_token(copy), "message"),
    }
    for what, report in reports.items():
        r = transaction(port, stranger, "fbl@mailbox.example", feedback, report)
        expect(r[-1].startswith("250"), f"{what}: {r[-1]}")
    time.sleep(0.5)
    a, s = standing(ops, token, reader)
    print(f"after the forged reports: account promo: frozen={a['frozen']} "
          f"results={a['results']}; {reader}: suppressed={s['suppressed']} "
          f"verdict={s['verdict']!r}")
    expect(a["frozen"] is None, "account promo is not frozen")
    expect(a["results"]["complaints"] == 0, "no complaint counted for promo")
    expect(not complaint_suppressed(s), f"{reader} has no complaint suppression")
    expect(s["verdict"] == "allowed", f"marketing to {reader}: {s['verdict']}")

    # Positive control: the genuine token is what makes a report count.
    r = transaction(port, stranger, "fbl@mailbox.example", feedback,
                    arf(reader, header_section(copy), "headers"))
    expect(r[-1].startswith("250"), f"the genuine report: {r[-1]}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a, s = standing(ops, token, reader)
        if a["frozen"] and complaint_suppressed(s):
            break
        time.sleep(0.25)
    print(f"after the genuine report: account promo: frozen={a['frozen']} "
          f"results={a['results']}; {reader}: suppressed={s['suppressed']} "
          f"verdict={s['verdict']!r}")
    expect(complaint_suppressed(s) and a["results"]["complaints"] == 1 and a["frozen"],
           "control: the genuine report suppresses, counts and freezes")


def unsubscribe(port, promo_source, stranger, sink, ops, token, reader, limit):
    tag = "unsubscribe-size-" + uuid.uuid4().hex[:8]
    copy = deliver_marketing(port, promo_source, reader, sink, tag)
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", copy.split(b"\r\n\r\n", 1)[0])
    mailto = re.search(rb"<mailto:(unsubscribe\+[^@>]+@[^>]+)>", unfolded)
    expect(mailto is not None, "the delivered copy has a mailto: unsubscribe link")
    if mailto is None:
        return
    address = mailto.group(1).decode()
    r = transaction(port, stranger, "reader@example.net", address, size=limit + 1)
    expect(r[-1].startswith("552 5.3.4"), f"SIZE={limit + 1} to the unsubscribe address: {r[-1]}")
    big = (f"From: <{reader}>\r\nSubject: unsubscribe\r\n\r\n").encode() + (
        b"y" * 70 + b"\r\n") * ((limit + 65536) // 72)
    r = transaction(port, stranger, "reader@example.net", address, big)
    expect(r[-1].startswith("552 5.3.4"), f"{len(big)} octets to it: {r[-1]}")
    _, s = admin(ops, token, "GET", f"/admin/suppressions/{reader}?account=promo&list=weekly")
    expect(s["verdict"] == "allowed", f"{reader} after the refused mails: {s['verdict']}")
    r = transaction(port, stranger, "reader@example.net", address,
                    f"From: <{reader}>\r\nSubject: unsubscribe\r\n\r\nplease\r\n".encode())
    expect(r[-1].startswith("250"), f"a short one (control): {r[-1]}")
    _, s = admin(ops, token, "GET", f"/admin/suppressions/{reader}?account=promo&list=weekly")
    expect("unsubscribe" in s["suppressed"]["list"], f"{reader} then: {s['suppressed']}")


def tracking(http_port):
    junk = base64.urlsafe_b64encode(os.urandom(120)).decode().rstrip("=")
    paths = []
    for kind in ("c", "o"):
        paths += [f"/{kind}/{junk}", f"/{kind}/https://evil.example/",
                  f"/{kind}/https%3A%2F%2Fevil.example%2F", f"/{kind}/" + "A" * 5000,
                  f"/{kind}/{junk}/https://evil.example/", f"/{kind}/"]
    for path in paths:
        conn = http.client.HTTPConnection("127.0.0.1", int(http_port), timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            status, location = r.status, r.getheader("Location")
        except (OSError, http.client.HTTPException) as e:
            status, location = f"error {e}", None
        finally:
            conn.close()
        shown = path if len(path) < 60 else path[:57] + "..."
        expect(status in (404, 414, 431) and location is None,
               f"GET {shown}: {status}, Location {location}")


def main():
    a = sys.argv[1:]
    if len(a) == 7 and a[0] == "limits":
        limits(int(a[1]), a[2], a[3], int(a[4]), a[5], int(a[6]))
    elif len(a) == 5 and a[0] == "folded":
        folded(int(a[1]), a[2], a[3], a[4])
    elif len(a) == 9 and a[0] == "inflight":
        inflight(int(a[1]), a[2], int(a[3]), int(a[4]), a[5], int(a[6]), int(a[7]), int(a[8]))
    elif len(a) == 5 and a[0] == "rate":
        rate(int(a[1]), a[2], a[3], int(a[4]))
    elif len(a) == 9 and a[0] == "unsubscribe":
        unsubscribe(int(a[1]), a[2], a[3], a[4], a[5], a[6], a[7], int(a[8]))
    elif len(a) == 9 and a[0] == "forged":
        forged(int(a[1]), a[2], a[3], a[4], a[5], a[6], a[7], a[8])
    elif len(a) == 2 and a[0] == "tracking":
        tracking(a[1])
    else:
        sys.exit(__doc__)
    done()


if __name__ == "__main__":
    main()

