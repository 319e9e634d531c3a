//! `optin-relay bounce classify FILE…`: what the relay makes of saved messages mailed to a
//! return path — the kind, the recipient the bounce names, its action and status, the
//! category and the rule that gave it, hard or soft, and (when the config's token key file
//! exists) whether the return-path token in its `To`/`Delivered-To` is genuine and what it
//! names — as text or `--json`, without a running relay.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::bounce::{Classifier, explain};
use crate::config::Config;
use crate::rewrite::return_path::ReturnPaths;
use crate::rewrite::token::TokenKeys;

/// Largest file read.
const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, Subcommand)]
pub enum BounceCommand {
    /// Read and classify saved messages (the policy's `[[bounce_rules]]`, then the shipped
    /// ones), without a running relay.
    Classify {
        /// Messages as files (`.eml`, one RFC 5322 message each).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn bounce(
    config: &Config,
    classifier: &Classifier,
    command: BounceCommand,
) -> Result<ExitCode, String> {
    let BounceCommand::Classify { files, json } = command;
    // Only an existing key file is read: a tool never creates one.
    let paths = config
        .unsubscribe
        .keys
        .exists()
        .then(|| TokenKeys::load_or_create(&config.unsubscribe.keys))
        .transpose()
        .map_err(|e| e.to_string())?
        .map(|keys| ReturnPaths {
            keys: std::sync::Arc::new(keys),
            prefix: config.bounces.prefix.clone(),
            domain: config.bounces.domain.clone(),
        });
    let mut all = Vec::new();
    let mut failed = false;
    for file in &files {
        let v = match read(file) {
            Ok(raw) => classify(file, &raw, classifier, paths.as_ref()),
            Err(e) => {
                failed = true;
                json!({"file": file.display().to_string(), "error": e})
            }
        };
        if !json {
            print_text(&v);
        }
        all.push(v);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all).expect("JSON"));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} octets"));
    }
    std::fs::read(file).map_err(|e| e.to_string())
}

/// The facts of one file as JSON.
fn classify(
    file: &Path,
    raw: &[u8],
    classifier: &Classifier,
    paths: Option<&ReturnPaths>,
) -> Value {
    let name = file.display().to_string();
    if !crate::governance::complaints::arf::within_mime_budget(raw) {
        return json!({"file": name, "kind": "too_complex"});
    }
    let token = paths.and_then(|p| token(raw, p));
    let address = token
        .as_ref()
        .and_then(|t| t.as_ref().ok())
        .map(|rp| rp.address.clone());
    let e = std::panic::catch_unwind(|| explain(raw, classifier, address.as_deref()))
        .unwrap_or_else(|_| explain(b"", classifier, None));
    let report = e.report.as_ref();
    json!({
        "file": name,
        "kind": e.bounce.kind.as_str(),
        "recipient": report.and_then(|r| r.recipient.clone()),
        "action": report.map(|r| r.action.as_str()),
        "status": report.and_then(|r| r.status).map(|s| s.to_string()),
        "code": report.and_then(|r| r.code),
        "category": e.verdict.as_ref().map(|v| v.category.as_str()),
        "rule": e.verdict.as_ref().map(|v| v.rule.clone()),
        "hard": e.verdict.is_some().then_some(e.hard),
        "does": does(&e),
        "original_message_id": e.bounce.original_message_id,
        "token": match token {
            None => Value::Null,
            Some(Ok(rp)) => json!({
                "genuine": true,
                "queue_id": rp.id.to_string(),
                "account": rp.account,
                "list": rp.list,
                "campaign": rp.campaign,
                "recipient": rp.address,
            }),
            Some(Err(why)) => json!({"genuine": false, "why": why.to_string()}),
        },
    })
}

/// What the relay would do with it (the token aside): `suppress`, `streak` (count toward
/// a full mailbox's streak), `count`, `ignore`, `complaint` or `keep aside`.
fn does(e: &crate::bounce::Explained) -> &'static str {
    use crate::bounce::parse::{Action, Kind};
    match (e.bounce.kind, e.report.as_ref(), &e.verdict) {
        (Kind::Arf, _, _) => "complaint",
        (Kind::AutoReply, _, _) => "ignore",
        (_, Some(r), _) if r.action != Action::Failed => "ignore",
        (_, Some(_), Some(_)) if e.hard => "suppress",
        (_, Some(_), Some(v)) if v.category.action() == crate::bounce::Action::Streak => "streak",
        (_, Some(_), Some(_)) => "count",
        _ => "keep aside",
    }
}

/// The return-path token of the first `Delivered-To`, `X-Original-To` or `To` address
/// that has the return-path form, opened.
fn token(
    raw: &[u8],
    paths: &ReturnPaths,
) -> Option<Result<crate::rewrite::token::ReturnPath, crate::rewrite::token::TokenError>> {
    let headers = mail_parser::MessageParser::new().parse_headers(raw)?;
    ["Delivered-To", "X-Original-To", "To"]
        .iter()
        .filter_map(|h| headers.header_raw(*h))
        .flat_map(|v| v.split([',', '<', '>', ' ', '\t', '\r', '\n']))
        .filter_map(|a| crate::smtp::Address::parse(a.trim()).ok())
        .find_map(|a| paths.token_of(&a, &[a.domain()]).map(|t| paths.open(t)))
}

fn print_text(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    println!("{}", s("file"));
    if let Some(e) = v["error"].as_str() {
        println!("  error: {e}");
        return;
    }
    println!("  kind: {} (the relay would: {})", s("kind"), s("does"));
    if v["category"].is_string() {
        println!("  recipient: {}", s("recipient"));
        let code = v["code"]
            .as_u64()
            .map(|c| format!(" (reply {c})"))
            .unwrap_or_default();
        println!("  action: {}, status: {}{code}", s("action"), s("status"));
        let hard = if v["hard"] == true { "hard" } else { "soft" };
        println!("  category: {} ({hard})", s("category"));
        println!("  rule: {}", s("rule"));
    }
    match &v["token"] {
        Value::Null => {}
        t if t["genuine"] == true => println!(
            "  token: genuine: queue id {}, account {}, list {}, campaign {}, recipient {}",
            t["queue_id"].as_str().unwrap_or("-"),
            t["account"].as_str().unwrap_or("-"),
            t["list"].as_str().filter(|l| !l.is_empty()).unwrap_or("-"),
            t["campaign"]
                .as_str()
                .filter(|c| !c.is_empty())
                .unwrap_or("-"),
            t["recipient"].as_str().unwrap_or("-"),
        ),
        t => println!(
            "  token: not genuine ({})",
            t["why"].as_str().unwrap_or("-")
        ),
    }
}
