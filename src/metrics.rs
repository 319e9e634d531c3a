//! Prometheus metrics: names, help texts and the small recording helpers the rest of the
//! relay calls.
//!
//! The `metrics` facade records into whatever recorder is installed; `serve` installs the
//! Prometheus one ([`install`]) and the HTTP listener renders it at `GET /metrics`. Without
//! a recorder (unit tests) recording is a no-op. Label values are drawn from small fixed
//! sets — reply classes, results, reasons — never from addresses or other personal data.
//! The fixed sets are listed here ([`COMMAND_VERBS`], [`VERDICT_REASONS`], …) and every
//! combination is registered at zero by [`install`], so dashboards and `promtool` see each
//! series before the first event. The only open-ended labels are `site` (bounded by
//! [`crate::delivery`]) and `account` (the policy's account names).

mod cluster;
mod describe;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::smtp::refusal::{Refusal, Withheld};
pub use cluster::*;
use describe::describe;

pub const SMTP_CONNECTIONS: &str = "optin_smtp_connections_total";
pub const SMTP_CONNECTIONS_REFUSED: &str = "optin_smtp_connections_refused_total";
pub const SMTP_SESSIONS_ACTIVE: &str = "optin_smtp_sessions_active";
pub const SMTP_REPLIES: &str = "optin_smtp_replies_total";
pub const SMTP_COMMANDS: &str = "optin_smtp_commands_total";
pub const POLICY_VERDICTS: &str = "optin_policy_verdicts_total";
pub const SPOOL_BYTES: &str = "optin_spool_bytes";
pub const SPOOL_SEGMENTS: &str = "optin_spool_segments";
pub const LISTS_SNAPSHOT_BYTES: &str = "optin_lists_snapshot_bytes";
pub const MESSAGES_ACCEPTED: &str = "optin_messages_accepted_total";
pub const MESSAGES_REFUSED: &str = "optin_messages_refused_total";
pub const SPOOL_COMMIT_SECONDS: &str = "optin_spool_commit_seconds";
pub const QUEUE_MESSAGES: &str = "optin_queue_messages";
pub const QUEUE_RECIPIENTS: &str = "optin_queue_recipients";
pub const DELIVERY_ATTEMPTS: &str = "optin_delivery_attempts_total";
pub const DELIVERY_RECIPIENTS: &str = "optin_delivery_recipients_total";
pub const DSN_GENERATED: &str = "optin_dsn_generated_total";
pub const RECIPIENTS_WITHHELD: &str = "optin_recipients_withheld_total";
pub const LISTS_ENTRIES: &str = "optin_lists_snapshot_entries";
pub const LISTS_DELTA: &str = "optin_lists_delta_entries";
pub const LISTS_SNAPSHOT_AGE: &str = "optin_lists_snapshot_age_seconds";
pub const LISTS_ERRORS: &str = "optin_lists_refresh_errors_total";
pub const LISTS_COMPACTIONS: &str = "optin_lists_compactions_total";
pub const UNSUBSCRIBES: &str = "optin_unsubscribes_total";
pub const BOUNCE_SUPPRESSIONS: &str = "optin_bounce_suppressions_total";
pub const BOUNCES: &str = "optin_bounces_total";
pub const BOUNCE_MAIL: &str = "optin_bounce_mail_total";
pub const RETURN_PATH_TOO_LONG: &str = "optin_return_path_too_long_total";
pub const ENGAGEMENTS: &str = "optin_engagements_total";
pub const TRACKING_REFUSED: &str = "optin_tracking_refused_total";
pub const CONSENT_CHANGES: &str = "optin_consent_changes_total";
pub const UPLOAD_JOBS: &str = "optin_upload_jobs_total";
pub const SUBSCRIPTIONS: &str = "optin_subscriptions_total";
pub const ACCOUNT_API_REFUSED: &str = "optin_account_api_refused_total";
pub const COMPLAINTS: &str = "optin_complaints_received_total";
pub const COMPLAINT_REPORTS_MALFORMED: &str = "optin_complaint_reports_malformed_total";
pub const ACCOUNT_RECIPIENTS: &str = "optin_account_recipients_total";
pub const THROTTLE_WAIT: &str = "optin_throttle_wait_seconds";
pub const SHAPING_ACTIONS: &str = "optin_shaping_actions_total";
pub const POLICY_RELOADS: &str = "optin_policy_reloads_total";
pub const ACCOUNTS_FROZEN: &str = "optin_accounts_frozen_total";
pub const POLICY_GENERATION: &str = "optin_policy_generation";
pub const QUEUE_SITE_RECIPIENTS: &str = "optin_queue_site_recipients";
pub const QUEUE_SITE_OLDEST: &str = "optin_queue_site_oldest_seconds";
pub const DELIVERY_SITE_RECIPIENTS: &str = "optin_delivery_site_recipients_total";
pub const AUTH_ATTEMPTS: &str = "optin_auth_attempts_total";
pub const UNTRUSTED_REFUSALS: &str = "optin_untrusted_refusals_total";
pub const SPOOL_QUARANTINED: &str = "optin_spool_quarantined_total";
pub const SPOOL_UNREADABLE: &str = "optin_spool_unreadable_messages_total";
pub const LISTS_SNAPSHOT_REFUSED: &str = "optin_lists_snapshot_refused";
pub const HTTP_CONNECTIONS_REFUSED: &str = "optin_http_connections_refused_total";
pub const HTTP_TIMEOUTS: &str = "optin_http_timeouts_total";
pub const BUILD_INFO: &str = "optin_build_info";
pub const SPOOL_DISK_FREE: &str = "optin_spool_disk_free_bytes";
pub const SPOOL_DISK_TOTAL: &str = "optin_spool_disk_total_bytes";
pub const TLS_NOT_AFTER: &str = "optin_tls_certificate_not_after_seconds";
pub const ACCOUNT_THRESHOLD: &str = "optin_account_threshold_ratio";
pub const CAMPAIGN_VERDICTS: &str = "optin_campaign_verdicts_total";
/// The `threshold` label of [`ACCOUNT_THRESHOLD`].
pub const HEALTH_THRESHOLDS: [&str; 3] = ["complaints", "hard_bounces", "unsubscribes"];

