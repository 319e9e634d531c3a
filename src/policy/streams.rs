//! What an account sends: its streams (marketing, transactional) and its lists.
//!
//! Marketing mail needs recorded consent for one of the account's lists; transactional mail
//! (service and security notices) does not, but still never reaches addresses that bounced,
//! complained, were blocked or erased. An account may only use the streams its policy
//! allows. A list carries what the footer of its mail says about consent.

use crate::config::reader::Section;
use crate::envelope::Stream;

/// How people may subscribe themselves through the relay's form endpoint
/// (`POST /s/ACCOUNT/LIST`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OptIn {
    /// No form: consent comes from the operator and the account's API only.
    #[default]
    Off,
    /// The form's address is subscribed at once (the list says it needs no confirmation).
    Single,
    /// The form sends a confirmation message; consent is recorded when its link is
    /// followed and its button pressed.
    Double,
}

/// The placeholders of a confirmation message's text.
pub const CONFIRM_PLACEHOLDERS: [&str; 3] = ["list", "account", "confirm"];

/// The confirmation message of a list without its own.
pub const DEFAULT_CONFIRM_SUBJECT: &str = "Please confirm your subscription to {list}";
pub const DEFAULT_CONFIRM_TEXT: &str = "Someone, probably you, asked to receive {list} from \
{account} at this address.\n\nTo confirm, open this link and press the button on the page:\n\n\
{confirm}\n\nIf you did not ask for this, ignore this message: nothing will be sent to you.";

/// A mailing list of an account.
#[derive(Debug, Clone, Default)]
pub struct MailingList {
    /// `[a-z0-9_-]`, as in `X-Optin-List` and `lists import --list`.
    pub id: String,
    /// The name people know the list by.
    pub name: String,
    /// The footer sentence saying why the recipient gets the mail; may use `{list}`,
    /// `{account}` (the display name), `{source}`, `{unsubscribe}`, `{contact}` and
    /// `{postal_address}`.
    pub consent_statement: String,
    /// Where and how people subscribed (`{source}` in the statement).
    pub consent_source: String,
    /// Links in the body go through the relay's click redirect (`/c/TOKEN`).
    pub track_clicks: bool,
    /// The HTML body carries the open pixel (`/o/TOKEN`).
    pub track_opens: bool,
    /// The subscription form (`subscribe = "off" | "single" | "double"`).
    pub subscribe: OptIn,
    /// The confirmation message's subject and text (`{list}`, `{account}`, `{confirm}`).
    pub confirm_subject: String,
    pub confirm_text: String,
    /// Where the form may send people after it (exact URLs).
    pub thank_you_urls: Vec<String>,
    /// Consent older than this (since its grant, its last confirmation or engagement)
    /// stops marketing like missing consent; `None`: it does not age.
    pub consent_max_age: Option<std::time::Duration>,
}

impl MailingList {
    /// Its mail is rewritten for engagement tracking.
    pub fn tracks(&self) -> bool {
        self.track_clicks || self.track_opens
    }
}

/// The placeholders a consent statement may use.
pub const PLACEHOLDERS: [&str; 6] = [
    "list",
    "account",
    "source",
    "unsubscribe",
    "contact",
    "postal_address",
];

/// Checks `{…}` placeholders: known names, balanced braces.
pub fn check_template(text: &str) -> Result<(), String> {
    check_placeholders(text, &PLACEHOLDERS)
}

