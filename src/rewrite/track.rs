//! Engagement tracking, for the lists that opt in (`track_clicks`, `track_opens`): each
//! recipient's copy gets its links in the text and HTML bodies pointed at the relay's
//! click redirect (`<public_url>/c/TOKEN`) and, in HTML, an open pixel
//! (`<public_url>/o/TOKEN`). Each token is sealed ([`TokenKeys::seal_engagement`]): it
//! names the message, the recipient, the account, list and campaign, and for a click the
//! link's own target — so the redirect can only lead where the message's link led (no
//! open redirect), and nobody can count an engagement that did not happen.
//!
//! What is rewritten: `http://` and `https://` URLs — in HTML the values of `href`
//! attributes (entities such as `&amp;` decoded for the target), in plain text bare URLs up
//! to white space, `<`, `>` or a quote, without trailing punctuation. Not rewritten: the
//! relay's own links (`<public_url>/…`: unsubscribe, report), `mailto:` and other schemes,
//! URLs over [`MAX_TRACKED_URL`] octets, and links past the first [`MAX_LINKS`] of a body.
//! The pixel goes before the last `</body>`, or at the end of the HTML.

use super::token::{Engagement, MAX_TRACKED_URL, TokenKeys};

/// Most links rewritten in one body.
pub const MAX_LINKS: usize = 200;

/// What one recipient's copy is tracked with.
pub struct Tracking<'a> {
    pub keys: &'a TokenKeys,
    /// `[unsubscribe] public_url`, without a trailing slash.
    pub public_url: &'a str,
    /// The token fields; `click` and `url` are set per link.
    pub base: Engagement,
    pub clicks: bool,
    pub opens: bool,
}

impl Tracking<'_> {
    fn click_url(&self, target: &str) -> String {
        let token = self.keys.seal_engagement(&Engagement {
            click: true,
            url: target.to_string(),
            ..self.base.clone()
        });
        format!("{}/c/{token}", self.public_url)
    }

    fn pixel(&self) -> String {
        let token = self.keys.seal_engagement(&Engagement {
            click: false,
            url: String::new(),
            ..self.base.clone()
        });
        format!(
            "<img src=\"{}/o/{token}\" width=\"1\" height=\"1\" alt=\"\" \
             style=\"display:block;width:1px;height:1px;border:0\">",
            self.public_url
        )
    }

    /// Whether `url` is one to track.
    fn tracks(&self, url: &str) -> bool {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        (lower.starts_with("http://") || lower.starts_with("https://"))
            && url.len() <= MAX_TRACKED_URL
            && !url.starts_with(self.public_url)
            && !url.contains(|c: char| c.is_whitespace() || c.is_control())
    }

    /// A body with its links (and, in HTML, the pixel) rewritten; `None` when nothing
    /// changed.
    pub fn body(&self, html: bool, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = if self.clicks {
            if html {
                self.html_links(body)
            } else {
                self.text_links(body)
            }
        } else {
            None
        };
        if html && self.opens {
            let current = out.as_deref().unwrap_or(body);
            let at = last_body_close(current).unwrap_or(current.len());
            let pixel = self.pixel();
            let mut with = Vec::with_capacity(current.len() + pixel.len() + 2);
            with.extend_from_slice(&current[..at]);
            with.extend_from_slice(pixel.as_bytes());
            with.extend_from_slice(b"\r\n");
            with.extend_from_slice(&current[at..]);
            out = Some(with);
        }
        out
    }

    /// `href="…"` values that are tracked URLs, rewritten.
    fn html_links(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(body.len() + 256);
        let (mut cursor, mut i, mut links) = (0, 0, 0);
        while links < MAX_LINKS {
            let Some(at) = find_ci(&body[i..], b"href").map(|p| p + i) else {
                break;
            };
            i = at + 4;
            // href, spaces, =, spaces, a quote
            let mut j = i;
            while body.get(j).is_some_and(u8::is_ascii_whitespace) {
                j += 1;
            }
            if body.get(j) != Some(&b'=') {
                continue;
            }
            j += 1;
            while body.get(j).is_some_and(u8::is_ascii_whitespace) {
                j += 1;
            }
            let Some(&quote) = body.get(j).filter(|q| **q == b'"' || **q == b'\'') else {
                continue;
            };
            let start = j + 1;
            let Some(len) = memchr::memchr(quote, &body[start..]) else {
                break;
            };
            let end = start + len;
            i = end + 1;
            let Ok(value) = std::str::from_utf8(&body[start..end]) else {
                continue;
            };
            let target = unescape_html(value.trim());
            if !self.tracks(&target) {
                continue;
            }
            out.extend_from_slice(&body[cursor..start]);
            out.extend_from_slice(self.click_url(&target).as_bytes());
            cursor = end;
            links += 1;
        }
        (cursor > 0).then(|| {
            out.extend_from_slice(&body[cursor..]);
            out
        })
    }

    /// Bare `http(s)://` URLs of plain text, rewritten.
    fn text_links(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(body.len() + 256);
        let (mut cursor, mut i, mut links) = (0, 0, 0);
        while links < MAX_LINKS {
            let Some(at) = find_ci(&body[i..], b"http").map(|p| p + i) else {
                break;
            };
            i = at + 4;
            let word_start = at == 0 || !body[at - 1].is_ascii_alphanumeric();
            let mut end = at;
            while body
                .get(end)
                .is_some_and(|b| !b.is_ascii_whitespace() && !b"<>\"'".contains(b))
            {
                end += 1;
            }
            while end > at && b".,;:!?)]}".contains(&body[end - 1]) {
                end -= 1;
            }
            let Ok(url) = std::str::from_utf8(&body[at..end]) else {
                continue;
            };
            if !word_start || !self.tracks(url) {
                continue;
            }
            out.extend_from_slice(&body[cursor..at]);
            out.extend_from_slice(self.click_url(url).as_bytes());
            cursor = end;
            i = end;
            links += 1;
        }
        (cursor > 0).then(|| {
            out.extend_from_slice(&body[cursor..]);
            out
        })
    }
}

