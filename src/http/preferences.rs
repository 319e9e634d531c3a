//! The recipient's page for one sender, reached by the unsubscribe link of any of its
//! messages (`GET /u/TOKEN`): the sender's display name (and logo and colour, from the
//! policy), a one-click button for the message's list, the lists of that account the
//! person is on — each a checkbox, saved with one button (`POST /u/TOKEN/preferences`) —
//! "unsubscribe from all", and, for a list they left, "I unsubscribed by mistake"
//! (`POST /u/TOKEN/resubscribe`), which sends a fresh confirmation message: coming back
//! always needs the person's own confirmation, never just a click on an old link.
//!
//! Plain HTML forms, no script; every control has a label, the lists are a fieldset with a
//! legend. The page says when and where the person subscribed when the consent ledger
//! knows.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::listener::Client;
use super::page::{bad_token, branded, names, try_again};
use super::subscribe::{Subscribe, agent};
use crate::consent::{Reason, Standing};
use crate::governance::unsubscribe::{Unsubscribes, Via};
use crate::policy::Account;
use crate::rewrite::statement::escape;
use crate::rewrite::token::Unsubscribe;

/// What the recipient's pages need.
#[derive(Clone)]
pub struct Pages {
    pub unsubscribes: Arc<Unsubscribes>,
    /// Fresh confirmations and the ledger's dates; `None`: neither is offered.
    pub subscribe: Option<Subscribe>,
}

/// One list of the account as the page shows it.
struct Line {
    id: String,
    name: String,
    /// Receiving it now (consent, no unsubscribe in its scope or the account's).
    on: bool,
    /// Left it (an unsubscribe stands).
    left: bool,
}

/// The lists of `acc` the person is on or left (never lists they were never on).
fn lines(st: &Pages, acc: &Account, address: &str) -> Vec<Line> {
    let lists = &st.unsubscribes.lists;
    let bit = Reason::Unsubscribe.bit();
    acc.lists
        .iter()
        .filter_map(|l| {
            let s: Standing = lists.standing(&acc.name, Some(&l.id), address);
            let left = (s.list | s.account) & bit != 0;
            (s.consent || left).then(|| Line {
                id: l.id.clone(),
                name: l.name.clone(),
                on: s.consent && !left,
                left,
            })
        })
        .collect()
}

/// "I unsubscribed by mistake" for the token's list, when fresh confirmations are on.
pub(super) fn mistake_button(st: &Pages, token: &str, u: &Unsubscribe) -> String {
    if st.subscribe.is_none() {
        return String::new();
    }
    let (list, _) = names(&st.unsubscribes.policy.load(), &u.account, &u.list);
    format!(
        "<form method=\"post\" action=\"/u/{t}/resubscribe\">\n\
         <button type=\"submit\">I unsubscribed from {l} by mistake</button>\n</form>\n\
         <p>We will send you a message with a link to confirm; nothing changes until you do.</p>",
        t = escape(token),
        l = escape(&list),
    )
}

/// When and where the person subscribed to the token's list, if the ledger knows.
fn subscribed_note(st: &Pages, u: &Unsubscribe) -> String {
    let Some(sub) = &st.subscribe else {
        return String::new();
    };
    let ledger = &sub.subscriptions.consents.ledger;
    let Ok(Some(record)) = ledger.get(&u.account, &u.list, &u.address) else {
        return String::new();
    };
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.granted_ms),
    )
    .to_string();
    let day = when.split('T').next().unwrap_or(&when).to_string();
    let source = record
        .wording
        .map(|w| w.source)
        .filter(|s| !s.is_empty())
        .map_or(String::new(), |s| format!(" at {}", escape(&s)));
    format!("<p>You subscribed on {day}{source}.</p>\n")
}

/// `a***@example.com`: enough for people to know it is theirs, not the whole address.
fn masked(address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let first: String = local.chars().take(1).collect();
    format!("{first}***@{domain}")
}

pub(super) async fn page(State(st): State<Pages>, UrlPath(token): UrlPath<String>) -> Response {
    let Ok(u) = st.unsubscribes.keys.open(&token) else {
        return bad_token();
    };
    let policy = st.unsubscribes.policy.load();
    let (list, sender) = names(&policy, &u.account, &u.list);
    let acc = policy.account(&u.account);
    let shown = acc.map(|a| lines(&st, a, &u.address)).unwrap_or_default();
    let t = escape(&token);
    let (list, sender_html) = (escape(&list), escape(&sender));
    let this = shown.iter().find(|l| l.id == u.list);
    let mut body = format!(
        "<p>The subscriptions of <strong>{}</strong> with {sender_html}.</p>\n{}",
        escape(&masked(&u.address)),
        subscribed_note(&st, &u)
    );
    if this.is_some_and(|l| l.left) {
        body.push_str(&format!(
            "<p>You unsubscribed from <strong>{list}</strong>.</p>\n{}",
            mistake_button(&st, &token, &u)
        ));
    } else {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/u/{t}\">\n\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
             <button type=\"submit\">Unsubscribe from {list}</button>\n</form>\n"
        ));
    }
    if !shown.is_empty() {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/u/{t}/preferences\">\n<fieldset>\n\
             <legend>Lists of {sender_html} you receive</legend>\n"
        ));
        for l in &shown {
            body.push_str(&format!(
                "<div><input type=\"checkbox\" id=\"list-{id}\" name=\"keep\" value=\"{id}\"{c}>\
                 <label for=\"list-{id}\">{name}</label></div>\n",
                id = escape(&l.id),
                c = if l.on { " checked" } else { "" },
                name = escape(&l.name),
            ));
        }
        body.push_str(
            "</fieldset>\n<p>Checking a list you left sends you a message to confirm it.</p>\n\
             <button type=\"submit\">Save my choices</button>\n</form>\n",
        );
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/u/{t}\">\n\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
         <input type=\"hidden\" name=\"scope\" value=\"account\">\n\
         <button type=\"submit\">Unsubscribe from all marketing mail of {sender_html}</button>\n\
         </form>"
    ));
    branded(
        StatusCode::OK,
        &format!("Your subscriptions with {sender}"),
        &body,
        acc.map(|a| &a.sender),
    )
}

