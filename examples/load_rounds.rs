//! Is memory left behind after load? Runs the whole relay in-process (SMTP listener,
//! spool, delivery into an in-process sink) and submits ROUNDS rounds of MESSAGES 2 KiB
//! messages over CLIENTS concurrent SMTP clients (one connection per message, as Postfix's
//! `smtp-source` does). After each round, once everything was delivered and the idle
//! connections were closed, it prints the live heap (a counting allocator), glibc's view
//! of its heap (bytes in use, free bytes kept in the arenas, the arenas' size) and the
//! resident set, then the resident set after `malloc_trim` gave the free memory back.
//!
//!     cargo run --release --example load_rounds -- [ROUNDS] [MESSAGES] [CLIENTS]
//!
//! (defaults: 6 rounds of 5000 messages, 10 clients). A leak shows as a live heap that
//! grows round after round; allocator fragmentation as a resident set that grows while the
//! live heap does not, and that `malloc_trim` brings back down.

#[path = "../tests/it/support/memory.rs"]
mod memory;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memory::{Sink, heap, held, mib, status_bytes, trim};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

async fn reply(io: &mut BufReader<tokio::net::TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// One message over its own connection.
async fn submit(addr: SocketAddr, n: usize, body: &str) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut io = BufReader::new(stream);
    reply(&mut io).await;
    for line in [
        "EHLO load.test\r\n".to_string(),
        "MAIL FROM:<app@bench.example>\r\n".to_string(),
        format!("RCPT TO:<reader{n}@domain{}.example>\r\n", n % 100),
        "DATA\r\n".to_string(),
    ] {
        io.get_mut()
            .write_all(line.as_bytes())
            .await
            .expect("write");
        reply(&mut io).await;
    }
    io.get_mut()
        .write_all(body.as_bytes())
        .await
        .expect("write");
    let last = reply(&mut io).await;
    assert!(last.starts_with("250"), "{last}");
    io.get_mut().write_all(b"QUIT\r\n").await.expect("write");
    reply(&mut io).await;
}

fn figures(label: &str) {
    let info = heap();
    println!(
        "{label:>10}: live heap {:6.1} MiB | glibc in use {:6.1}, free kept {:6.1}, arenas {:6.1}, \
         mmapped {:5.1} MiB | resident {:6.1} MiB",
        mib(held() as u64),
        mib(info.uordblks as u64),
        mib(info.fordblks as u64),
        mib(info.arena as u64),
        mib(info.hblkhd as u64),
        mib(status_bytes("VmRSS")),
    );
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = numbers.first().copied().unwrap_or(6);
    let messages = numbers.get(1).copied().unwrap_or(5000);
    let clients = numbers.get(2).copied().unwrap_or(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.bench\"\n\
         [spool]\npath = \"{}\"\nfsync = false\n[http]\nlisten = \"\"\n\
         [delivery]\nconnection_idle_timeout = \"1s\"\n",
        dir.path().join("spool").display()
    );
    let config = optin_relay::config::Config::from_toml("bench", &text).expect("config");
    let policy = optin_relay::policy::Policy::from_toml(
        "policy",
        "[accounts.bench]\nnetworks = [\"127.0.0.0/8\"]\n",
    )
    .expect("policy");
    let sink = Arc::new(Sink::new());
    let relay = optin_relay::server::Relay::start_with_transport(config, policy, sink.clone())
        .await
        .expect("relay");
    let addr = relay.smtp_addrs[0];
    let body = Arc::new(format!(
        "From: <app@bench.example>\r\nTo: <reader@example.net>\r\nSubject: load\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <load@bench.example>\r\n\r\n{}\
         .\r\n",
        format!("{}\r\n", "x".repeat(76)).repeat(25)
    ));
    figures("started");
    for round in 1..=rounds {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (next, body) = (next.clone(), body.clone());
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= messages {
                        return;
                    }
                    submit(addr, (round - 1) * messages + n, &body).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        while sink.count() < round * messages {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        // parked connections close after 1 s; sessions and the spool settle
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("round {round}: {messages} messages in {took:.2?}");
        figures("settled");
        trim();
        figures("trimmed");
    }
    relay.shutdown().await;
}
