//! The `optin-relay` command line: `serve`, `config check`, `queue
//! summary|list|show|retry|bounce|delete`, `account list|show|freeze|unfreeze`, `lists
//! import|compile|check|grant|revoke|status`, `suppress add|remove|check`, `erase`, `policy
//! status|reload`, `bounce classify`, `hash-password`.
//!
//! Each subcommand loads the config it needs (the embedded default when no `--config` is
//! given), prints what an operator needs, and exits non-zero with a clear message when
//! something is wrong. Some work on files and need no running relay (`queue list|show`
//! read the spool, `lists import|compile|check|status` the lists); `suppress add|remove`
//! and `lists grant|revoke` go through the running relay when one answers, else write the
//! lists journal; the others ask the running relay the config names through its admin API
//! (see [`admin`]: exit 1 when the API says no, 2 when the relay cannot be reached). `serve` runs until SIGTERM or SIGINT, then
//! drains; SIGHUP reloads the policy file, as an edit to it does (see [`crate::reload`]: a
//! bad file is refused with every problem logged, and the running policy stays).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

mod admin;
mod bounce;
mod campaign;
pub mod config;
mod keys;
mod lists;

use crate::config::{Config, LogFormat};
use crate::policy::Policy;
use crate::reload::{PolicyReloader, Trigger};
use crate::server::Relay;
use crate::spool::{self, RecoveredMessage, Spool};

#[derive(Debug, Parser)]
#[command(
    name = "optin-relay",
    version,
    about = "An SMTP relay that sends only what recipients agreed to receive"
)]
pub struct Cli {
    /// Main configuration file (default: $OPTIN_RELAY_CONFIG, else
    /// /etc/optin-relay/optin-relay.toml when it exists, else the embedded configuration:
    /// SMTP on 127.0.0.1:2525, public HTTP on 127.0.0.1:8025, the operator listener (admin
    /// API, metrics) on 127.0.0.1:8026, spool in ./data, delivery by MX lookup). Relative
    /// paths in the file resolve against its directory.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve {
        /// Capture mode (as `[delivery] mode = "capture"`): mail is kept in the capture
        /// folder and listed at /capture/ on the operator listener instead of being
        /// delivered; nothing leaves this machine.
        #[arg(long)]
        capture: bool,
    },
    /// Check or show the configuration (and say which file it is).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The queue: list and show read the spool (or ask the running relay with --live);
    /// summary, retry, bounce and delete ask the running relay.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Accounts of the running relay: status, freeze, unfreeze, API keys.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Campaigns of the running relay (staged release): list, show, declare, release,
    /// decline.
    Campaign {
        #[command(subcommand)]
        command: campaign::CampaignCommand,
    },
    /// Consent and suppression lists: import, compile, check, grant, revoke.
    Lists {
        #[command(subcommand)]
        command: lists::ListsCommand,
    },
    /// Add or lift suppressions (through the running relay, in force when the command
    /// returns; with no relay answering, written to the lists journal, which a relay picks
    /// up within `[lists] refresh_interval` or at its start), or check an address with the
    /// running relay.
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Erase an address in the running relay: the mail queued to it is dropped and a
    /// global erasure suppression is recorded, so nothing more goes to it.
    Erase {
        /// The address (normalised as the relay does: trimmed, lower case, IDNA domain).
        address: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The running relay's policy: status, reload.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Bounces: classify saved messages as the relay would (no running relay needed).
    Bounce {
        #[command(subcommand)]
        command: bounce::BounceCommand,
    },
    /// Hash a password for a policy user (reads the password from standard input).
    HashPassword,
    /// Write the manual pages (optin-relay.1, one per subcommand) into a directory.
    Man {
        /// The directory (created when missing).
        dir: PathBuf,
    },
    /// Print a shell completion script (e.g. `optin-relay completions bash >
    /// /etc/bash_completion.d/optin-relay`).
    Completions { shell: clap_complete::Shell },
}

