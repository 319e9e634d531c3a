//! Durability under `kill -9`: the real binary takes mail from several clients, is killed at
//! random moments and restarted; every message that got a 250 must reach the next hop
//! (duplicates are allowed: delivery is at-least-once, loss is not).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::{Client, FakeMx, MxOptions, bin, free_port, settle, wait_listening};

const CLIENTS: usize = 4;
const KILLS: usize = 6;

fn start(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    bin()
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start optin-relay")
}

/// Sends messages over one connection until it breaks; records each token that got a 250.
async fn client_session(
    addr: SocketAddr,
    client: usize,
    next: &mut usize,
    acked: &Mutex<HashSet<String>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut c = Client::try_connect(addr).await?;
    c.try_say("EHLO crash-client").await?;
    while !stop.load(Ordering::Relaxed) {
        let token = format!("c{client}-m{next}");
        *next += 1;
        let msg =
            format!("MAIL FROM:<load@shop.example>\r\nRCPT TO:<r{client}@example.net>\r\nDATA\r\n");
        c.try_write(msg.as_bytes()).await?;
        for _ in 0..3 {
            c.try_reply().await?;
        }
        let body = format!(
            "Subject: {token}\r\nX-Token: {token}\r\n\r\n{}\r\n.\r\n",
            "filler line of text\r\n".repeat(20)
        );
        c.try_write(body.as_bytes()).await?;
        let r = c.try_reply().await?;
        if r.starts_with("250") {
            acked.lock().unwrap().insert(token);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let relay_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"{relay_addr}\"\nhostname = \"relay.test\"\n\
             [spool]\npath = \"{}\"\nsegment_size = \"1MiB\"\n\
             [delivery]\nsmarthost = \"{mx_addr}\"\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\
             [http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[log]\nlevel = \"warn\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut child = start(&config, &log);
    wait_listening(relay_addr).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut next = 0;
                while !stop.load(Ordering::Relaxed) {
                    if client_session(relay_addr, c, &mut next, &acked, &stop)
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();

    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(&config, &log);
        wait_listening(relay_addr).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let acked: HashSet<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "too little traffic to prove anything: {}",
        acked.len()
    );
    let arrived = async || {
        let delivered: Vec<String> = mx
            .delivered()
            .iter()
            .filter_map(|d| {
                let text = d.text();
                text.lines()
                    .find_map(|l| l.strip_prefix("X-Token: ").map(str::to_string))
            })
            .collect();
        let seen: HashSet<&String> = delivered.iter().collect();
        let missing: Vec<String> = acked
            .iter()
            .filter(|t| !seen.contains(t))
            .cloned()
            .collect();
        (missing, delivered)
    };
    let all_there = |(missing, _): &(Vec<String>, Vec<String>)| missing.is_empty();
    let (missing, delivered) = settle(Duration::from_secs(60), arrived, all_there).await;
    let unique: HashSet<&String> = delivered.iter().collect();
    println!(
        "acknowledged {}, delivered {} ({} unique, {} duplicates), kills {KILLS}",
        acked.len(),
        delivered.len(),
        unique.len(),
        delivered.len() - unique.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never arrived (seed {seed}): {:?}\nrelay log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // SIGTERM: drains and exits 0
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
