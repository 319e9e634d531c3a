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
mod queue;

use crate::config::{Config, LogFormat};
use crate::policy::Policy;
use crate::reload::{PolicyReloader, Trigger};
use crate::server::Relay;

#[derive(Debug, Parser)]
#[command(
    name = "optin-relay",
    version,
    propagate_version = true,
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
        command: queue::QueueCommand,
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
    /// The cluster the running relay belongs to (`[cluster]`): its nodes as Redis holds
    /// them.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
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

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node: id, version, policy generation (and drift from the others), when last
    /// seen and whether alive; this node's view of Redis.
    Status {
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
        Command::Completions { shell } => completions(shell),
        Command::Queue { command } => queue::queue(cli.config.as_deref(), command),
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
        Command::Cluster {
            command: ClusterCommand::Status { api },
        } => Ok(admin::call(
            cli.config.as_deref(),
            &api,
            admin::cluster_status(),
        )),
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

/// `completions SHELL`: the script on standard output (a reader that stops early, like
/// `head`, is no error).
fn completions(shell: clap_complete::Shell) -> Result<ExitCode, String> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "optin-relay", &mut script);
    let mut out = std::io::stdout().lock();
    match std::io::Write::write_all(&mut out, &script)
        .and_then(|()| std::io::Write::flush(&mut out))
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("writing the completions: {e}")),
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