/// How to reach the running relay, and how to print its answer (every admin API command).
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Print the admin API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
    /// The relay's operator listener, e.g. http://127.0.0.1:8026 (default: `[admin]
    /// listen` of the config). The token still comes from the config.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the main config and the policy it names, and the TLS files (they must load and
    /// match); list every problem (exit 1), and warnings about settings that are legal but
    /// unwise (exit 0).
    Check,
    /// Print the configuration in force as TOML, every default filled in and marked.
    Show {
        /// Only the settings the file makes (as `postconf -n`).
        #[arg(long)]
        changed: bool,
    },
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
    /// Try every waiting recipient of a message now (asks the running relay).
    Retry {
        /// Queue id (16 hex digits).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
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

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Every account of the policy: queued mail, delivery results, frozen or not.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One account's status.
    Show {
        /// The account (as named in the policy).
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Freeze an account: its submissions are refused (554 5.7.1 account frozen: REASON)
    /// and its queued marketing mail is held, until unfrozen (also across restarts).
    Freeze {
        /// The account (as named in the policy).
        name: String,
        /// Why (shown to its clients in the 554 reply, and in `account show`).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Unfreeze an account: it may submit again and its held mail is released.
    Unfreeze {
        /// The account (as named in the policy).
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The account's API keys: create (shown once), list, revoke.
    Key {
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    #[command(flatten)]
    Journal(lists::SuppressCommand),
    /// Ask the running relay what its lists say about an address: suppressions (global
    /// only without --account), and with --account the consent and the verdict.
    Check {
        /// The address (normalised as the relay does: trimmed, lower case, IDNA domain).
        address: String,
        /// The sending account.
        #[arg(long)]
        account: Option<String>,
        /// The list (default: the account's default list).
        #[arg(long, requires = "account")]
        list: Option<String>,
        /// The stream (default: the account's default stream).
        #[arg(long, value_enum, requires = "account")]
        stream: Option<crate::envelope::Stream>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The policy in force: its file, generation, when it was loaded, the last reload.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reload the policy file now; a bad file is refused with every problem (exit 1) and
    /// the running policy stays.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("optin-relay: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded_default()),
    }
}

fn load_policy(config: &Config) -> Result<Policy, String> {
    match &config.policy.path {
        Some(p) => Policy::load(p).map_err(|e| e.to_string()),
        None => Ok(Policy::embedded_default()),
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let located = config::Located::find(cli.config.as_deref());
    let cli = Cli {
        config: located.path.clone(),
        ..cli
    };
    match cli.command {
        Command::Serve { capture } => serve(&located, capture),
        Command::Config {
            command: ConfigCommand::Check,
        } => Ok(config::check(&located)),
        Command::Config {
            command: ConfigCommand::Show { changed },
        } => config::show(&located, changed),
        Command::Man { dir } => man_pages(&dir),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "optin-relay", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { command } => queue(cli.config.as_deref(), command),
        Command::Account { command } => Ok(account(cli.config.as_deref(), command)),
        Command::Campaign { command } => {
            let (api, call) = campaign::call(command);
            Ok(admin::call(cli.config.as_deref(), &api, call))
        }
        Command::Bounce { command } => {
            let config = load_config(cli.config.as_deref())?;
            let policy = load_policy(&config)?;
            bounce::bounce(&config, policy.bounce_classifier(), command)
        }
        Command::Lists { command } => {
            let config = load_config(cli.config.as_deref())?;
            let policy = load_policy(&config)?;
            lists::lists(&config, &policy, command)
        }
        Command::Suppress {
            command: SuppressCommand::Journal(command),
        } => {
            let config = load_config(cli.config.as_deref())?;
            let policy = load_policy(&config)?;
            lists::suppress(&config, &policy, command)
        }
        Command::Suppress {
            command:
                SuppressCommand::Check {
                    address,
                    account,
                    list,
                    stream,
                    api,
                },
        } => Ok(admin::call(
            cli.config.as_deref(),
            &api,
            admin::suppression_check(&address, account.as_deref(), list.as_deref(), stream),
        )),
        Command::Erase { address, api } => Ok(admin::call(
            cli.config.as_deref(),
            &api,
            admin::erase(&address),
        )),
        Command::Policy { command } => Ok(match command {
            PolicyCommand::Status { api } => {
                admin::call(cli.config.as_deref(), &api, admin::policy_status())
            }
            PolicyCommand::Reload { api } => {
                admin::call(cli.config.as_deref(), &api, admin::policy_reload())
            }
        }),
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| format!("reading the password: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err("empty password".into());
            }
            println!("{}", crate::policy::password::hash_password(password));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `queue …`: `list` and `show` read the spool unless `--live`; the rest ask the relay.
fn queue(path: Option<&Path>, command: QueueCommand) -> Result<ExitCode, String> {
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
            let spool = load_config(path)?.spool.path;
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
            ..
        } => (
            ApiArgs { json, url },
            admin::queue_list(
                account.as_deref(),
                limit.unwrap_or(admin::DEFAULT_LIST_LIMIT),
            ),
        ),
        QueueCommand::Show { id, json, url, .. } => (ApiArgs { json, url }, admin::queue_show(&id)),
        QueueCommand::Summary { api } => (api, admin::queue_summary()),
        QueueCommand::Retry { id, api } => (api, admin::queue_retry(&id)),
        QueueCommand::Bounce { id, api } => (api, admin::queue_bounce(&id)),
        QueueCommand::Delete { id, api } => (api, admin::queue_delete(&id)),
    };
    Ok(admin::call(path, &api, call))
}

/// `account …`: every verb asks the running relay.
fn account(path: Option<&Path>, command: AccountCommand) -> ExitCode {
    let (api, call) = match command {
        AccountCommand::List { api } => (api, admin::account_list()),
        AccountCommand::Show { name, api } => (api, admin::account_show(&name)),
        AccountCommand::Freeze { name, reason, api } => {
            (api, admin::account_freeze(&name, &reason))
        }
        AccountCommand::Unfreeze { name, api } => (api, admin::account_unfreeze(&name)),
        AccountCommand::Key { command } => keys::call(command),
    };
    admin::call(path, &api, call)
}

/// The messages in the spool of the config, oldest first.
fn spool_messages(path: Option<&Path>) -> Result<Vec<RecoveredMessage>, String> {
    let config = load_config(path)?;
    let mut messages = Spool::inspect(&config.spool.path).map_err(|e| e.to_string())?;
    messages.sort_by_key(|m| m.envelope.id); // ids grow with time
    Ok(messages)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `man DIR`: the pages of the command and of every subcommand, from the same definition
/// as `--help`.
fn man_pages(dir: &Path) -> Result<ExitCode, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(command, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn serve(located: &config::Located, capture: bool) -> Result<ExitCode, String> {
    let path = located.path.as_deref();
    let mut config = load_config(path)?;
    if capture {
        config.delivery.mode = crate::config::DeliveryMode::Capture;
    }
    let policy = load_policy(&config)?;
    // A policy that would refuse every client (an emptied file) is no policy to start on.
    if let Some(problem) = crate::reload::account_problems(&policy, None).first() {
        let file = config.policy.path.as_deref().unwrap_or(Path::new("policy"));
        return Err(format!("{}: {problem}", file.display()));
    }
    init_logging(&config);
    tracing::info!(configuration = %located.describe(), "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        // Taken before the listeners open: a SIGTERM that arrives while the relay starts
        // (a long spool recovery, say) waits for it and drains, instead of killing it.
        let mut signals = Signals::new()?;
        let relay = Relay::start(config, policy)
            .await
            .map_err(|e| e.to_string())?;
        signals.wait(&relay.reloader).await;
        relay.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The signals `serve` handles: SIGTERM and SIGINT stop it, SIGHUP reloads the policy.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let take = |kind| signal(kind).map_err(|e| e.to_string());
        Ok(Signals {
            term: take(SignalKind::terminate())?,
            int: take(SignalKind::interrupt())?,
            hup: take(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT; reloads the policy on SIGHUP.
    async fn wait(&mut self, reloader: &Arc<PolicyReloader>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                // Checked against the queue, loaded off the async threads; the outcome is
                // logged and recorded by the reloader.
                    let _ = reloader.reload_now(Trigger::Signal).await;
                }
            }
        }
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
    let messages: Vec<&RecoveredMessage> = messages
        .iter()
        .filter(|m| account.is_none_or(|a| m.envelope.account == a))
        .take(limit.unwrap_or(usize::MAX))
        .collect();
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
        println!("{} message(s) queued", messages.len());
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
