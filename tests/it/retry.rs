//! Retries, expiry and DSNs with paused time: the delivery engine runs over in-memory
//! streams into the fake MX, so days of retry schedule pass in milliseconds and every
//! timing is exact in virtual time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mail_parser::MessageParser;
use optin_relay::delivery::Settings;
use optin_relay::smtp::params::Notify;
use optin_relay::spool::Spool;
use tokio::time::Instant;

use crate::support::engine::{self, Engine, settings};
use crate::support::envelope::Builder;
use crate::support::{self, FakeMx, InMemoryMx, MxOptions};

/// The delivery engine, every route leading to a fake MX over in-memory pipes.
struct Setup {
    mx: FakeMx,
    engine: Engine,
}

async fn setup(extra: &str, options: MxOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    setup_in(dir, extra, options).await
}

async fn setup_in(dir: tempfile::TempDir, extra: &str, options: MxOptions) -> Setup {
    setup_with(dir, settings(extra), options).await
}

async fn setup_with(dir: tempfile::TempDir, settings: Settings, options: MxOptions) -> Setup {
    let mx = FakeMx::new(options);
    let engine = Engine::start(dir, settings, Arc::new(InMemoryMx(mx.clone())));
    Setup { mx, engine }
}

impl Setup {
    async fn submit(
        &self,
        sender: Option<&str>,
        rcpts: &[(&str, Option<Notify>)],
        envid: Option<&str>,
    ) -> optin_relay::envelope::QueueId {
        let envelope = Builder::new(self.engine.spool.next_id(), "acct")
            .sender(sender)
            .envid(envid);
        let envelope = rcpts
            .iter()
            .fold(envelope, |e, (to, notify)| {
                e.rcpt_notify(to.to_string(), *notify)
            })
            .build();
        let id = envelope.id;
        let body = Bytes::from_static(
            b"Subject: retry test\r\nMessage-ID: <r@shop.example>\r\n\r\nbody\r\n",
        );
        self.engine.submit(envelope, body).await;
        id
    }

    async fn stop(self) -> tempfile::TempDir {
        self.engine.stop().await
    }

    /// Messages in the spool files, once everything sent to the writer is written.
    async fn queued(&self) -> usize {
        self.engine.queued().await
    }
}

const FAST_RETRY: &str = "retry_initial = \"5m\"\nretry_max = \"1h\"\n";

