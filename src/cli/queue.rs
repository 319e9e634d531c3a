//! `queue …`: `list`, `show` and `cat` read the spool (list and show ask the running relay
//! with `--live`); `summary`, `shape`, `retry`, `hold`, `release`, `bounce` and `delete`
//! ask the running relay through its admin API (see [`super::admin`]).

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ApiArgs;
use super::admin;
use crate::spool::{self, RecoveredMessage, Spool};

/// Which messages a bulk `retry`, `hold` or `release` takes.
#[derive(Debug, Args)]
pub struct Many {
    /// Every message (only those of --account, or with a recipient at --site, when given).
    #[arg(long)]
    all: bool,
    /// Only this account's messages.
    #[arg(long)]
    account: Option<String>,
    /// Only messages with a recipient at this site (as `queue summary` names it) or domain.
    #[arg(long, requires = "all")]
    site: Option<String>,
}

impl Many {
    fn call(self, verb: &'static str) -> admin::Call {
        admin::queue_bulk(verb, self.account.as_deref(), self.site.as_deref())
    }
}

/// What `hold` and `release` take: one message, or many.
#[derive(Debug, Args)]
pub struct Pick {
    /// Queue id (16 hex digits).
    #[arg(required_unless_present_any = ["all", "account"], conflicts_with_all = ["all", "account"])]
    id: Option<String>,
    #[command(flatten)]
    many: Many,
    #[command(flatten)]
    api: ApiArgs,
}

