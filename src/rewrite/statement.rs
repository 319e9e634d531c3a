//! The consent statement of a list, rendered for one recipient: the footer text in plain
//! text and in HTML. Placeholders: `{list}` (the list's name), `{account}` (the account's
//! description, or its name), `{source}` (where consent was given) and `{unsubscribe}` (the
//! recipient's unsubscribe link). A statement without `{unsubscribe}` gets the link on a
//! line of its own, so every footer has a visible way out.

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
    let sender = if account.description.is_empty() {
        account.name.as_str()
    } else {
        account.description.as_str()
    };
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
            other => (format!("{{{other}}}"), escape(&format!("{{{other}}}"))),
        };
        text.push_str(&t);
        html.push_str(&h);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    html.push_str(&escape(rest));
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
                "[accounts.shop]\ndescription = \"Shop & Co\"\nstreams = [\"marketing\"]\nfrom_domains = [\"shop.example\"]\n[accounts.shop.lists.news]\nname = \"News <weekly>\"\nconsent_source = \"our site\"\nconsent_statement = \"{statement}\"\n"
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
            "You get News <weekly> from Shop & Co (signed up at our site). Leave: https://u.example/u/T"
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
    fn a_link_is_added_when_the_statement_has_none() {
        let (a, l, k) = setup("You subscribed to {list}.");
        let r = render(&a, &l, &k);
        assert_eq!(
            r.text,
            "You subscribed to News <weekly>.\nUnsubscribe: https://u.example/u/T"
        );
        assert!(
            r.html
                .contains("<a href=\"https://u.example/u/T\">Unsubscribe</a>")
        );
    }
}
