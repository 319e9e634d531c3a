//! Storage faults (issue 12, items 10-13): a damaged spool, a damaged or deleted lists
//! snapshot, an emptied policy. The delivery side runs in-process with paused time; the
//! rest against the real binary, restarted over the damaged files. The disk-full half of
//! item 10 needs a small filesystem and lives in `tests/interop/faults.sh`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{FakeMx, InMemoryMx, MxOptions};
use mail_parser::MessageParser;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::session::Intake;
use optin_relay::smtp::params::BodyType;
use optin_relay::spool::{Envelope, Location, Recipient, Spool};
use tokio_util::sync::CancellationToken;

fn envelope(spool: &Spool, sender: Option<&str>, rcpt: &str) -> Envelope {
    Envelope {
        id: spool.next_id(),
        received_at: optin_relay::spool::now_ms(),
        account: "acct".into(),
        sender: sender.map(str::to_string),
        envid: None,
        ret: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        eight_bit_content: false,
        generated_dsn: false,
        stream: optin_relay::policy::Stream::Transactional,
        list: None,
        campaign: None,
        recipients: vec![Recipient {
            address: rcpt.into(),
            notify: None,
            orcpt: None,
            done: false,
        }],
    }
}

/// Flips one bit near the end of a stored message's content.
fn damage_body(spool_dir: &Path, loc: Location) {
    let path = spool_dir.join(format!("queue/{:016x}.msg", loc.segment));
    let mut data = std::fs::read(&path).unwrap();
    data[(loc.offset + loc.len - 4) as usize] ^= 0x20;
    std::fs::write(&path, &data).unwrap();
}

/// Item 11: a message whose content no longer verifies when delivery reads it back (here:
/// for its first retry) is returned to its sender once, with a DSN built from the envelope,
/// and never tried again; a null sender's is dropped without a DSN. Before, each was read
/// again every `retry_max`, forever, with an ERROR each time.
#[tokio::test(start_paused = true)]
async fn a_message_damaged_in_the_spool_is_returned_once_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let mx = FakeMx::new(MxOptions::default());
    let (spool, _) = Spool::open(&SpoolConfig {
        path: dir.path().to_path_buf(),
        fsync: false,
        segment_size: 1 << 20,
    })
    .unwrap();
    let config = Config::from_toml(
        "t",
        "[smtp]\nhostname = \"relay.test\"\n[delivery]\nretry_initial = \"5m\"\nretry_max = \"1h\"\nmax_age = \"5d\"\n",
    )
    .unwrap();
    let stop = CancellationToken::new();
    let (delivery, scheduler) = delivery::start(
        Settings::new(&config.delivery, &config.smtp.hostname),
        spool.clone(),
        Arc::new(InMemoryMx(mx.clone())),
        AddressTagger::new([1; 32]),
        Vec::new(),
        stop.clone(),
    );
    let body = Bytes::from_static(b"Subject: damaged later\r\n\r\nbody of the message\r\n");
    let mut locs = Vec::new();
    for (sender, rcpt) in [
        (Some("app@shop.example"), "tempfail1@x.example"),
        (None, "tempfail2@x.example"),
    ] {
        let env = envelope(&spool, sender, rcpt);
        let loc = spool.store(&env, body.clone()).await.unwrap();
        delivery.accepted(env, loc, body.clone());
        locs.push(loc);
    }
    // Both first attempts are deferred (451); the messages wait for their retry.
    for _ in 0..600 {
        if mx.rcpt_attempts() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mx.rcpt_attempts(), 2);
    spool.flush().await.unwrap();
    for loc in &locs {
        damage_body(dir.path(), *loc);
    }

    let got = mx.wait_for(1, Duration::from_secs(2 * 3600)).await;
    assert_eq!(got[0].mail_from, "", "a DSN comes from the null sender");
    assert_eq!(got[0].rcpt_to, ["app@shop.example"]);
    let dsn = MessageParser::default().parse(&got[0].data).unwrap();
    let status = String::from_utf8_lossy(dsn.parts[2].contents()).into_owned();
    for expected in [
        "Final-Recipient: rfc822; tempfail1@x.example",
        "Action: failed",
        "Status: 5.3.0",
        "damaged",
    ] {
        assert!(status.contains(expected), "{expected} missing:\n{status}");
    }
    let returned = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        !returned.contains("body of the message") && !returned.contains("damaged later"),
        "no damaged content is quoted:\n{returned}"
    );
    // Days later: nothing was tried again, no DSN for the null sender, nothing queued.
    tokio::time::sleep(Duration::from_secs(6 * 86400)).await;
    assert_eq!(mx.delivered().len(), 1);
    assert_eq!(
        mx.rcpt_attempts(),
        3,
        "two first attempts and the DSN, nothing more"
    );
    spool.flush().await.unwrap();
    assert!(Spool::inspect(dir.path()).unwrap().is_empty());
    let quarantined = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(
        quarantined, 2,
        "each damaged record is kept for the operator"
    );
    stop.cancel();
    scheduler.await.unwrap();
}