impl Pick {
    /// `one` for a message, else the bulk `verb`.
    fn call(self, verb: &'static str, one: fn(&str) -> admin::Call) -> (ApiArgs, admin::Call) {
        match self.id {
            Some(id) => (self.api, one(&id)),
            None => (self.api, self.many.call(verb)),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Totals, then the queue by site and by account (asks the running relay).
    Summary {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One line per queued message (reads the spool; --live asks the running relay).
    List {
        /// Print JSON instead of a table (JSON lines from the spool; the API's JSON with
        /// --live).
        #[arg(long)]
        json: bool,
        /// Only this account's messages.
        #[arg(long)]
        account: Option<String>,
        /// At most this many messages, the oldest (with --live: default 100, at most
        /// 10000).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Ask the running relay (admin API): its view, with held and in-flight states.
        #[arg(long)]
        live: bool,
        /// With --live: the page after this message (the cursor `queue list --live` prints).
        #[arg(long, value_name = "ID", requires = "live")]
        after: Option<String>,
        /// With --live: the relay's operator listener (default: `[admin] listen` of the
        /// config).
        #[arg(long, value_name = "URL", requires = "live")]
        url: Option<String>,
    },
    /// Envelope and recipient states of one message (reads the spool; --live asks the
    /// running relay). A message no longer queued, or a Message-ID: what happened to it,
    /// per recipient, from the running relay's delivery log.
    Show {
        /// Queue id (16 hex digits, as in `queue list` and `250 … queued as`), or a
        /// Message-ID.
        id: String,
        /// Ask the running relay (admin API) instead of reading the spool.
        #[arg(long)]
        live: bool,
        /// With --live: print the API's JSON.
        #[arg(long, requires = "live")]
        json: bool,
        /// With --live: the relay's operator listener (default: `[admin] listen` of the
        /// config).
        #[arg(long, value_name = "URL", requires = "live")]
        url: Option<String>,
    },
    /// Try waiting recipients now (asks the running relay): of one message, or with --all
    /// of every message (only an account's with --account, a site's with --site).
    Retry {
        /// Queue id (16 hex digits).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[command(flatten)]
        many: Many,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Hold mail (asks the running relay): delivery leaves it alone, across restarts, until
    /// released; bounce and delete still apply. One message, or --account's, or --all.
    Hold(Pick),
    /// Release held mail (asks the running relay): one message, or --account's, or --all.
    Release(Pick),
    /// The queue's age by site, as Postfix's qshape: recipients not yet delivered, by the
    /// age of their message (asks the running relay).
    Shape {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a queued message as stored (envelope lines, then the content) from the spool;
    /// it holds addresses, so it reads the spool files directly and needs their owner's
    /// rights.
    Cat {
        /// Queue id (16 hex digits).
        id: String,
        /// Only the content, without the envelope lines.
        #[arg(long)]
        body: bool,
    },
    /// Return a message: every waiting recipient fails, with a DSN to the sender (asks the
    /// running relay).
    Bounce {
        /// Queue id (16 hex digits).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drop a message's waiting recipients, without a DSN (asks the running relay).
    Delete {
        /// Queue id (16 hex digits).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `queue …`: `list` and `show` read the spool unless `--live`; the rest ask the relay.
pub(super) fn queue(path: Option<&Path>, command: QueueCommand) -> Result<ExitCode, String> {
    let (api, call) = match command {
        QueueCommand::List {
            json,
            account,
            limit,
            live: false,
            ..
        } => {
            let messages = spool_messages(path)?;
            let code = queue_list(&messages, account.as_deref(), limit, json)?;
            let spool = super::load_config(path)?.spool.path;
            let damaged = Spool::quarantined(&spool);
            if damaged > 0 && !json {
                println!(
                    "{damaged} damaged piece(s) of spool data kept in {} (the relay's log says what each held)",
                    spool.join("quarantine").display()
                );
            }
            return Ok(code);
        }
        QueueCommand::Show {
            id, live: false, ..
        } => {
            // Not (or no longer) in the spool: what the running relay's delivery log says.
            let messages = spool_messages(path)?;
            let queued = crate::envelope::QueueId::parse(&id)
                .is_some_and(|n| messages.iter().any(|m| m.envelope.id == n));
            if queued {
                return queue_show(&messages, &id);
            }
            eprintln!("{id} is not in the queue; asking the running relay what happened to it");
            (
                ApiArgs {
                    json: false,
                    url: None,
                },
                admin::message_history(&id),
            )
        }
        QueueCommand::List {
            json,
            account,
            limit,
            url,
            after,
            ..
        } => (
            ApiArgs { json, url },
            admin::queue_list(
                account.as_deref(),
                limit.unwrap_or(admin::DEFAULT_LIST_LIMIT),
                after.as_deref(),
            ),
        ),
        QueueCommand::Show { id, json, url, .. } => (ApiArgs { json, url }, admin::queue_show(&id)),
        QueueCommand::Summary { api } => (api, admin::queue_summary()),
        QueueCommand::Retry { id, many, api } => match id {
            Some(id) => (api, admin::queue_retry(&id)),
            None => (api, many.call("retry")),
        },
        QueueCommand::Hold(pick) => pick.call("hold", admin::queue_hold),
        QueueCommand::Release(pick) => pick.call("release", admin::queue_release),
        QueueCommand::Shape { api } => (api, admin::queue_shape()),
        QueueCommand::Cat { id, body } => return queue_cat(path, &id, body),
        QueueCommand::Bounce { id, api } => (api, admin::queue_bounce(&id)),
        QueueCommand::Delete { id, api } => (api, admin::queue_delete(&id)),
    };
    Ok(admin::call(path, &api, call))
}

/// The messages in the spool of the config, oldest first.
fn spool_messages(path: Option<&Path>) -> Result<Vec<RecoveredMessage>, String> {
    let config = super::load_config(path)?;
    let mut messages = Spool::inspect(&config.spool.path).map_err(|e| e.to_string())?;
    messages.sort_by_key(|m| m.envelope.id); // ids grow with time
    Ok(messages)
}

/// `queue cat ID`: the stored message from the spool, envelope lines first.
fn queue_cat(path: Option<&Path>, id: &str, body_only: bool) -> Result<ExitCode, String> {
    let wanted =
        crate::envelope::QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let messages = spool_messages(path)?;
    let m = messages
        .iter()
        .find(|m| m.envelope.id == wanted)
        .ok_or_else(|| format!("{id} is not in the queue"))?;
    let spool_dir = super::load_config(path)?.spool.path;
    let content = Spool::read_content(&spool_dir, m.loc).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let e = &m.envelope;
    let mut head = String::new();
    if !body_only {
        head.push_str(&format!("X-Optin-Queue-Id: {}\n", e.id));
        head.push_str(&format!("X-Optin-Account: {}\n", e.account));
        head.push_str(&format!(
            "X-Optin-Envelope-From: <{}>\n",
            e.sender.as_deref().unwrap_or("")
        ));
        for r in &e.recipients {
            head.push_str(&format!("X-Optin-Envelope-To: <{}>\n", r.address));
        }
        head.push('\n');
    }
    let written = std::io::Write::write_all(&mut out, head.as_bytes())
        .and_then(|()| std::io::Write::write_all(&mut out, &content))
        .and_then(|()| std::io::Write::flush(&mut out));
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A pager closed early: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.to_string()),
    }
}

fn age(received_at: u64) -> String {
    let secs = crate::envelope::now_ms().saturating_sub(received_at) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// One line per message from the spool (of `account`, at most `limit`).
fn queue_list(
    messages: &[RecoveredMessage],
    account: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut messages: Vec<&RecoveredMessage> = messages
        .iter()
        .filter(|m| account.is_none_or(|a| m.envelope.account == a))
        .collect();
    // The count is of every matching message, whatever the limit shows.
    let total = messages.len();
    messages.truncate(limit.unwrap_or(usize::MAX));
    if !json {
        println!(
            "{:<16}  {:>10}  {:>8}  {:<12}  {:>7}  {:<30}  DOMAINS",
            "ID", "AGE", "SIZE", "ACCOUNT", "PENDING", "SENDER"
        );
    }
    for m in &messages {
        let pending: Vec<usize> = m.pending().collect();
        let mut domains: Vec<&str> = pending
            .iter()
            .map(|&i| {
                let a = &m.envelope.recipients[i].address;
                a.rsplit_once('@').map_or("", |(_, d)| d)
            })
            .collect();
        domains.sort_unstable();
        domains.dedup();
        let sender = m.envelope.sender.as_deref().unwrap_or("<>");
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "id": m.envelope.id.to_string(),
                    "received_at_ms": m.envelope.received_at,
                    "size": m.loc.len,
                    "account": m.envelope.account,
                    "sender": sender,
                    "recipients": m.envelope.recipients.len(),
                    "pending": pending.len(),
                    "domains": domains,
                })
            );
        } else {
            println!(
                "{:<16}  {:>10}  {:>8}  {:<12}  {:>3}/{:<3}  {:<30}  {}",
                m.envelope.id.to_string(),
                age(m.envelope.received_at),
                m.loc.len,
                m.envelope.account,
                pending.len(),
                m.envelope.recipients.len(),
                sender,
                domains.join(",")
            );
        }
    }
    if !json {
        if messages.len() < total {
            println!(
                "{} of {total} message(s) queued shown: the oldest (--limit N for more)",
                messages.len()
            );
        } else {
            println!("{total} message(s) queued");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn queue_show(messages: &[RecoveredMessage], id: &str) -> Result<ExitCode, String> {
    let wanted =
        crate::envelope::QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let m = messages
        .iter()
        .find(|m| m.envelope.id == wanted)
        .ok_or_else(|| format!("{id} is not in the queue"))?;
    let e = &m.envelope;
    println!("id:        {}", e.id);
    println!("received:  {} ago", age(e.received_at));
    println!("account:   {}", e.account);
    println!(
        "stream:    {}{}{}",
        e.stream,
        e.list
            .as_deref()
            .map(|l| format!(", list {l}"))
            .unwrap_or_default(),
        e.campaign
            .as_deref()
            .map(|c| format!(", campaign {c}"))
            .unwrap_or_default()
    );
    println!("sender:    <{}>", e.sender.as_deref().unwrap_or(""));
    println!("size:      {} octets (record)", m.loc.len);
    println!("segment:   {:016x} offset {}", m.loc.segment, m.loc.offset);
    if let Some(envid) = &e.envid {
        println!("envid:     {envid}");
    }
    println!(
        "flags:     {}{}{}",
        if e.smtputf8 { "SMTPUTF8 " } else { "" },
        if e.eight_bit_content { "8BIT " } else { "" },
        if e.generated_dsn { "DSN" } else { "" }
    );
    println!("recipients:");
    for (i, r) in e.recipients.iter().enumerate() {
        let state = match (r.done, m.events[i]) {
            (true, _) => "done".to_string(),
            (_, None) => "pending (not tried yet)".to_string(),
            (_, Some(spool::RcptEvent::Delivered)) => "delivered".to_string(),
            (_, Some(spool::RcptEvent::Failed)) => "failed".to_string(),
            (
                _,
                Some(spool::RcptEvent::Deferred {
                    attempts,
                    next_attempt,
                    ..
                }),
            ) => {
                let wait = next_attempt.saturating_sub(crate::envelope::now_ms()) / 1000;
                format!(
                    "deferred, {attempts} attempt(s), next in {}",
                    humantime::format_duration(std::time::Duration::from_secs(wait))
                )
            }
        };
        println!("  <{}>  {state}", r.address);
    }
    Ok(ExitCode::SUCCESS)
}
