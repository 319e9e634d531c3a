#!/usr/bin/python3
"""The recipient's preference page in a real browser, with JavaScript off (for run.sh):
drives a headless Chromium over the DevTools protocol, as browser_unsubscribe.py does.

Usage: browser_preferences.py CDP_PORT URL LEFT_LIST KEPT_LIST

URL is the unsubscribe link of a delivered message whose list (LEFT_LIST, by name) the
reader already left; the reader is also on KEPT_LIST. With script execution disabled the
script opens URL and checks the page: one h1, lang, a fieldset with a legend, a label for
every checkbox, LEFT_LIST unchecked and KEPT_LIST checked. It clicks KEPT_LIST's label
(real mouse events) to uncheck it, clicks "Save my choices" and checks that the browser
POSTed to URL/preferences and got "You left KEPT_LIST"; opens URL again and checks that
KEPT_LIST is unchecked now; clicks "I unsubscribed from LEFT_LIST by mistake" and checks
the POST to URL/resubscribe answers "Please check your inbox". Exit 1 on any mismatch.
"""

import sys

import websocket

from browser_unsubscribe import Cdp, Failed, page_target

STATE = """(() => {
  const boxes = [...document.querySelectorAll('input[type=checkbox]')];
  return {
    url: location.href,
    title: document.title,
    lang: document.documentElement.lang,
    h1s: document.querySelectorAll('h1').length,
    legend: (document.querySelector('fieldset > legend') || {}).innerText || '',
    text: document.body ? document.body.innerText : '',
    scripts: document.scripts.length,
    boxes: boxes.map(b => {
      const label = document.querySelector('label[for="' + b.id + '"]');
      return {id: b.id, checked: b.checked, label: label ? label.innerText.trim() : null};
    }),
  };
})()"""

# The centre of the first element matching a selector whose text contains a string.
WHERE = """((selector, text) => {
  const el = [...document.querySelectorAll(selector)]
    .find(e => (e.innerText || e.value || '').includes(text));
  if (!el) return null;
  el.scrollIntoView({block: 'center'});
  const r = el.getBoundingClientRect();
  return {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width, h: r.height};
})(%s, %s)"""


def state(cdp):
    s = cdp.evaluate(STATE)
    print(f"page: {s['url']}")
    print(f"  title: {s['title']!r}; checkboxes: {s['boxes']}")
    return s


def click(cdp, selector, text, navigates=True):
    import json

    rect = cdp.evaluate(WHERE % (json.dumps(selector), json.dumps(text)))
    if not rect or rect["w"] <= 0 or rect["h"] <= 0:
        raise Failed(f"no visible {selector} with {text!r}")
    print(f"click: {selector} {text!r} at ({rect['x']:.0f}, {rect['y']:.0f})")
    before = cdp.click_at(rect)
    if navigates:
        cdp.wait_event("Page.loadEventFired")
        loaded = cdp.documents[before:]
        if not loaded:
            raise Failed("the click loaded no new document")
        return loaded[-1]
    return None


def open_page(cdp, url):
    cdp.events.clear()
    nav = cdp.call("Page.navigate", url=url)
    if nav.get("errorText"):
        raise Failed(f"navigation failed: {nav['errorText']}")
    cdp.wait_event("Page.loadEventFired")
    if not cdp.documents or cdp.documents[-1][2] != 200:
        raise Failed("the page did not load with 200")
    return state(cdp)


def box(s, name):
    found = [b for b in s["boxes"] if b["label"] == name]
    if len(found) != 1:
        raise Failed(f"no single checkbox labelled {name!r}: {s['boxes']}")
    return found[0]


def run(port, url, left, kept):
    cdp = Cdp(page_target(port))
    try:
        for domain in ("Page", "Network", "Runtime"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setScriptExecutionDisabled", value=True)
        print("JavaScript disabled for the page")

        s = open_page(cdp, url)
        if not s["title"].startswith("Your subscriptions with"):
            raise Failed(f"title {s['title']!r}")
        if s["lang"] != "en" or s["h1s"] != 1 or not s["legend"] or s["scripts"]:
            raise Failed(f"structure: lang {s['lang']!r}, {s['h1s']} h1, legend "
                         f"{s['legend']!r}, {s['scripts']} scripts")
        if any(b["label"] is None for b in s["boxes"]):
            raise Failed("a checkbox without a label")
        if f"You unsubscribed from {left}" not in s["text"]:
            raise Failed(f"the page does not say the reader left {left!r}")
        if box(s, left)["checked"] or not box(s, kept)["checked"]:
            raise Failed(f"expected {left!r} unchecked and {kept!r} checked")

        click(cdp, "label", kept, navigates=False)
        if box(state(cdp), kept)["checked"]:
            raise Failed(f"clicking the label did not uncheck {kept!r}")
        method, posted, status = click(cdp, "button", "Save my choices")
        s = state(cdp)
        if (method, posted, status) != ("POST", url + "/preferences", 200):
            raise Failed(f"saving gave {method} {posted} -> {status}")
        if f"You left {kept}." not in s["text"]:
            raise Failed(f"the answer does not say 'You left {kept}.': {s['text']!r}")
        print(f"saved: You left {kept}.")

        s = open_page(cdp, url)
        if box(s, kept)["checked"]:
            raise Failed(f"{kept!r} is still checked after saving")
        method, posted, status = click(cdp, "button", "by mistake")
        s = state(cdp)
        if (method, posted, status) != ("POST", url + "/resubscribe", 200):
            raise Failed(f"'by mistake' gave {method} {posted} -> {status}")
        if "Please check your inbox" not in s["title"]:
            raise Failed(f"the answer is {s['title']!r}, not 'Please check your inbox'")
        print("confirmed: Please check your inbox")
    finally:
        cdp.close()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    try:
        run(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
    except (Failed, OSError, websocket.WebSocketException) as e:
        print(f"FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
