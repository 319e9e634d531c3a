//! Prometheus metrics: names, help texts and the small recording helpers the rest of the
//! relay calls.
//!
//! The `metrics` facade records into whatever recorder is installed; `serve` installs the
//! Prometheus one ([`install`]) and the HTTP listener renders it at `GET /metrics`. Without
//! a recorder (unit tests) recording is a no-op. Label values are drawn from small fixed
//! sets — reply classes, results, reasons — never from addresses or other personal data.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SMTP_CONNECTIONS: &str = "optin_smtp_connections_total";
pub const SMTP_CONNECTIONS_REFUSED: &str = "optin_smtp_connections_refused_total";
pub const SMTP_SESSIONS_ACTIVE: &str = "optin_smtp_sessions_active";
pub const SMTP_REPLIES: &str = "optin_smtp_replies_total";
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
pub const ACCOUNT_RECIPIENTS: &str = "optin_account_recipients_total";
pub const THROTTLE_WAIT: &str = "optin_throttle_wait_seconds";
pub const SHAPING_ACTIONS: &str = "optin_shaping_actions_total";
pub const POLICY_RELOADS: &str = "optin_policy_reloads_total";
pub const POLICY_GENERATION: &str = "optin_policy_generation";
pub const QUEUE_SITE_RECIPIENTS: &str = "optin_queue_site_recipients";
pub const QUEUE_SITE_OLDEST: &str = "optin_queue_site_oldest_seconds";
pub const DELIVERY_SITE_RECIPIENTS: &str = "optin_delivery_site_recipients_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); ours then only
            // renders what it sees, which is nothing, and that is acceptable there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        SMTP_CONNECTIONS,
        "SMTP connections accepted, by listener kind (plain, tls)."
    );
    describe_counter!(
        SMTP_CONNECTIONS_REFUSED,
        "SMTP connections refused at once, by reason (total, per_ip)."
    );
    describe_gauge!(SMTP_SESSIONS_ACTIVE, "SMTP sessions currently open.");
    describe_counter!(
        SMTP_REPLIES,
        "SMTP replies sent, by class (2xx, 3xx, 4xx, 5xx)."
    );
    describe_counter!(MESSAGES_ACCEPTED, "Messages accepted into the spool.");
    describe_counter!(
        RECIPIENTS_WITHHELD,
        "Recipients refused by the consent and suppression policy, by reason \
         (consent_missing, unsubscribed_list, unsubscribed_all, bounced, complaint, blocked) \
         and stage (rcpt, data)."
    );
    describe_gauge!(
        LISTS_ENTRIES,
        "Entries in the consent and suppression snapshot in service."
    );
    describe_gauge!(
        LISTS_DELTA,
        "Addresses changed by the journal since the snapshot (folded by compaction)."
    );
    describe_gauge!(LISTS_SNAPSHOT_AGE, "Age of the snapshot in service.");
    describe_counter!(
        LISTS_ERRORS,
        "Failures to follow the lists directory (a refused snapshot, an unreadable journal)."
    );
    describe_counter!(
        LISTS_COMPACTIONS,
        "Journal compactions into a new snapshot."
    );
    describe_counter!(
        MESSAGES_REFUSED,
        "Messages refused at the end of DATA/BDAT, by reason."
    );
    describe_histogram!(
        SPOOL_COMMIT_SECONDS,
        "Time of one spool group commit (write + fdatasync)."
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages in the delivery queue.");
    describe_gauge!(QUEUE_RECIPIENTS, "Recipients not yet delivered or bounced.");
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery transactions attempted, by result (ok, failed)."
    );
    describe_counter!(
        DELIVERY_RECIPIENTS,
        "Recipient outcomes, by result (delivered, deferred, bounced, expired)."
    );
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads (file change, SIGHUP or admin API), by result (ok, refused)."
    );
    describe_gauge!(
        POLICY_GENERATION,
        "How many policies have been in force since start (1: the one loaded at start)."
    );
    describe_gauge!(
        QUEUE_SITE_RECIPIENTS,
        "Recipients queued, by site (the busiest sites by name, the rest as other, \
         unresolved for domains not yet looked up)."
    );
    describe_gauge!(
        QUEUE_SITE_OLDEST,
        "Age of the oldest queued message, by site (as optin_queue_site_recipients)."
    );
    describe_counter!(
        DELIVERY_SITE_RECIPIENTS,
        "Recipient outcomes, by site (as optin_queue_site_recipients) and result \
         (delivered, deferred, bounced, expired)."
    );
    describe_counter!(
        DSN_GENERATED,
        "Delivery status notifications generated, by action (failed, delayed, relayed)."
    );
}

pub fn spool_commit(took: Duration) {
    histogram!(SPOOL_COMMIT_SECONDS).record(took.as_secs_f64());
}

pub fn reply_sent(code: u16) {
    let class = match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    counter!(SMTP_REPLIES, "class" => class).increment(1);
}

pub fn connection(kind: &'static str) {
    counter!(SMTP_CONNECTIONS, "kind" => kind).increment(1);
}

pub fn connection_refused(reason: &'static str) {
    counter!(SMTP_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

pub fn sessions_active(delta: f64) {
    gauge!(SMTP_SESSIONS_ACTIVE).increment(delta);
}

pub fn message_accepted() {
    counter!(MESSAGES_ACCEPTED).increment(1);
}

pub fn message_refused(reason: &'static str) {
    counter!(MESSAGES_REFUSED, "reason" => reason).increment(1);
}

pub fn queue_size(messages: usize, recipients: usize) {
    gauge!(QUEUE_MESSAGES).set(messages as f64);
    gauge!(QUEUE_RECIPIENTS).set(recipients as f64);
}

pub fn delivery_attempt(ok: bool) {
    counter!(DELIVERY_ATTEMPTS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub fn recipient_outcome(result: &'static str) {
    counter!(DELIVERY_RECIPIENTS, "result" => result).increment(1);
}

pub fn dsn_generated(action: &'static str) {
    counter!(DSN_GENERATED, "action" => action).increment(1);
}

pub fn recipient_withheld(reason: &'static str, stage: &'static str) {
    counter!(RECIPIENTS_WITHHELD, "reason" => reason, "stage" => stage).increment(1);
}

pub fn lists_state(stats: &crate::consent::ListsStats) {
    gauge!(LISTS_ENTRIES).set(stats.snapshot_entries as f64);
    gauge!(LISTS_DELTA).set(stats.delta_entries as f64);
    if let Some(created) = stats.snapshot_created_ms {
        let age = crate::spool::now_ms().saturating_sub(created) as f64 / 1000.0;
        gauge!(LISTS_SNAPSHOT_AGE).set(age);
    }
}

pub fn lists_error() {
    counter!(LISTS_ERRORS).increment(1);
}

pub fn lists_compacted() {
    counter!(LISTS_COMPACTIONS).increment(1);
}

pub fn unsubscribe_received(scope: &'static str) {
    counter!(UNSUBSCRIBES, "scope" => scope).increment(1);
}

pub fn bounce_suppressed() {
    counter!(BOUNCE_SUPPRESSIONS).increment(1);
}

pub fn throttle_wait(wait: Duration) {
    histogram!(THROTTLE_WAIT).record(wait.as_secs_f64());
}

pub fn shaping_action(action: &'static str) {
    counter!(SHAPING_ACTIONS, "action" => action).increment(1);
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

pub fn site_outcome(site: &str, result: &'static str) {
    counter!(DELIVERY_SITE_RECIPIENTS, "site" => site.to_string(), "result" => result)
        .increment(1);
}