#[tokio::test(start_paused = true)]
async fn temporary_failures_are_retried_with_backoff() {
    let s = setup(
        FAST_RETRY,
        MxOptions {
            flaky_failures: 2,
            ..MxOptions::default()
        },
    )
    .await;
    let start = Instant::now();
    s.submit(Some("app@shop.example"), &[("flaky@x.example", None)], None)
        .await;
    let got = s.mx.wait_for(1, Duration::from_secs(3 * 3600)).await;
    let took = start.elapsed();
    assert_eq!(got[0].rcpt_to, ["flaky@x.example"]);
    assert_eq!(s.mx.rcpt_attempts(), 3, "two 451s, then accepted");
    // 5 min then 10 min, each ±20 % jitter
    assert!(
        took >= Duration::from_secs(12 * 60) && took <= Duration::from_secs(18 * 60),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = s.stop().await;
    assert!(Spool::inspect(dir.path()).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn expiry_bounces_with_a_dsn_after_max_age_and_warns_on_delay() {
    let s = setup(
        "retry_initial = \"10m\"\nretry_max = \"2h\"\nmax_age = \"2d\"\ndelay_warning = \"4h\"\n",
        MxOptions::default(),
    )
    .await;
    let start = Instant::now();
    let notify = Some(Notify {
        success: false,
        failure: true,
        delay: true,
    });
    let id = s
        .submit(
            Some("app@shop.example"),
            &[("tempfail@x.example", notify)],
            Some("env-9"),
        )
        .await;
    // first the delay notice, after about 4 hours
    let got = s.mx.wait_for(1, Duration::from_secs(3 * 86400)).await;
    let delay_at = start.elapsed();
    assert!(
        delay_at >= Duration::from_secs(4 * 3600) && delay_at < Duration::from_secs(7 * 3600),
        "{delay_at:?}"
    );
    let delay = MessageParser::default().parse(&got[0].data).unwrap();
    assert_eq!(got[0].mail_from, "", "DSNs come from the null sender");
    assert_eq!(delay.subject(), Some("Delayed Mail (still being retried)"));
    let status = String::from_utf8_lossy(delay.parts[2].contents()).into_owned();
    assert!(status.contains("Action: delayed"), "{status}");
    // then, after two days, the failure
    let got = s.mx.wait_for(2, Duration::from_secs(3 * 86400)).await;
    let failed_at = start.elapsed();
    assert!(
        failed_at >= Duration::from_secs(2 * 86400)
            && failed_at < Duration::from_secs(2 * 86400 + 3 * 3600),
        "{failed_at:?}"
    );
    let failure = MessageParser::default().parse(&got[1].data).unwrap();
    assert_eq!(
        failure.subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    let status = String::from_utf8_lossy(failure.parts[2].contents()).into_owned();
    support::assert_has(
        &status,
        &[
            "Original-Envelope-Id: env-9",
            "Final-Recipient: rfc822; tempfail@x.example",
            "Action: failed",
            "Status: 4.4.7",
            "451 4.2.1 mailbox busy",
        ],
    );
    let text = String::from_utf8_lossy(failure.parts[1].contents()).into_owned();
    assert!(text.contains(&id.to_string()), "{text}");
    // no DSN about the DSNs, and nothing left queued
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(s.mx.delivered().len(), 2);
    let dir = s.stop().await;
    assert!(Spool::inspect(dir.path()).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_dsn_when_the_sender_says_never_or_is_null() {
    let s = setup(FAST_RETRY, MxOptions::default()).await;
    s.submit(
        Some("app@shop.example"),
        &[("permfail@x.example", Some(Notify::NEVER))],
        None,
    )
    .await;
    s.submit(None, &[("permfail2@x.example", None)], None).await;
    // a third message proves delivery ran after the other two
    s.submit(Some("app@shop.example"), &[("ok@x.example", None)], None)
        .await;
    let got = s.mx.wait_for(1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(s.mx.delivered().len(), 1, "{got:?}");
    assert_eq!(s.queued().await, 0);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_dsn_per_message_for_all_its_failures() {
    let s = setup(FAST_RETRY, MxOptions::default()).await;
    s.submit(
        Some("app@shop.example"),
        &[
            ("permfail1@x.example", None),
            ("permfail2@y.example", None),
            ("ok@z.example", None),
        ],
        None,
    )
    .await;
    let got = s.mx.wait_for(2, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(s.mx.delivered().len(), 2);
    let dsn = got.iter().find(|d| d.mail_from.is_empty()).unwrap();
    let status = dsn.dsn_status();
    assert!(
        status.contains("permfail1@x.example") && status.contains("permfail2@y.example"),
        "{status}"
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_the_retry_schedule() {
    let s = setup(
        FAST_RETRY,
        MxOptions {
            flaky_failures: 1,
            ..MxOptions::default()
        },
    )
    .await;
    s.submit(Some("app@shop.example"), &[("flaky@x.example", None)], None)
        .await;
    // let the first attempt fail, then stop
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(s.mx.rcpt_attempts(), 1);
    let dir = s.stop().await;
    let recovered = Spool::inspect(dir.path()).unwrap();
    assert!(matches!(
        recovered[0].events[0],
        Some(optin_relay::spool::RcptEvent::Deferred { attempts: 1, .. })
    ));
    // a new engine over the same spool waits for the journaled due time, then delivers
    let start = Instant::now();
    let s = setup_in(
        dir,
        FAST_RETRY,
        MxOptions {
            flaky_failures: 0,
            ..MxOptions::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(s.mx.delivered().is_empty(), "not before its due time");
    s.mx.wait_for(1, Duration::from_secs(3600)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3 * 60) && waited <= Duration::from_secs(7 * 60),
        "{waited:?}"
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_trickle_of_mail_reuses_one_connection() {
    let s = setup(
        "connection_idle_timeout = \"10s\"\nmax_messages_per_connection = 3\n",
        MxOptions::default(),
    )
    .await;
    for n in 1..=3 {
        s.submit(Some("app@shop.example"), &[("ok@x.example", None)], None)
            .await;
        s.mx.wait_for(n, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(
        s.mx.connections(),
        1,
        "three messages, two seconds apart, one connection"
    );
    // the connection has carried its three transactions: the next message dials again
    s.submit(Some("app@shop.example"), &[("ok@x.example", None)], None)
        .await;
    s.mx.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!(s.mx.connections(), 2);
    // idle longer than connection_idle_timeout: the parked connection is closed
    tokio::time::sleep(Duration::from_secs(15)).await;
    s.submit(Some("app@shop.example"), &[("ok@x.example", None)], None)
        .await;
    s.mx.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(s.mx.connections(), 3);
    s.stop().await;
}

/// The policy's message rate holds within ±3 % over a minute (virtual time), and mail over
/// the rate waits instead of being refused.
#[tokio::test(start_paused = true)]
async fn message_rate_is_accurate_over_a_minute() {
    let settings = engine::with_policy("", "[throttles.\"*\"]\nmessage_rate = \"300/min\"\n");
    let s = setup_with(tempfile::tempdir().unwrap(), settings, MxOptions::default()).await;
    let start = Instant::now();
    for i in 0..350 {
        s.submit(
            Some("s@shop.example"),
            &[(&format!("r{i}@example.net"), None)],
            None,
        )
        .await;
    }
    // Let delivery run for one virtual minute.
    tokio::time::sleep_until(start + Duration::from_secs(60)).await;
    let in_a_minute = s.mx.delivered().len();
    assert!(
        (291..=309).contains(&in_a_minute),
        "{in_a_minute} messages in a minute at 300/min"
    );
    // Nothing is lost: the rest follows at the same pace.
    let all = s.mx.wait_for(350, Duration::from_secs(120)).await;
    assert_eq!(all.len(), 350);
    assert!(Instant::now() - start >= Duration::from_secs(69));
}

fn shaped(policy: &str) -> Settings {
    engine::with_policy("retry_initial = \"1h\"", policy)
}

/// A "rate limited" reply suspends the destination for the rule's duration: later mail
/// waits, then goes.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_reply_suspends_the_destination() {
    let settings = shaped(
        "[[shaping]]\nname = \"yahoo-tss04\"\ncode = 451\ntext = \"tss04\"\naction = \"suspend\"\nduration = \"10m\"\n",
    );
    let s = setup_with(tempfile::tempdir().unwrap(), settings, MxOptions::default()).await;
    let start = Instant::now();
    s.submit(
        Some("s@shop.example"),
        &[("ratelimited-1@example.net", None)],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.submit(
        Some("s@shop.example"),
        &[("reader@example.net", None)],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert!(s.mx.delivered().is_empty(), "sent during the suspension");
    let got = s.mx.wait_for(1, Duration::from_secs(10 * 60)).await;
    assert_eq!(got[0].rcpt_to, ["reader@example.net"]);
    assert!(Instant::now() - start >= Duration::from_secs(600));
}

/// A "slow down" reply (Gmail's 421 4.7.28, the connection closed) halves the
/// destination's rate; it climbs back step by step.
#[tokio::test(start_paused = true)]
async fn a_slow_down_reply_cuts_the_rate_and_it_recovers() {
    let settings = shaped(
        "[throttles.\"*\"]\nmessage_rate = \"60/min\"\n\
         [[shaping]]\ncode = 421\ntext = \"4.7.28\"\naction = \"slow\"\nfactor = 0.5\n\
         [shaping_recovery]\nstep = 0.5\nevery = \"2m\"\n",
    );
    let s = setup_with(tempfile::tempdir().unwrap(), settings, MxOptions::default()).await;
    s.submit(
        Some("s@shop.example"),
        &[("throttled-1@example.net", None)],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    for i in 0..200 {
        s.submit(
            Some("s@shop.example"),
            &[(&format!("r{i}@example.net"), None)],
            None,
        )
        .await;
    }
    // Half of 60/min for the first minute: about 30 messages.
    tokio::time::sleep_until(start + Duration::from_secs(60)).await;
    let first = s.mx.delivered().len();
    assert!(
        (28..=32).contains(&first),
        "{first} in the first minute at half rate"
    );
    // After the recovery interval the full rate is back: about 60 in a minute.
    tokio::time::sleep_until(start + Duration::from_secs(180)).await;
    let before = s.mx.delivered().len();
    tokio::time::sleep_until(start + Duration::from_secs(240)).await;
    let full = s.mx.delivered().len() - before;
    assert!(
        (57..=63).contains(&full),
        "{full} in a minute after recovery"
    );
}
