//! The consent statement of a list, rendered for one recipient: the footer text in plain
//! text and in HTML. Placeholders: `{list}` (the list's name), `{account}` (the account's
//! `display_name`), `{source}` (where consent was given), `{unsubscribe}` (the
//! recipient's unsubscribe link), `{contact}` (the account's `contact_address`) and
//! `{postal_address}`. A statement without `{unsubscribe}` gets the link on a line of its
//! own, so every footer has a visible way out; one without `{contact}` or
//! `{postal_address}` gets a line naming the sender with both, so every marketing message
//! says who sent it and how to reach them.

use crate::policy::Account;
use crate::policy::MailingList;

use super::Links;

/// The rendered footer: plain text and an HTML fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub html: String,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn render(account: &Account, list: &MailingList, links: &Links) -> Rendered {
    let sender = account.sender.display_name.as_str();
    let contact = account.sender.contact_address.as_deref().unwrap_or("");
    let postal = account.sender.postal_address.as_deref().unwrap_or("");
    let mailto = |c: &str| format!("<a href=\"mailto:{0}\">{0}</a>", escape(c));
    let template = list.consent_statement.as_str();
    let mut text = String::new();
    let mut html = String::new();
    let mut rest = template;
    let mut linked = false;
    // The policy checked the placeholders when it was loaded.
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        text.push_str(&rest[..open]);
        html.push_str(&escape(&rest[..open]));
        let (t, h) = match &rest[open + 1..close] {
            "list" => (list.name.clone(), escape(&list.name)),
            "account" => (sender.to_string(), escape(sender)),
            "source" => (list.consent_source.clone(), escape(&list.consent_source)),
            "unsubscribe" => {
                linked = true;
                (
                    links.url.clone(),
                    format!("<a href=\"{0}\">{0}</a>", escape(&links.url)),
                )
            }
            "contact" => (contact.to_string(), mailto(contact)),
            "postal_address" => (postal.to_string(), escape(postal)),
            other => (format!("{{{other}}}"), escape(&format!("{{{other}}}"))),
        };
        text.push_str(&t);
        html.push_str(&h);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    html.push_str(&escape(rest));
    // What the statement does not say of the sender, a line of its own says.
    let postal_missing = !postal.is_empty() && !template.contains("{postal_address}");
    let contact_missing = !contact.is_empty() && !template.contains("{contact}");
    if postal_missing || contact_missing {
        let who = if postal_missing {
            format!("{sender}, {postal}")
        } else {
            sender.to_string()
        };
        text.push_str(&format!("\nSent by {who}"));
        html.push_str(&format!("<br>\nSent by {}", escape(&who)));
        if contact_missing {
            text.push_str(&format!(" - contact: {contact}"));
            html.push_str(&format!(" &middot; contact: {}", mailto(contact)));
        }
    }
    if !linked {
        text.push_str(&format!("\nUnsubscribe: {}", links.url));
        html.push_str(&format!(
            "<br>\n<a href=\"{0}\">Unsubscribe</a>",
            escape(&links.url)
        ));
    }
    Rendered {
        text,
        html: format!(
            "<div class=\"optin-footer\" style=\"margin-top:2em;font-size:small;color:#555\">{html}</div>"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(statement: &str) -> (Account, MailingList, Links) {
        let policy = crate::policy::Policy::from_toml(
            "t",
            &format!(
                "[accounts.shop]\ndisplay_name = \"Shop & Co\"\ncontact_address = \"hello@shop.example\"\npostal_address = \"1 Main St, Springfield\"\nstreams = [\"marketing\"]\nfrom_domains = [\"shop.example\"]\n[accounts.shop.lists.news]\nname = \"News <weekly>\"\nconsent_source = \"our site\"\nconsent_statement = \"{statement}\"\n"
            ),
        )
        .unwrap();
        let account = policy.account("shop").unwrap().clone();
        let list = account.lists[0].clone();
        let links = Links {
            token: "T".into(),
            url: "https://u.example/u/T".into(),
            mailto: "unsubscribe+T@relay.example".into(),
        };
        (account, list, links)
    }

    #[test]
    fn placeholders_are_filled_and_html_is_escaped() {
        let (a, l, k) =
            setup("You get {list} from {account} (signed up at {source}). Leave: {unsubscribe}");
        let r = render(&a, &l, &k);
        assert_eq!(
            r.text,
            "You get News <weekly> from Shop & Co (signed up at our site). Leave: \
             https://u.example/u/T\nSent by Shop & Co, 1 Main St, Springfield - contact: \
             hello@shop.example"
        );
        assert!(
            r.html
                .contains("You get News &lt;weekly&gt; from Shop &amp; Co"),
            "{}",
            r.html
        );
        assert!(
            r.html
                .contains("<a href=\"https://u.example/u/T\">https://u.example/u/T</a>")
        );
    }

    #[test]
    fn the_sender_is_named_with_its_addresses_when_the_statement_does_not() {
        let (a, l, k) = setup("From {account} at {postal_address}, {contact}. {unsubscribe}");
        let r = render(&a, &l, &k);
        assert_eq!(
            r.text,
            "From Shop & Co at 1 Main St, Springfield, hello@shop.example. https://u.example/u/T"
        );
        assert!(
            r.html.contains("<a href=\"mailto:hello@shop.example\">"),
            "{}",
            r.html
        );
        let (a, l, k) = setup("From {account}, write to {contact}. {unsubscribe}");
        let r = render(&a, &l, &k);
        assert!(
            r.text
                .ends_with("\nSent by Shop & Co, 1 Main St, Springfield"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_link_is_added_when_the_statement_has_none() {
        let (a, l, k) = setup("You subscribed to {list}.");
        let r = render(&a, &l, &k);
        assert_eq!(
            r.text,
            "You subscribed to News <weekly>.\nSent by Shop & Co, 1 Main St, Springfield - \
             contact: hello@shop.example\nUnsubscribe: https://u.example/u/T"
        );
        assert!(
            r.html
                .contains("<a href=\"https://u.example/u/T\">Unsubscribe</a>")
        );
    }
}
