//! The `optin-relay` command line: `serve`, `config check`, `queue list|show`,
//! `lists import|compile|check|grant|revoke|status`, `suppress add|remove`, `hash-password`.
//!
//! Each subcommand loads the config it needs (the embedded default when no `--config` is
//! given), prints what an operator needs, and exits non-zero with a clear message when
//! something is wrong. `serve` runs until SIGTERM or SIGINT, then drains; SIGHUP reloads the
//! policy file (a bad file is refused with every problem logged, and the running policy
//! stays).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod lists;

use crate::config::{Config, LogFormat};
use crate::policy::Policy;
use crate::server::Relay;
use crate::spool::{self, RecoveredMessage, Spool};

#[derive(Debug, Parser)]
#[command(
    name = "optin-relay",
    version,
    about = "An SMTP relay that sends only what recipients agreed to receive"
)]
pub struct Cli {
    /// Main configuration file (default: the embedded configuration: SMTP on
    /// 127.0.0.1:2525, HTTP on 127.0.0.1:8025, spool in ./data, delivery by MX lookup).
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve,
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Look into the queue (reads the spool; safe beside a running relay).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Consent and suppression lists: import, compile, check, grant, revoke.
    Lists {
        #[command(subcommand)]
        command: lists::ListsCommand,
    },
    /// Add or lift suppressions (in force at once, also in a running relay).
    Suppress {
        #[command(subcommand)]
        command: lists::SuppressCommand,
    },
    /// Hash a password for a policy user (reads the password from standard input).
    HashPassword,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the main config and the policy it names; list every problem.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// One line per queued message.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Envelope and recipient states of one message.
    Show {
        /// Queue id (16 hex digits, as in `queue list` and `250 … queued as`).
        id: String,
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
    match cli.command {
        Command::Serve => serve(cli.config.as_deref()),
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(cli.config.as_deref()),
        Command::Queue { command } => {
            let config = load_config(cli.config.as_deref())?;
            let messages = Spool::inspect(&config.spool.path).map_err(|e| e.to_string())?;
            match command {
                QueueCommand::List { json } => queue_list(&messages, json),
                QueueCommand::Show { id } => queue_show(&messages, &id),
            }
        }
        Command::Lists { command } => {
            let config = load_config(cli.config.as_deref())?;
            let policy = load_policy(&config)?;
            lists::lists(&config, &policy, command)
        }
        Command::Suppress { command } => {
            let config = load_config(cli.config.as_deref())?;
            let policy = load_policy(&config)?;
            lists::suppress(&config, &policy, command)
        }
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

fn config_check(path: Option<&Path>) -> Result<ExitCode, String> {
    let mut ok = true;
    let name = path.map_or("(embedded default)".to_string(), |p| {
        p.display().to_string()
    });
    match load_config(path) {
        Ok(config) => {
            println!("{name}: ok");
            let policy_name = config
                .policy
                .path
                .as_ref()
                .map_or("(embedded default policy)".to_string(), |p| {
                    p.display().to_string()
                });
            match load_policy(&config) {
                Ok(p) => println!("{policy_name}: ok ({} accounts)", p.accounts().len()),
                Err(e) => {
                    println!("{e}");
                    ok = false;
                }
            }
        }
        Err(e) => {
            println!("{e}");
            ok = false;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

fn serve(path: Option<&Path>) -> Result<ExitCode, String> {
    let config = load_config(path)?;
    let policy = load_policy(&config)?;
    init_logging(&config);
    if path.is_none() {
        tracing::info!("no --config given: running on the embedded default configuration");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let policy_path = config.policy.path.clone();
        let relay = Relay::start(config, policy)
            .await
            .map_err(|e| e.to_string())?;
        wait_for_signals(&relay.policy, policy_path.as_deref()).await?;
        relay.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signals(
    policy: &Arc<arc_swap::ArcSwap<Policy>>,
    policy_path: Option<&Path>,
) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match policy_path {
                None => tracing::info!("SIGHUP: the embedded policy has nothing to reload"),
                Some(p) => match Policy::load(p) {
                    Ok(new) => {
                        policy.store(Arc::new(new));
                        tracing::info!(path = %p.display(), "policy reloaded");
                    }
                    Err(problems) => tracing::error!(
                        "policy reload refused; the running policy stays. {problems}"
                    ),
                },
            },
        }
    }
}

fn age(received_at: u64) -> String {
    let secs = spool::now_ms().saturating_sub(received_at) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn queue_list(messages: &[RecoveredMessage], json: bool) -> Result<ExitCode, String> {
    if !json {
        println!(
            "{:<16}  {:>10}  {:>8}  {:<12}  {:>7}  {:<30}  DOMAINS",
            "ID", "AGE", "SIZE", "ACCOUNT", "PENDING", "SENDER"
        );
    }
    for m in messages {
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
                    "id": spool::format_id(m.envelope.id),
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
                spool::format_id(m.envelope.id),
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
    let wanted = spool::parse_id(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let m = messages
        .iter()
        .find(|m| m.envelope.id == wanted)
        .ok_or_else(|| format!("{id} is not in the queue"))?;
    let e = &m.envelope;
    println!("id:        {}", spool::format_id(e.id));
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
                let wait = next_attempt.saturating_sub(spool::now_ms()) / 1000;
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
