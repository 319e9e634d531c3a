#!/usr/bin/python3
"""Unsubscribes in a real browser (for run.sh): drives a headless Chromium over the
DevTools protocol (CDP).

Usage: browser_unsubscribe.py CDP_PORT URL LIST_NAME

Chromium must already run with --remote-debugging-port=CDP_PORT on 127.0.0.1. The script
opens URL (an unsubscribe link from a delivered message) in a page of that browser,
checks that the page names LIST_NAME and that the first form's submit button reads
"Unsubscribe from LIST_NAME", clicks that button with real mouse events, and checks that
the browser POSTed the form to URL, got 200, and shows "You are unsubscribed". Prints
each step; exit 1 on any mismatch.

Debian's /usr/bin/python3 with python3-websocket (websocket-client) only.
"""

import collections
import json
import sys
import time
import urllib.request

import websocket

TIMEOUT = 15  # seconds for each step


class Failed(Exception):
    pass


def http(method, url):
    # No proxy: an http_proxy in the environment must not capture 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=5) as r:
        return json.loads(r.read().decode("utf-8"))


def page_target(port):
    """The webSocketDebuggerUrl of a page of the browser (a new one if it has none)."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            targets = http("GET", f"{base}/json/list")
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise Failed(f"no DevTools endpoint at {base}: {e}")
            time.sleep(0.2)
    pages = [t for t in targets if t.get("type") == "page"]
    if pages:
        return pages[0]["webSocketDebuggerUrl"]
    return http("PUT", f"{base}/json/new?about:blank")["webSocketDebuggerUrl"]


class Cdp:
    """One CDP session over a websocket: commands wait for their answer; events queue."""

    def __init__(self, ws_url):
        # suppress_origin: Chromium refuses DevTools websockets with an Origin header
        # unless started with --remote-allow-origins.
        self.ws = websocket.create_connection(
            ws_url, timeout=TIMEOUT, suppress_origin=True, http_no_proxy=["127.0.0.1"]
        )
        self.next_id = 0
        self.events = collections.deque()
        self.documents = []  # (method, url, status) of each document loaded
        self.methods = {}  # requestId -> HTTP method of document requests

    def _receive(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failed("timed out waiting for the browser")
        self.ws.settimeout(remaining)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise Failed("timed out waiting for the browser") from None

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self._receive(deadline)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise Failed(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method):
        deadline = time.monotonic() + TIMEOUT
        while True:
            while self.events:
                msg = self.events.popleft()
                self._note(msg)
                if msg["method"] == method:
                    return msg.get("params", {})
            msg = self._receive(deadline)
            if "method" in msg:
                self.events.append(msg)

    def _note(self, msg):
        """Records document requests and responses, for the report and the POST check."""
        p = msg.get("params", {})
        if msg["method"] == "Network.requestWillBeSent" and p.get("type") == "Document":
            self.methods[p["requestId"]] = p["request"]["method"]
        elif msg["method"] == "Network.responseReceived" and p.get("type") == "Document":
            r = p["response"]
            entry = (self.methods.get(p["requestId"], "?"), r["url"], r["status"])
            self.documents.append(entry)
            print("browser: %s %s -> %s" % entry)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise Failed(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click_at(self, rect):
        """A real left click (move, press, release) at rect's x, y; returns how many
        documents were loaded before it, and clears the event queue."""
        before = len(self.documents)
        self.events.clear()
        mouse = {"x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1}
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=rect["x"], y=rect["y"])
        self.call("Input.dispatchMouseEvent", type="mousePressed", **mouse)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", **mouse)
        return before

    def close(self):
        self.ws.close()


PAGE_STATE = """(() => {
  const form = document.forms[0];
  const button = form && form.querySelector('button[type=submit], input[type=submit]');
  let rect = null;
  if (button) {
    button.scrollIntoView({block: 'center'});
    const r = button.getBoundingClientRect();
    rect = {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width, h: r.height};
  }
  return {
    url: location.href,
    title: document.title,
    h1: (document.querySelector('h1') || {}).innerText || '',
    text: document.body ? document.body.innerText : '',
    forms: document.forms.length,
    button: button ? (button.innerText || button.value).trim() : null,
    rect: rect,
  };
})()"""


def show(state):
    print(f"page: {state['url']}")
    print(f"  title: {state['title']!r}, h1: {state['h1']!r}, forms: {state['forms']}")
    for line in state["text"].splitlines():
        if line.strip():
            print(f"  | {line}")


def run(port, url, list_name):
    cdp = Cdp(page_target(port))
    try:
        for domain in ("Page", "Network", "Runtime"):
            cdp.call(f"{domain}.enable")

        print(f"open: {url}")
        cdp.events.clear()
        nav = cdp.call("Page.navigate", url=url)
        if nav.get("errorText"):
            raise Failed(f"navigation failed: {nav['errorText']}")
        cdp.wait_event("Page.loadEventFired")
        state = cdp.evaluate(PAGE_STATE)
        show(state)
        if not cdp.documents or cdp.documents[-1][2] != 200:
            raise Failed("the unsubscribe page did not load with 200")
        if list_name not in state["text"]:
            raise Failed(f"the page does not show {list_name!r}")
        want = f"Unsubscribe from {list_name}"
        if state["button"] != want:
            raise Failed(f"the first form's button reads {state['button']!r}, not {want!r}")
        rect = state["rect"]
        if rect["w"] <= 0 or rect["h"] <= 0:
            raise Failed(f"the button is not visible: {rect}")

        print(f"click: {state['button']!r} at ({rect['x']:.0f}, {rect['y']:.0f})")
        before = cdp.click_at(rect)
        cdp.wait_event("Page.loadEventFired")
        state = cdp.evaluate(PAGE_STATE)
        show(state)
        submitted = cdp.documents[before:]
        if not submitted:
            raise Failed("the click loaded no new document")
        method, posted_url, status = submitted[-1]
        if (method, posted_url, status) != ("POST", url, 200):
            raise Failed(f"the click gave {method} {posted_url} -> {status}, "
                         f"expected POST {url} -> 200")
        if state["h1"] != "You are unsubscribed" or "You are unsubscribed" not in state["title"]:
            raise Failed("the confirmation page does not say 'You are unsubscribed'")
        print("confirmed: You are unsubscribed")
    finally:
        cdp.close()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    try:
        run(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    except (Failed, OSError, websocket.WebSocketException) as e:
        print(f"FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
