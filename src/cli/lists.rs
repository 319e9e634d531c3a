//! `optin-relay lists …` and `optin-relay suppress …`: the consent and suppression data
//! from the command line.
//!
//! `suppress add|remove` and `lists grant|revoke` make their change through the running
//! relay when one answers at the config's operator listener (`super::admin::change_lists`):
//! the relay records it (journal fsynced) and has it in force before the command returns.
//! When no relay answers they write the lists journal themselves (fsynced), which a relay
//! picks up at its next refresh (`[lists] refresh_interval`) or start — never both, and
//! the message says which. `lists import` reads address files, reports invalid rows with
//! their line numbers and goes on, then compiles a new snapshot. Account and list names
//! are checked against the policy, so a typo cannot create a scope nothing ever looks at.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;
use crate::consent::compile::Batch;
use crate::consent::import::{self, Item};
use crate::consent::key::normalise;
use crate::consent::{self, CONSENT, Kind, Lists, Mode, Op, Origin, Reason, Scope};
use crate::envelope::Stream;
use crate::policy::verdict::explain;
use crate::policy::{Account, Policy};

#[derive(Debug, Subcommand)]
pub enum ListsCommand {
    /// Import addresses from .txt, .csv, .xlsx, .xls or .ods files, then compile.
    Import {
        /// What the addresses are.
        #[arg(long, value_enum)]
        kind: ImportKind,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Reason of imported suppressions.
        #[arg(long, value_enum, default_value = "manual")]
        reason: Reason,
        /// Files to read (one address per line, or an address column found by its header).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Start a new snapshot from the journal and these files alone, without the current
        /// snapshot (to recover from a lost or damaged one: re-import every list).
        #[arg(long)]
        rebuild: bool,
    },
    /// Fold the journal of live changes into a new snapshot.
    Compile {
        /// Start a new snapshot from the journal alone, without the current snapshot (what
        /// it held is gone: re-import the lists with `lists import` next).
        #[arg(long)]
        rebuild: bool,
    },
    /// Show what the lists say about an address, and the verdict.
    Check {
        address: String,
        /// The sending account.
        #[arg(long)]
        account: String,
        /// The list (default: the account's default list).
        #[arg(long)]
        list: Option<String>,
        /// The stream (default: the account's default stream).
        #[arg(long, value_enum)]
        stream: Option<Stream>,
    },
    /// Record consent for addresses on a list: through the running relay (in force at
    /// once), or in the journal when no relay answers.
    Grant {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        account: String,
        #[arg(long)]
        list: Option<String>,
    },
    /// Revoke consent for addresses on a list: through the running relay (in force at
    /// once), or in the journal when no relay answers.
    Revoke {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        account: String,
        #[arg(long)]
        list: Option<String>,
    },
    /// Snapshot and journal figures.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportKind {
    Consent,
    Suppression,
}

/// Where a suppression applies: globally (no account), to an account, or to one list.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The account (required for consent; omitted for a global suppression).
    #[arg(long)]
    pub account: Option<String>,
    /// The list of the account.
    #[arg(long, requires = "account")]
    pub list: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    /// Suppress addresses (globally, for an account, or for one list).
    Add {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum, default_value = "manual")]
        reason: Reason,
    },
    /// Lift suppressions (every reason unless --reason is given).
    Remove {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum)]
        reason: Option<Reason>,
    },
}

fn open(config: &Config) -> Result<Lists, String> {
    open_mode(config, Mode::Strict)
}

/// Opens the lists; outside [`Mode::Strict`] a lost snapshot is tolerated (and said so).
fn open_mode(config: &Config, mode: Mode) -> Result<Lists, String> {
    let lists = Lists::open_mode(
        &config.lists.path,
        config.lists.bloom_bits_per_key,
        false,
        mode,
    )
    .map_err(|e| e.to_string())?;
    if let Some(problem) = lists.snapshot_problem() {
        match mode {
            Mode::JournalOnly => {
                eprintln!("warning: {problem}\nThe change is recorded in the journal all the same.")
            }
            _ => eprintln!("warning: {problem}"),
        }
    }
    Ok(lists)
}

/// Journal writers tolerate a lost snapshot: recording a change never harms.
fn open_journal(config: &Config) -> Result<Lists, String> {
    open_mode(config, Mode::JournalOnly)
}

