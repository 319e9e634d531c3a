//! Who an account is to its recipients: the name they know it by (`display_name`, never
//! the internal `description`), how to reach it (`contact_address`) and where it is
//! (`postal_address`) — both required of an account that sends marketing, as the
//! anti-spam policy asks for the sender's true e-mail address and CAN-SPAM for its postal
//! address in every message — and how its pages look (`logo_url`, `brand_colour`).

use crate::config::reader::Section;

/// The sender's identity as recipients see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// Shown in footers and on its pages; defaults to the account's name.
    pub display_name: String,
    pub contact_address: Option<String>,
    pub postal_address: Option<String>,
    /// An `https://` image shown on its pages.
    pub logo_url: Option<String>,
    /// `#rrggbb`, the accent of its pages.
    pub brand_colour: Option<String>,
}

const MAX_DISPLAY_NAME: usize = 100;
const MAX_POSTAL: usize = 300;
const MAX_URL: usize = 500;

fn plain_text(v: &str, max: usize) -> bool {
    !v.trim().is_empty() && v.chars().count() <= max && !v.chars().any(char::is_control)
}

/// A mailbox as the policy writes it: `local@domain`, nothing around it.
fn mailbox(v: &str) -> bool {
    let Some((local, domain)) = v.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && v.len() <= 254
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\",;".contains(c))
        && crate::smtp::address::canonical_domain(domain).is_some()
}

/// Reads the keys of one account; `marketing`: the account may send marketing mail.
pub fn read_sender(s: &mut Section<'_>, name: &str, marketing: bool) -> Sender {
    let display_name = s.get_or("display_name", name.to_string());
    if !plain_text(&display_name, MAX_DISPLAY_NAME) {
        s.problem(
            "display_name",
            format!("1 to {MAX_DISPLAY_NAME} characters, no control characters"),
        );
    }
    let contact_address = s.get::<String>("contact_address");
    if let Some(c) = &contact_address
        && !mailbox(c)
    {
        s.problem(
            "contact_address",
            format!("{c:?} is not an address (write local@domain, nothing around it)"),
        );
    }
    let postal_address = s.get::<String>("postal_address");
    if let Some(p) = &postal_address
        && !plain_text(p, MAX_POSTAL)
    {
        s.problem(
            "postal_address",
            format!("1 to {MAX_POSTAL} characters on one line (separate its parts with commas)"),
        );
    }
    if marketing {
        for (key, value) in [
            ("contact_address", &contact_address),
            ("postal_address", &postal_address),
        ] {
            if value.is_none() {
                s.problem(
                    key,
                    "required of an account that sends marketing: every marketing message \
                     names the sender's e-mail and postal address",
                );
            }
        }
    }
    let logo_url = s.get::<String>("logo_url");
    if let Some(u) = &logo_url
        && (!u.starts_with("https://")
            || u.len() > MAX_URL
            || u.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"'<>\\".contains(c)))
    {
        s.problem(
            "logo_url",
            format!("an https:// address of at most {MAX_URL} characters, no quotes or spaces"),
        );
    }
    let brand_colour = s.get::<String>("brand_colour");
    if let Some(c) = &brand_colour
        && !(c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        s.problem("brand_colour", format!("{c:?} is not #rrggbb"));
    }
    Sender {
        display_name,
        contact_address,
        postal_address,
        logo_url,
        brand_colour: brand_colour.map(|c| c.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        assert!(mailbox("hello@shop.example"));
        assert!(mailbox("a.b+c@bücher.example"));
        for bad in [
            "",
            "shop.example",
            "@shop.example",
            "a b@x.org",
            "<a@x.org>",
            "a@",
            "a@-x",
        ] {
            assert!(!mailbox(bad), "{bad}");
        }
    }
}