/// `listener` of the HTTP metrics: the public one and the operator one.
pub const HTTP_LISTENERS: [&str; 2] = ["public", "admin"];
/// `stage` of [`HTTP_TIMEOUTS`]: where a client was too slow.
pub const HTTP_TIMEOUT_STAGES: [&str; 4] = ["tls", "header", "body", "idle"];

/// `verb` of [`SMTP_COMMANDS`]: the commands the server knows, and `unknown` for the rest.
pub const COMMAND_VERBS: [&str; 15] = [
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS", "AUTH", "unknown",
];
/// `reason` of [`POLICY_VERDICTS`]: `allowed`, or why a recipient was refused.
pub const VERDICT_REASONS: [&str; 9] = [
    "allowed",
    "consent_missing",
    "consent_expired",
    "unsubscribed",
    "bounced",
    "complaint",
    "blocked",
    "frozen",
    "content",
];
/// `reason` of [`MESSAGES_REFUSED`].
pub const MESSAGE_REFUSAL_REASONS: [&str; 16] = [
    "account_frozen",
    "campaign_declined",
    "too_big",
    "memory",
    "bare_line_ending",
    "nul",
    "line_too_long",
    "mail_loop",
    "spool_error",
    "optin_header",
    "withheld",
    "account_gone",
    "sender_identity",
    "operator_contact",
    "footer_impossible",
    "prohibited_content",
];
/// `reason` of [`UNTRUSTED_REFUSALS`]: the labels of the refusals a stranger's mail to the
/// relay's own addresses can get.
pub const UNTRUSTED_REFUSAL_REASONS: [&str; 4] =
    ["report_rate", "too_big", "mime_budget", "memory"];