/// Asks for a fresh confirmation of `list` for the token's address; `Ok` when a message
/// went (or nothing needed to: the same answer either way).
async fn fresh_confirmation(
    st: &Pages,
    u: &Unsubscribe,
    list: &str,
    client: std::net::IpAddr,
    ua: &str,
) -> Result<(), ()> {
    let Some(sub) = &st.subscribe else {
        return Err(());
    };
    let (account, address) = (u.account.clone(), u.address.clone());
    super::subscribe::ask(
        sub,
        account,
        list.to_string(),
        address,
        client,
        ua.to_string(),
        false,
    )
    .await
    .map(|_| ())
    .map_err(|e| tracing::info!(error = %e, "preference page: no fresh confirmation"))
}

fn check_inbox(sender: Option<&crate::policy::sender::Sender>) -> Response {
    branded(
        StatusCode::OK,
        "Please check your inbox",
        "<p>A message with a confirmation link is on its way (unless one was sent to you \
         several times today). Open it and press the button to confirm; until then \
         nothing changes.</p>",
        sender,
    )
}

pub(super) async fn resubscribe(
    State(st): State<Pages>,
    UrlPath(token): UrlPath<String>,
    Extension(Client(client)): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    let Ok(u) = st.unsubscribes.keys.open(&token) else {
        return bad_token();
    };
    if fresh_confirmation(&st, &u, &u.list, client, &agent(&headers))
        .await
        .is_err()
    {
        return try_again();
    }
    let policy = st.unsubscribes.policy.load();
    check_inbox(policy.account(&u.account).map(|a| &a.sender))
}

/// Saves the checkboxes: a list unchecked is unsubscribed from; a list checked that the
/// person had left gets a fresh confirmation message.
pub(super) async fn save(
    State(st): State<Pages>,
    UrlPath(token): UrlPath<String>,
    Extension(Client(client)): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(u) = st.unsubscribes.keys.open(&token) else {
        return bad_token();
    };
    let keep: HashSet<String> = form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "keep")
        .map(|(_, v)| v.into_owned())
        .collect();
    let policy = st.unsubscribes.policy.load();
    let Some(acc) = policy.account(&u.account) else {
        return bad_token();
    };
    let shown = lines(&st, acc, &u.address);
    let mut left = Vec::new();
    let mut confirm = Vec::new();
    for l in &shown {
        match (l.on, keep.contains(&l.id)) {
            (true, false) => left.push(l),
            (false, true) => confirm.push(l),
            _ => {}
        }
    }
    for l in &left {
        let recorder = st.unsubscribes.clone();
        let one = Unsubscribe {
            account: u.account.clone(),
            list: l.id.clone(),
            address: u.address.clone(),
        };
        let recorded =
            tokio::task::spawn_blocking(move || recorder.record(&one, false, Via::Http)).await;
        if !matches!(recorded, Ok(Ok(()))) {
            return try_again();
        }
    }
    let ua = agent(&headers);
    for l in &confirm {
        if fresh_confirmation(&st, &u, &l.id, client, &ua)
            .await
            .is_err()
        {
            return try_again();
        }
    }
    let mut said = String::new();
    for l in &left {
        said.push_str(&format!("<li>You left {}.</li>\n", escape(&l.name)));
    }
    for l in &confirm {
        said.push_str(&format!(
            "<li>A message to confirm {} is on its way; nothing changes until you do.</li>\n",
            escape(&l.name)
        ));
    }
    if said.is_empty() {
        said.push_str("<li>Nothing needed to change.</li>\n");
    }
    branded(
        StatusCode::OK,
        "Your choices are saved",
        &format!(
            "<ul>\n{said}</ul>\n<p><a href=\"/u/{}\">Back to your subscriptions</a></p>",
            escape(&token)
        ),
        Some(&acc.sender),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_masked() {
        assert_eq!(super::masked("jane@example.com"), "j***@example.com");
        assert_eq!(super::masked("é@x.org"), "é***@x.org");
    }
}