fn compile_mode(rebuild: bool) -> Mode {
    if rebuild { Mode::Rebuild } else { Mode::Strict }
}

fn account<'p>(policy: &'p Policy, name: &str) -> Result<&'p Account, String> {
    policy
        .account(name)
        .ok_or_else(|| format!("no account {name:?} in the policy"))
}

/// The list named, or the account's default; it must exist.
fn list_of(account: &Account, list: Option<&str>) -> Result<String, String> {
    let id = match list {
        Some(l) => l.to_string(),
        None => account.default_list.clone().ok_or_else(|| {
            format!(
                "account {:?} has no default list: name one with --list",
                account.name
            )
        })?,
    };
    if account.list(&id).is_none() {
        return Err(format!("account {:?} has no list {id:?}", account.name));
    }
    Ok(id)
}

/// Checks a suppression scope against the policy.
fn scope_names(
    policy: &Policy,
    scope: &ScopeArgs,
) -> Result<(Option<String>, Option<String>), String> {
    match (&scope.account, &scope.list) {
        (None, _) => Ok((None, None)),
        (Some(a), None) => {
            account(policy, a)?;
            Ok((Some(a.clone()), None))
        }
        (Some(a), Some(l)) => {
            let acc = account(policy, a)?;
            Ok((Some(a.clone()), Some(list_of(acc, Some(l))?)))
        }
    }
}

fn scope<'a>(account: Option<&'a str>, list: Option<&'a str>) -> Scope<'a> {
    match (account, list) {
        (None, _) => Scope::Global,
        (Some(a), None) => Scope::Account(a),
        (Some(a), Some(l)) => Scope::List(a, l),
    }
}

fn normalised_all(addresses: &[String]) -> Result<Vec<String>, String> {
    addresses
        .iter()
        .map(|a| normalise(a).map_err(|e| format!("{a:?}: {e}")))
        .collect()
}

fn record(
    lists: &Lists,
    kind: Kind,
    scope: Scope<'_>,
    op: Op,
    tags: u8,
    addrs: &[String],
) -> Result<(), String> {
    lists
        .record_addresses(kind, scope, op, tags, Origin::Operator, addrs)
        .map_err(|e| e.to_string())
}

/// How a change was made: through the running relay, or, when none answers, in the
/// journal (with why, and when a relay has it).
enum Made {
    Relay,
    Journal(String),
}

impl Made {
    fn text(&self) -> String {
        match self {
            Made::Relay => "through the running relay; in force now".into(),
            Made::Journal(why) => why.clone(),
        }
    }
}

/// Offers the change to the running relay; when none answers, writes it to the journal.
/// `Err(code)`: the relay refused or failed (already said), nothing written here.
fn change(
    config: &Config,
    path: &str,
    fields: serde_json::Value,
    addrs: &[String],
    journal: impl FnOnce(&Lists) -> Result<(), String>,
) -> Result<Result<Made, ExitCode>, String> {
    match super::admin::change_lists(config, path, &fields, addrs) {
        super::admin::Relayed::Done => Ok(Ok(Made::Relay)),
        super::admin::Relayed::Failed(code) => Ok(Err(code)),
        super::admin::Relayed::Absent(why) => {
            journal(&open_journal(config)?)?;
            Ok(Ok(Made::Journal(format!(
                "written to the lists journal ({why}); a relay has it within {} \
                 ([lists] refresh_interval), or when it starts",
                humantime::format_duration(config.lists.refresh_interval)
            ))))
        }
    }
}