/// `reason` of [`RECIPIENTS_WITHHELD`] (the labels of [`Withheld`]).
pub const WITHHELD_REASONS: [&str; 7] = [
    "consent_missing",
    "consent_expired",
    "unsubscribed_list",
    "unsubscribed_all",
    "bounced",
    "complaint",
    "blocked",
];
/// `result` of [`DELIVERY_RECIPIENTS`] and [`DELIVERY_SITE_RECIPIENTS`].
pub const RECIPIENT_RESULTS: [&str; 4] = ["delivered", "deferred", "bounced", "expired"];

/// One series' labels, as `(name, value)` pairs.
type Labels = &'static [(&'static str, &'static str)];

/// Every counter with fixed labels and each of its label sets, registered at zero.
const FIXED_COUNTERS: &[(&str, &[Labels])] = &[
    (
        SMTP_CONNECTIONS,
        &[&[("kind", "plain")], &[("kind", "tls")]],
    ),
    (
        SMTP_CONNECTIONS_REFUSED,
        &[
            &[("reason", "total")],
            &[("reason", "per_ip")],
            &[("reason", "untrusted_per_ip")],
        ],
    ),
    (
        AUTH_ATTEMPTS,
        &[
            &[("result", "ok")],
            &[("result", "failed")],
            &[("result", "locked")],
            &[("result", "busy")],
        ],
    ),
    (
        UNTRUSTED_REFUSALS,
        &[
            &[("reason", UNTRUSTED_REFUSAL_REASONS[0])],
            &[("reason", UNTRUSTED_REFUSAL_REASONS[1])],
            &[("reason", UNTRUSTED_REFUSAL_REASONS[2])],
            &[("reason", UNTRUSTED_REFUSAL_REASONS[3])],
        ],
    ),
    (
        SMTP_REPLIES,
        &[
            &[("class", "2xx")],
            &[("class", "3xx")],
            &[("class", "4xx")],
            &[("class", "5xx")],
        ],
    ),
    (MESSAGES_ACCEPTED, &[&[]]),
    (
        DELIVERY_ATTEMPTS,
        &[&[("result", "ok")], &[("result", "failed")]],
    ),
    (
        DSN_GENERATED,
        &[
            &[("action", "failed")],
            &[("action", "delayed")],
            &[("action", "relayed")],
        ],
    ),
    (LISTS_ERRORS, &[&[]]),
    (LISTS_COMPACTIONS, &[&[]]),
    (
        UNSUBSCRIBES,
        &[
            &[("scope", "list"), ("via", "mail")],
            &[("scope", "list"), ("via", "http")],
            &[("scope", "account"), ("via", "mail")],
            &[("scope", "account"), ("via", "http")],
        ],
    ),
    (BOUNCE_SUPPRESSIONS, &[&[]]),
    (RETURN_PATH_TOO_LONG, &[&[]]),
    (ENGAGEMENTS, &[&[("kind", "open")], &[("kind", "click")]]),
    (UPLOAD_JOBS, &[&[("state", "done")], &[("state", "failed")]]),
    (ACCOUNT_API_REFUSED, &[&[]]),
    (
        TRACKING_REFUSED,
        &[&[("kind", "open")], &[("kind", "click")]],
    ),
    (COMPLAINTS, &[&[("via", "arf")], &[("via", "form")]]),
    (COMPLAINT_REPORTS_MALFORMED, &[&[]]),
    (
        SHAPING_ACTIONS,
        &[&[("action", "slow")], &[("action", "suspend")]],
    ),
    (
        POLICY_RELOADS,
        &[&[("result", "ok")], &[("result", "refused")]],
    ),
    (SPOOL_QUARANTINED, &[&[]]),
    (
        SPOOL_UNREADABLE,
        &[&[("outcome", "returned")], &[("outcome", "dropped")]],
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then (or until a scrape renders them): without this, a relay nobody
/// scrapes grows by each message's samples, for ever.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the Prometheus recorder once per process and returns its handle. Later calls
/// (a second relay in the same test process) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(SPOOL_COMMIT_SECONDS.into()),
                    &[
                        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(THROTTLE_WAIT.into()),
                    &[
                        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(CLUSTER_REDIS_SECONDS.into()),
                    CLUSTER_BUCKETS,
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread for metrics upkeep");
            // Another recorder may already be installed (a test harness); ours then only
            // renders what it sees, which is nothing, and that is acceptable there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_at_zero();
            handle
        })
        .clone()
}

/// Registers every series with fixed labels at zero (without changing one that already
/// has a value), so it is exposed before the first event.
fn register_at_zero() {
    for (name, label_sets) in FIXED_COUNTERS {
        for labels in *label_sets {
            counter!(*name, *labels).increment(0);
        }
    }
    for verb in COMMAND_VERBS {
        counter!(SMTP_COMMANDS, "verb" => verb).increment(0);
    }
    for reason in VERDICT_REASONS {
        counter!(POLICY_VERDICTS, "reason" => reason).increment(0);
    }
    for reason in MESSAGE_REFUSAL_REASONS {
        counter!(MESSAGES_REFUSED, "reason" => reason).increment(0);
    }
    for by in ["health", "content", "admin"] {
        counter!(ACCOUNTS_FROZEN, "by" => by).increment(0);
    }
    for verdict in ["released", "declined"] {
        counter!(CAMPAIGN_VERDICTS, "verdict" => verdict).increment(0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for reason in WITHHELD_REASONS {
        for stage in ["rcpt", "data"] {
            counter!(RECIPIENTS_WITHHELD, "reason" => reason, "stage" => stage).increment(0);
        }
    }
    for category in crate::bounce::Category::ALL {
        for via in ["sync", "async"] {
            counter!(BOUNCES, "category" => category.as_str(), "via" => via).increment(0);
        }
    }
    for outcome in BOUNCE_MAIL_OUTCOMES {
        counter!(BOUNCE_MAIL, "outcome" => *outcome).increment(0);
    }
    for outcome in SUBSCRIPTION_OUTCOMES {
        counter!(SUBSCRIPTIONS, "outcome" => *outcome).increment(0);
    }
    for result in RECIPIENT_RESULTS {
        counter!(DELIVERY_RECIPIENTS, "result" => result).increment(0);
    }
    for listener in HTTP_LISTENERS {
        for reason in ["total", "per_ip"] {
            counter!(HTTP_CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason)
                .increment(0);
        }
        for stage in HTTP_TIMEOUT_STAGES {
            counter!(HTTP_TIMEOUTS, "listener" => listener, "stage" => stage).increment(0);
        }
    }
    for name in [
        SMTP_SESSIONS_ACTIVE,
        QUEUE_MESSAGES,
        QUEUE_RECIPIENTS,
        SPOOL_BYTES,
        SPOOL_SEGMENTS,
        LISTS_ENTRIES,
        LISTS_DELTA,
        LISTS_SNAPSHOT_BYTES,
        LISTS_SNAPSHOT_REFUSED,
    ] {
        gauge!(name).increment(0.0);
    }
    let _ = histogram!(SPOOL_COMMIT_SECONDS);
    let _ = histogram!(THROTTLE_WAIT);
}

/// An HTTP connection refused at once (`reason`: total or per_ip).
pub fn http_connection_refused(listener: &'static str, reason: &'static str) {
    counter!(HTTP_CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason).increment(1);
}

/// An HTTP connection closed because its client was too slow at `stage`.
pub fn http_timeout(listener: &'static str, stage: &'static str) {
    counter!(HTTP_TIMEOUTS, "listener" => listener, "stage" => stage).increment(1);
}

/// One spool group commit (write + fdatasync) took `took`.
pub fn spool_commit(took: Duration) {
    histogram!(SPOOL_COMMIT_SECONDS).record(took.as_secs_f64());
}

/// The session sent a reply with `code`.
pub fn reply_sent(code: u16) {
    let class = match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    counter!(SMTP_REPLIES, "class" => class).increment(1);
}

/// An SMTP connection was accepted on a `plain` or `tls` listener.
pub fn connection(kind: &'static str) {
    counter!(SMTP_CONNECTIONS, "kind" => kind).increment(1);
}

/// An SMTP connection was refused at once (`total` or `per_ip` limit).
pub fn connection_refused(reason: &'static str) {
    counter!(SMTP_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A session opened (`1.0`) or closed (`-1.0`).
pub fn sessions_active(delta: f64) {
    gauge!(SMTP_SESSIONS_ACTIVE).increment(delta);
}

/// A message is safely in the spool and answered 250.
pub fn message_accepted() {
    counter!(MESSAGES_ACCEPTED).increment(1);
}

/// A message was refused (at MAIL or at the end of DATA/BDAT), counted by the refusal's
/// label (one of [`MESSAGE_REFUSAL_REASONS`]).
pub fn message_refused(refusal: &Refusal) {
    let reason = refusal.label();
    debug_assert!(MESSAGE_REFUSAL_REASONS.contains(&reason), "{reason}");
    counter!(MESSAGES_REFUSED, "reason" => reason).increment(1);
}

/// The delivery queue now holds `messages` with `recipients` still to do.
pub fn queue_size(messages: usize, recipients: usize) {
    gauge!(QUEUE_MESSAGES).set(messages as f64);
    gauge!(QUEUE_RECIPIENTS).set(recipients as f64);
}

/// One delivery transaction ended, successfully or not.
pub fn delivery_attempt(ok: bool) {
    counter!(DELIVERY_ATTEMPTS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// What happened to one recipient; `result` is one of [`RECIPIENT_RESULTS`].
pub fn recipient_outcome(result: &'static str) {
    counter!(DELIVERY_RECIPIENTS, "result" => result).increment(1);
}

/// A DSN was queued for the sender.
pub fn dsn_generated(action: &'static str) {
    counter!(DSN_GENERATED, "action" => action).increment(1);
}

/// The policy refused a recipient; `reason` is a [`Withheld`] label, `stage` `rcpt` or
/// `data`.
pub fn recipient_withheld(reason: &'static str, stage: &'static str) {
    counter!(RECIPIENTS_WITHHELD, "reason" => reason, "stage" => stage).increment(1);
}

/// The lists in service now (after start, a refresh or a compaction).
/// `snapshot_created_ms` is when the snapshot in service was written, when known.
pub fn lists_state(
    snapshot_entries: u64,
    snapshot_bytes: u64,
    delta_entries: usize,
    snapshot_created_ms: Option<u64>,
) {
    gauge!(LISTS_ENTRIES).set(snapshot_entries as f64);
    gauge!(LISTS_SNAPSHOT_BYTES).set(snapshot_bytes as f64);
    gauge!(LISTS_DELTA).set(delta_entries as f64);
    if let Some(created) = snapshot_created_ms {
        let age = crate::envelope::now_ms().saturating_sub(created) as f64 / 1000.0;
        gauge!(LISTS_SNAPSHOT_AGE).set(age);
    }
}

/// Following or compacting the lists failed.
pub fn lists_error() {
    counter!(LISTS_ERRORS).increment(1);
}

/// Whether the lists snapshot file on disk is refused while the last good one serves.
pub fn lists_snapshot_refused(refused: bool) {
    gauge!(LISTS_SNAPSHOT_REFUSED).set(if refused { 1.0 } else { 0.0 });
}

/// Damaged spool data was copied to quarantine.
pub fn spool_quarantined() {
    counter!(SPOOL_QUARANTINED).increment(1);
}

/// A queued message could not be read back: `returned` to its sender, or `dropped`.
pub fn spool_unreadable(outcome: &'static str) {
    counter!(SPOOL_UNREADABLE, "outcome" => outcome).increment(1);
}

/// The journal was folded into a new snapshot.
pub fn lists_compacted() {
    counter!(LISTS_COMPACTIONS).increment(1);
}

/// An unsubscribe was recorded: `scope` `list` or `account`, `via` `mail` or `http`.
pub fn unsubscribe_received(scope: &'static str, via: &'static str) {
    counter!(UNSUBSCRIBES, "scope" => scope, "via" => via).increment(1);
}

/// A hard bounce was recorded as a suppression.
/// What became of mail to a return path (`crate::governance::bounces`).
pub const BOUNCE_MAIL_OUTCOMES: &[&str] = &[
    "bounce",
    "delayed",
    "auto_reply",
    "complaint",
    "unverified",
    "not_a_bounce",
    "too_complex",
];

/// A bounce was classified: `via` `sync` (a reply in the relay's own transaction) or
/// `async` (mailed back to the return path).
pub fn bounce(category: crate::bounce::Category, via: &'static str) {
    counter!(BOUNCES, "category" => category.as_str(), "via" => via).increment(1);
}

/// Mail to a return path was handled with this `outcome` (one of [`BOUNCE_MAIL_OUTCOMES`]).
pub fn bounce_mail(outcome: &'static str) {
    counter!(BOUNCE_MAIL, "outcome" => outcome).increment(1);
}

/// A return path would have been longer than SMTP allows: the message kept its sender.
pub fn return_path_too_long() {
    counter!(RETURN_PATH_TOO_LONG).increment(1);
}

/// An open or a click was recorded (`kind` `open` or `click`).
/// Consents granted or withdrawn by the accounts' paths (`crate::governance::consents`),
/// by action (grant, withdraw) and how (api, upload, form, double_opt_in, operator,
/// reconfirmed).
pub fn consent_changes(action: &'static str, how: &'static str, n: u64) {
    counter!(CONSENT_CHANGES, "action" => action, "how" => how).increment(n);
}

/// What the subscription endpoints did (`crate::http::subscribe`), by outcome.
pub const SUBSCRIPTION_OUTCOMES: &[&str] = &[
    "confirmation_sent",
    "subscribed",
    "quiet",
    "refused",
    "honeypot",
    "confirmed",
    "invalid_link",
    "expired_link",
];

pub fn subscription(outcome: &'static str) {
    counter!(SUBSCRIPTIONS, "outcome" => outcome).increment(1);
}

/// An upload job finished (`crate::governance::uploads`), by state (done, failed).
pub fn upload_job(state: &'static str) {
    counter!(UPLOAD_JOBS, "state" => state).increment(1);
}

/// A request to the account API without a valid key.
pub fn account_api_refused() {
    counter!(ACCOUNT_API_REFUSED).increment(1);
}

pub fn engagement(kind: &'static str) {
    counter!(ENGAGEMENTS, "kind" => kind).increment(1);
}

/// A tracking request with no genuine token (`kind` `open` or `click`): nothing counted.
pub fn tracking_refused(kind: &'static str) {
    counter!(TRACKING_REFUSED, "kind" => kind).increment(1);
}

pub fn bounce_suppressed() {
    counter!(BOUNCE_SUPPRESSIONS).increment(1);
}

/// A spam complaint was recorded: `via` `arf` or `form`.
pub fn complaint_received(via: &'static str) {
    counter!(COMPLAINTS, "via" => via).increment(1);
}

/// Mail to the feedback address was not a usable feedback report.
pub fn complaint_report_malformed() {
    counter!(COMPLAINT_REPORTS_MALFORMED).increment(1);
}

/// An AUTH attempt ended: `ok`, `failed`, `locked` or `busy`.
pub fn auth_attempt(result: &'static str) {
    counter!(AUTH_ATTEMPTS, "result" => result).increment(1);
}

/// Mail from an unknown client refused by one of its own limits (see [`UNTRUSTED_REFUSALS`]),
/// counted by the refusal's label.
pub fn untrusted_refused(refusal: &Refusal) {
    let reason = refusal.label();
    debug_assert!(UNTRUSTED_REFUSAL_REASONS.contains(&reason), "{reason}");
    counter!(UNTRUSTED_REFUSALS, "reason" => reason).increment(1);
}

/// A command line was received; counted by its verb (see [`COMMAND_VERBS`]), never by
/// its arguments.
pub fn smtp_command(line: &[u8]) {
    counter!(SMTP_COMMANDS, "verb" => command_verb(line)).increment(1);
}

/// The [`COMMAND_VERBS`] entry for a command line: its first word, case-insensitively.
pub fn command_verb(line: &[u8]) -> &'static str {
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    COMMAND_VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("unknown")
}

/// The consent and suppression verdict for one recipient (`None`: allowed).
pub fn policy_verdict(why: Option<Withheld>) {
    policy_verdict_reason(verdict_reason(why));
}

/// A verdict by its [`VERDICT_REASONS`] label, for refusals that are not a [`Withheld`]
/// (`frozen`, `content`).
pub fn policy_verdict_reason(reason: &'static str) {
    debug_assert!(
        VERDICT_REASONS.contains(&reason),
        "unknown verdict {reason}"
    );
    counter!(POLICY_VERDICTS, "reason" => reason).increment(1);
}

/// The [`VERDICT_REASONS`] label of a verdict: both kinds of unsubscribe are one.
pub fn verdict_reason(why: Option<Withheld>) -> &'static str {
    match why {
        None => "allowed",
        Some(Withheld::NoConsent) => "consent_missing",
        Some(Withheld::ConsentExpired) => "consent_expired",
        Some(Withheld::UnsubscribedList | Withheld::UnsubscribedAll) => "unsubscribed",
        Some(Withheld::Bounced) => "bounced",
        Some(Withheld::Complained) => "complaint",
        Some(Withheld::Blocked) => "blocked",
    }
}

/// The spool's queue files now take `bytes` in `segments` segments.
pub fn spool_size(bytes: u64, segments: u64) {
    gauge!(SPOOL_BYTES).set(bytes as f64);
    gauge!(SPOOL_SEGMENTS).set(segments as f64);
}

/// The file system holding the spool has `free` of `total` bytes (free: what the relay's
/// user may still write).
pub fn spool_disk(free: u64, total: u64) {
    gauge!(SPOOL_DISK_FREE).set(free as f64);
    gauge!(SPOOL_DISK_TOTAL).set(total as f64);
}

/// The inbound TLS certificate expires at `unix_secs`.
pub fn tls_not_after(unix_secs: i64) {
    gauge!(TLS_NOT_AFTER).set(unix_secs as f64);
}

/// An account's rate of `threshold` (one of [`HEALTH_THRESHOLDS`]) over its freeze
/// threshold: 1.0 is where it freezes.
pub fn account_threshold(account: &str, threshold: &'static str, ratio: f64) {
    gauge!(ACCOUNT_THRESHOLD, "account" => account.to_string(), "threshold" => threshold)
        .set(ratio);
}

/// A campaign's canary got its verdict (`released`, `declined`).
pub fn campaign_verdict(verdict: &'static str) {
    counter!(CAMPAIGN_VERDICTS, "verdict" => verdict).increment(1);
}

/// A message waited `wait` for its destination's rate limits.
pub fn throttle_wait(wait: Duration) {
    histogram!(THROTTLE_WAIT).record(wait.as_secs_f64());
}

/// Adaptive shaping acted on a destination (`slow`, `suspend`).
pub fn shaping_action(action: &'static str) {
    counter!(SHAPING_ACTIONS, "action" => action).increment(1);
}

/// An account was frozen, `by` health (a threshold), content, or admin.
pub fn account_frozen(by: &'static str) {
    counter!(ACCOUNTS_FROZEN, "by" => by).increment(1);
}

/// The policy loaded at start is in force (generation 1).
pub fn policy_started() {
    gauge!(POLICY_GENERATION).set(1.0);
}

/// A policy reload ended; `generation` counts the policies in force since start.
pub fn policy_reload(ok: bool, generation: u64) {
    counter!(POLICY_RELOADS, "result" => if ok { "ok" } else { "refused" }).increment(1);
    gauge!(POLICY_GENERATION).set(generation as f64);
}

/// The queue by site; `site` is a bounded label (see [`crate::delivery`]).
pub fn queue_site(site: &str, recipients: usize, oldest: Duration) {
    gauge!(QUEUE_SITE_RECIPIENTS, "site" => site.to_string()).set(recipients as f64);
    gauge!(QUEUE_SITE_OLDEST, "site" => site.to_string()).set(oldest.as_secs_f64());
}

/// What happened to one recipient at `site` (as [`queue_site`]).
pub fn site_outcome(site: &str, result: &'static str) {
    counter!(DELIVERY_SITE_RECIPIENTS, "site" => site.to_string(), "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_come_from_the_fixed_set() {
        assert_eq!(command_verb(b"ehlo client.test"), "EHLO");
        assert_eq!(command_verb(b"MAIL FROM:<a@b.example>"), "MAIL");
        assert_eq!(command_verb(b"StartTLS"), "STARTTLS");
        assert_eq!(command_verb(b"XCLIENT ADDR=1.2.3.4"), "unknown");
        assert_eq!(command_verb(b"a@b.example"), "unknown");
        assert_eq!(command_verb(b""), "unknown");
        assert_eq!(command_verb(b"MAILFROM:<x>"), "unknown");
    }

    #[test]
    fn message_refusals_are_counted_under_the_fixed_set() {
        use Refusal::*;
        use std::collections::BTreeSet;
        // Every refusal a message can get at MAIL or at the end of DATA, once each.
        let message = [
            AccountFrozen("r".into()),
            CampaignDeclined("c".into(), "r".into()),
            TooBig(1),
            DataMemory,
            DataBareLineEnding,
            DataNul,
            DataLineTooLong(1),
            MailLoop(9),
            SpoolUnavailable,
            BadStream,
            StreamNotAllowed("marketing"),
            UnknownList("l".into()),
            NoList,
            BadCampaign,
            AllWithheld("a@b.example".into(), Withheld::Bounced, 0),
            AccountGone,
            SenderNotAccount("From", "x.example".into()),
            NoFrom,
            OperatorContact,
            FooterImpossible("signed".into()),
            ProhibitedContent("c".into()),
        ];
        let labels: BTreeSet<&str> = message.iter().map(Refusal::label).collect();
        let fixed: BTreeSet<&str> = MESSAGE_REFUSAL_REASONS.into_iter().collect();
        assert_eq!(labels, fixed);
        let untrusted = [ReportRate, TooBig(1), ReportTooComplex, DataMemory];
        let labels: Vec<&str> = untrusted.iter().map(Refusal::label).collect();
        assert_eq!(labels, UNTRUSTED_REFUSAL_REASONS);
        // The removed account's refusal reads as any relay denial.
        assert_eq!(AccountGone.reply(), RelayDenied.reply());
    }

    #[test]
    fn verdicts_map_onto_the_fixed_set() {
        use Withheld::*;
        for why in [
            None,
            Some(UnsubscribedList),
            Some(UnsubscribedAll),
            Some(Bounced),
            Some(Complained),
            Some(Blocked),
            Some(NoConsent),
        ] {
            assert!(VERDICT_REASONS.contains(&verdict_reason(why)), "{why:?}");
        }
        assert_eq!(verdict_reason(Some(UnsubscribedAll)), "unsubscribed");
        for w in [
            UnsubscribedList,
            UnsubscribedAll,
            Bounced,
            Complained,
            Blocked,
            NoConsent,
        ] {
            assert!(WITHHELD_REASONS.contains(&w.label()), "{w:?}");
        }
    }

    /// Every series registered at start has a HELP line, and the counters are at zero.
    #[test]
    fn registered_series_are_described_and_zero() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_at_zero();
        });
        let text = handle.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        for name in [SMTP_COMMANDS, POLICY_VERDICTS, SPOOL_BYTES, UNSUBSCRIBES] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
        }
        assert!(text.contains("optin_smtp_commands_total{verb=\"unknown\"} 0"));
        assert!(text.contains("optin_policy_verdicts_total{reason=\"frozen\"} 0"));
    }
}