/// Checks `{…}` placeholders against `known`, and balanced braces.
pub fn check_placeholders(text: &str, known: &[&str]) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("has a '}' without '{'".into());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("has a '{' without '}'".into());
        };
        let name = &after[..close];
        if !known.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {})",
                known
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// The subscription keys of one list (the rest of the list left at its defaults).
fn read_subscription(l: &mut Section<'_>) -> MailingList {
    let subscribe = match l.get_or("subscribe", "off".to_string()).as_str() {
        "off" => OptIn::Off,
        "single" => OptIn::Single,
        "double" => OptIn::Double,
        other => {
            l.problem(
                "subscribe",
                format!("{other:?} is not \"off\", \"single\" or \"double\""),
            );
            OptIn::Off
        }
    };
    let confirm_subject = l.get_or("confirm_subject", DEFAULT_CONFIRM_SUBJECT.to_string());
    let confirm_text = l.get_or("confirm_text", DEFAULT_CONFIRM_TEXT.to_string());
    for (key, text) in [
        ("confirm_subject", &confirm_subject),
        ("confirm_text", &confirm_text),
    ] {
        if let Err(e) = check_placeholders(text, &CONFIRM_PLACEHOLDERS) {
            l.problem(key, e);
        }
    }
    if confirm_subject.chars().any(char::is_control) || confirm_subject.len() > 200 {
        l.problem("confirm_subject", "one line of at most 200 characters");
    }
    if !confirm_text.contains("{confirm}") {
        l.problem("confirm_text", "must contain {confirm} (the link)");
    }
    let thank_you_urls: Vec<String> = l.get_or("thank_you_urls", Vec::new());
    for u in &thank_you_urls {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && u.len() <= 500
            && !u
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"'<>\\".contains(c));
        if !ok {
            l.problem(
                "thank_you_urls",
                format!("{u:?} is not an http(s) address without quotes or spaces"),
            );
        }
    }
    let consent_max_age = l
        .get::<crate::config::units::HumanDuration>("consent_max_age")
        .map(|d| d.get());
    if consent_max_age.is_some_and(|d| d.is_zero()) {
        l.problem("consent_max_age", "must be above zero (e.g. \"730d\")");
    }
    MailingList {
        subscribe,
        confirm_subject,
        confirm_text,
        thank_you_urls,
        consent_max_age,
        ..MailingList::default()
    }
}

/// Names of accounts and lists: a-z, 0-9, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The streams and lists keys of one account section.
pub struct Sending {
    pub streams: Vec<Stream>,
    pub default_stream: Stream,
    pub lists: Vec<MailingList>,
    pub default_list: Option<String>,
}

pub fn read_sending(s: &mut Section<'_>) -> Sending {
    let mut streams = Vec::new();
    for name in s
        .get::<Vec<String>>("streams")
        .unwrap_or_else(|| vec!["transactional".into()])
    {
        match Stream::parse(&name) {
            Some(st) if !streams.contains(&st) => streams.push(st),
            Some(_) => {}
            None => s.problem(
                "streams",
                format!("{name:?} is not a stream (marketing, transactional)"),
            ),
        }
    }
    if streams.is_empty() {
        s.problem("streams", "at least one stream is needed");
        streams.push(Stream::Transactional);
    }
    let default_stream = match s.get::<String>("default_stream") {
        Some(name) => match Stream::parse(&name) {
            Some(st) if streams.contains(&st) => st,
            Some(st) => {
                s.problem("default_stream", format!("{st} is not in streams"));
                streams[0]
            }
            None => {
                s.problem(
                    "default_stream",
                    format!("{name:?} is not a stream (marketing, transactional)"),
                );
                streams[0]
            }
        },
        None if streams.len() == 1 => streams[0],
        None => {
            s.problem(
                "default_stream",
                "required when the account may use both streams",
            );
            streams[0]
        }
    };
    let lists: Vec<MailingList> = s
        .named_sections("lists")
        .into_iter()
        .map(|(id, mut l)| {
            if !valid_name(&id) {
                l.problem("", "list ids use a-z, 0-9, - and _ only (at most 64)");
            }
            let consent_statement = l.get::<String>("consent_statement").unwrap_or_else(|| {
                l.problem("consent_statement", "missing (the footer needs it)");
                String::new()
            });
            if let Err(e) = check_template(&consent_statement) {
                l.problem("consent_statement", e);
            }
            let subscription = read_subscription(&mut l);
            MailingList {
                name: l.get_or("name", id.clone()),
                consent_source: l.get_or("consent_source", String::new()),
                track_clicks: l.get_or("track_clicks", false),
                track_opens: l.get_or("track_opens", false),
                consent_statement,
                id,
                ..subscription
            }
        })
        .collect();
    if streams.contains(&Stream::Marketing) && lists.is_empty() {
        s.problem(
            "lists",
            "an account that may send marketing mail needs a list",
        );
    }
    let default_list = match s.get::<String>("default_list") {
        Some(id) if lists.iter().any(|l| l.id == id) => Some(id),
        Some(id) => {
            s.problem(
                "default_list",
                format!("{id:?} is not one of the account's lists"),
            );
            None
        }
        None if lists.len() == 1 => Some(lists[0].id.clone()),
        None => None,
    };
    Sending {
        streams,
        default_stream,
        lists,
        default_list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert!(check_template("You get {list} from {account} because of {source}.").is_ok());
        assert!(check_template("no placeholders").is_ok());
        assert!(check_template("{unsubscribe}").is_ok());
        assert!(
            check_template("{nope}")
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(check_template("{list").is_err());
        assert!(check_template("list}").is_err());
    }
}