/// The first position of `needle` (ASCII, lower case) in `hay`, ignoring case.
fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Where the last `</body>` starts, ignoring case.
fn last_body_close(html: &[u8]) -> Option<usize> {
    html.windows(7)
        .rposition(|w| w.eq_ignore_ascii_case(b"</body>"))
}

/// The entities a URL in an attribute commonly carries, decoded.
fn unescape_html(value: &str) -> String {
    value
        .replace("&amp;", "&")
        .replace("&#38;", "&")
        .replace("&#x26;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;

    fn keys() -> TokenKeys {
        TokenKeys::from_keys(&[(1, [5; 32])])
    }

    fn tracking(keys: &TokenKeys, clicks: bool, opens: bool) -> Tracking<'_> {
        Tracking {
            keys,
            public_url: "https://t.relay.example",
            base: Engagement {
                click: false,
                id: QueueId(7),
                account: "shop".into(),
                list: "weekly".into(),
                campaign: "spring".into(),
                url: String::new(),
                address: "jane@example.net".into(),
            },
            clicks,
            opens,
        }
    }

    fn targets(keys: &TokenKeys, text: &str) -> Vec<String> {
        text.split("https://t.relay.example/c/")
            .skip(1)
            .map(|rest| {
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                keys.open_engagement(&token).unwrap().url
            })
            .collect()
    }

    #[test]
    fn html_links_lead_where_they_led_and_nowhere_else() {
        let k = keys();
        let t = tracking(&k, true, true);
        let html = b"<p><a href=\"https://shop.example/sale?a=1&amp;b=2\">Sale</a> \
            <A HREF='http://shop.example/x'>x</A> <a href=\"mailto:help@shop.example\">m</a> \
            <a href=\"https://t.relay.example/u/TOKEN\">unsubscribe</a></p></body></html>";
        let out = String::from_utf8(t.body(true, html).unwrap()).unwrap();
        assert_eq!(
            targets(&k, &out),
            ["https://shop.example/sale?a=1&b=2", "http://shop.example/x"]
        );
        assert!(out.contains("mailto:help@shop.example"));
        assert!(out.contains("https://t.relay.example/u/TOKEN"));
        // The pixel before </body>, with a token that is an open.
        let pixel = out.find("<img src=\"https://t.relay.example/o/").unwrap();
        assert!(pixel < out.find("</body>").unwrap());
        assert!(!out.contains("jane"), "the address is sealed");
    }

    #[test]
    fn text_urls_without_their_punctuation() {
        let k = keys();
        let t = tracking(&k, true, false);
        let text = b"See https://shop.example/a. Or (https://shop.example/b), \
            <https://shop.example/c> and xhttps://no.example and http:/broken\r\n";
        let out = String::from_utf8(t.body(false, text).unwrap()).unwrap();
        assert_eq!(
            targets(&k, &out),
            [
                "https://shop.example/a",
                "https://shop.example/b",
                "https://shop.example/c"
            ]
        );
        assert!(out.contains("xhttps://no.example") && out.contains("http:/broken"));
        assert!(out.contains(". Or (") && out.contains("), <"));
        // Opens only: plain text is left alone.
        assert!(tracking(&k, false, true).body(false, text).is_none());
    }

    #[test]
    fn link_count_and_length_are_bounded() {
        let k = keys();
        let t = tracking(&k, true, false);
        let many = "https://shop.example/x ".repeat(MAX_LINKS + 50);
        let out = String::from_utf8(t.body(false, many.as_bytes()).unwrap()).unwrap();
        assert_eq!(out.matches("/c/").count(), MAX_LINKS);
        let long = format!("https://shop.example/{}", "a".repeat(MAX_TRACKED_URL));
        assert!(t.body(false, long.as_bytes()).is_none());
        // Hostile input never panics.
        for junk in [
            &b"href"[..],
            b"href=",
            b"href=\"",
            b"http",
            b"\xff\xfehttp://\xff",
        ] {
            let _ = t.body(true, junk);
            let _ = t.body(false, junk);
        }
    }
}