pub fn suppress(
    config: &Config,
    policy: &Policy,
    command: SuppressCommand,
) -> Result<ExitCode, String> {
    match command {
        SuppressCommand::Add {
            addresses,
            scope: s,
            reason,
        } => {
            let (a, l) = scope_names(policy, &s)?;
            let addrs = normalised_all(&addresses)?;
            let sc = scope(a.as_deref(), l.as_deref());
            let fields = serde_json::json!({"account": a, "list": l, "reason": reason.as_str()});
            let made = change(config, "/suppressions", fields, &addrs, |lists| {
                record(lists, Kind::Suppression, sc, Op::Add, reason.bit(), &addrs)
            })?;
            let made = match made {
                Ok(m) => m,
                Err(code) => return Ok(code),
            };
            println!(
                "suppressed {} address(es) ({}, {sc}) {}",
                addrs.len(),
                reason.as_str(),
                made.text()
            );
        }
        SuppressCommand::Remove {
            addresses,
            scope: s,
            reason,
        } => {
            let (a, l) = scope_names(policy, &s)?;
            let addrs = normalised_all(&addresses)?;
            let sc = scope(a.as_deref(), l.as_deref());
            let bits = reason.map_or(consent::ALL_REASONS, Reason::bit);
            let fields =
                serde_json::json!({"account": a, "list": l, "reason": reason.map(Reason::as_str)});
            let made = change(config, "/suppressions/remove", fields, &addrs, |lists| {
                record(lists, Kind::Suppression, sc, Op::Remove, bits, &addrs)
            })?;
            let made = match made {
                Ok(m) => m,
                Err(code) => return Ok(code),
            };
            println!(
                "lifted {} suppression(s) of {} address(es) ({sc}) {}",
                reason.map_or("all", Reason::as_str),
                addrs.len(),
                made.text()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lists(config: &Config, policy: &Policy, command: ListsCommand) -> Result<ExitCode, String> {
    match command {
        ListsCommand::Import {
            kind,
            scope: s,
            reason,
            files,
            rebuild,
        } => import_files(
            config,
            policy,
            kind,
            &s,
            reason,
            &files,
            compile_mode(rebuild),
        ),
        ListsCommand::Compile { rebuild } => {
            let lists = open_mode(config, compile_mode(rebuild))?;
            let r = lists.compile(Vec::new()).map_err(|e| e.to_string())?;
            println!(
                "snapshot: {} entries, {} octets; {} journal change(s) folded in {:.2?}",
                r.entries, r.bytes, r.journal_changes, r.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        ListsCommand::Check {
            address,
            account: name,
            list,
            stream,
        } => check(config, policy, &address, &name, list.as_deref(), stream),
        ListsCommand::Grant {
            addresses,
            account: name,
            list,
        } => consent_change(config, policy, &addresses, &name, list.as_deref(), Op::Add),
        ListsCommand::Revoke {
            addresses,
            account: name,
            list,
        } => consent_change(
            config,
            policy,
            &addresses,
            &name,
            list.as_deref(),
            Op::Remove,
        ),
        ListsCommand::Status => {
            let lists = open(config)?;
            let st = lists.stats();
            println!("directory:        {}", lists.dir().display());
            println!("snapshot entries: {}", st.snapshot_entries);
            println!("snapshot size:    {} octets", st.snapshot_bytes);
            if let Some(created) = st.snapshot_created_ms {
                let age = crate::envelope::now_ms().saturating_sub(created) / 1000;
                println!(
                    "snapshot age:     {}",
                    humantime::format_duration(std::time::Duration::from_secs(age))
                );
            }
            if let Some(s) = lists.snapshot() {
                println!(
                    "bloom:            {:.1} bits/entry, {} probes",
                    s.bits_per_key(),
                    s.probes()
                );
            }
            println!(
                "journal changes:  {} address(es) since the snapshot",
                st.delta_entries
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn consent_change(
    config: &Config,
    policy: &Policy,
    addresses: &[String],
    name: &str,
    list: Option<&str>,
    op: Op,
) -> Result<ExitCode, String> {
    let acc = account(policy, name)?;
    let list = list_of(acc, list)?;
    let addrs = normalised_all(addresses)?;
    let (path, done) = match op {
        Op::Add => ("/consent/grant", "recorded"),
        Op::Remove => ("/consent/revoke", "revoked"),
    };
    let fields = serde_json::json!({"account": name, "list": list});
    let made = change(config, path, fields, &addrs, |lists| {
        let scope = Scope::List(name, &list);
        record(lists, Kind::Consent, scope, op, CONSENT, &addrs)
    })?;
    let made = match made {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    println!(
        "consent {done} for {} address(es) on {name}/{list} {}",
        addrs.len(),
        made.text()
    );
    Ok(ExitCode::SUCCESS)
}

fn reasons_text(tags: u8) -> String {
    let r: Vec<&str> = Reason::from_tags(tags).map(Reason::as_str).collect();
    if r.is_empty() {
        "-".into()
    } else {
        r.join(", ")
    }
}

fn check(
    config: &Config,
    policy: &Policy,
    address: &str,
    name: &str,
    list: Option<&str>,
    stream: Option<Stream>,
) -> Result<ExitCode, String> {
    let acc = account(policy, name)?;
    let stream = stream.unwrap_or(acc.default_stream);
    let list = match list {
        Some(l) => Some(list_of(acc, Some(l))?),
        None => acc.default_list.clone(),
    };
    let normalised = normalise(address).map_err(|e| format!("{address:?}: {e}"))?;
    let lists = open(config)?;
    let st = lists.standing(name, list.as_deref(), &normalised);
    println!("address:     {normalised}");
    println!(
        "sending as:  account {name}, list {}, stream {stream}",
        list.as_deref().unwrap_or("(none)")
    );
    match &list {
        Some(l) => println!(
            "consent:     {} ({name}/{l})",
            if st.consent { "yes" } else { "no" }
        ),
        None => println!("consent:     (no list)"),
    }
    println!("suppressed:  global: {}", reasons_text(st.global));
    println!("             account {name}: {}", reasons_text(st.account));
    if let Some(l) = &list {
        println!("             list {name}/{l}: {}", reasons_text(st.list));
    }
    match explain(acc, stream, list.as_deref(), &st, address) {
        Ok(()) => {
            println!("verdict:     allowed");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!("verdict:     refused: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// At most this many invalid rows are listed one by one; the rest are counted.
const INVALID_SHOWN: u64 = 50;

fn import_files(
    config: &Config,
    policy: &Policy,
    kind: ImportKind,
    s: &ScopeArgs,
    reason: Reason,
    files: &[PathBuf],
    mode: Mode,
) -> Result<ExitCode, String> {
    let (account_name, list) = match kind {
        ImportKind::Consent => {
            let name = s
                .account
                .as_deref()
                .ok_or("consent needs --account (and --list or the account's default list)")?;
            let acc = account(policy, name)?;
            (
                Some(name.to_string()),
                Some(list_of(acc, s.list.as_deref())?),
            )
        }
        ImportKind::Suppression => scope_names(policy, s)?,
    };
    let (kind_key, tags) = match kind {
        ImportKind::Consent => (Kind::Consent, CONSENT),
        ImportKind::Suppression => (Kind::Suppression, reason.bit()),
    };
    let lists = open_mode(config, mode)?;
    let sc = scope(account_name.as_deref(), list.as_deref());
    let mut fps = Vec::new();
    let (mut rows, mut invalid) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for file in files {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {percent}% {elapsed_precise} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.display().to_string());
        let mut sink = |item: Item| match item {
            Item::Address { line, text } => {
                rows += 1;
                match normalise(&text) {
                    Ok(n) => fps.push(lists.secret().fingerprint(kind_key, sc, &n)),
                    Err(e) => {
                        invalid += 1;
                        if invalid <= INVALID_SHOWN {
                            bar.suspend(|| eprintln!("{}:{line}: {e}", file.display()));
                        }
                    }
                }
            }
            Item::Invalid { line, reason } => {
                rows += 1;
                invalid += 1;
                if invalid <= INVALID_SHOWN {
                    bar.suspend(|| eprintln!("{}:{line}: {reason}", file.display()));
                }
            }
        };
        let mut progress = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let read = import::read_file(file, &mut sink, &mut progress);
        bar.finish_and_clear();
        read.map_err(|e| e.to_string())?;
    }
    if invalid > INVALID_SHOWN {
        eprintln!("… and {} more invalid row(s)", invalid - INVALID_SHOWN);
    }
    let valid = fps.len() as u64;
    let read_time = started.elapsed();
    let report = lists
        .compile(vec![Batch { fps, tags }])
        .map_err(|e| e.to_string())?;
    println!(
        "read {rows} row(s) from {} file(s) in {read_time:.2?}: {valid} valid, {invalid} invalid",
        files.len()
    );
    println!(
        "imported as {} ({sc}): {} new",
        match kind {
            ImportKind::Consent => "consent".to_string(),
            ImportKind::Suppression => format!("suppression ({})", reason.as_str()),
        },
        report.imported_new
    );
    println!(
        "snapshot: {} entries, {} octets, compiled in {:.2?}",
        report.entries, report.bytes, report.elapsed
    );
    Ok(ExitCode::SUCCESS)
}
