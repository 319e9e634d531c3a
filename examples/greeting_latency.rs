//! Measures how long a new client waits for the relay's greeting while the relay works on
//! maximum-size messages: the real binary (`target/release/optin-relay serve`) with the
//! whole marketing pipeline (X-Optin headers, consent, the footer splice, an Ed25519 DKIM
//! signature) delivering to an in-process sink, `MESSAGES` senders each submitting one
//! message of `SIZE` MiB (just under the 25 MiB limit by default) to two consented
//! recipients, and a prober that connects every 10 ms and times the `220` greeting.
//!
//!     cargo build --release
//!     cargo run --release --example greeting_latency -- [MESSAGES] [SIZE_MIB]
//!
//! (defaults: 2 messages of 24 MiB). It prints the greeting latency (median, p99, max)
//! over the whole run — while the messages arrive, are checked at the end of DATA, stored,
//! rewritten, signed and delivered — and how long each phase took. Everything is on
//! 127.0.0.1; the scratch directory is removed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Answers SMTP as a sink: 250 to everything, DATA read to its end, counted.
fn sink(listener: TcpListener, delivered: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let delivered = delivered.clone();
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            let _ = w.write_all(b"220 sink ESMTP\r\n");
            let mut line = String::new();
            let mut rcpts = 0;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-sink\r\n250-PIPELINING\r\n250 SIZE 52428800\r\n",
                    "RCPT" => {
                        rcpts += 1;
                        b"250 ok\r\n"
                    }
                    "DATA" => {
                        let _ = w.write_all(b"354 go\r\n");
                        let mut data = Vec::new();
                        let mut buf = vec![0u8; 1 << 16];
                        while !data.ends_with(b"\r\n.\r\n") {
                            match r.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    data.extend_from_slice(&buf[..n]);
                                    if data.len() > 8 {
                                        data.drain(..data.len() - 8);
                                    }
                                }
                            }
                        }
                        delivered.fetch_add(rcpts, Ordering::SeqCst);
                        rcpts = 0;
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"221 bye\r\n");
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                if w.write_all(reply).is_err() {
                    return;
                }
            }
        });
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The time from connect to the end of the greeting line.
fn greeting(port: u16) -> Option<Duration> {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let took = started.elapsed();
    let _ = r.get_mut().write_all(b"QUIT\r\n");
    line.starts_with("220").then_some(took)
}

fn expect(r: &mut BufReader<TcpStream>, code: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    assert!(line.starts_with(code), "expected {code}, got {line}");
}

/// One marketing message of about `size` octets to two consented recipients.
fn submit(port: u16, n: usize, size: usize) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    expect(&mut r, "220");
    w.write_all(b"EHLO sender\r\n").unwrap();
    expect(&mut r, "250");
    w.write_all(b"MAIL FROM:<news@example.com>\r\n").unwrap();
    expect(&mut r, "250");
    for i in 0..2 {
        w.write_all(format!("RCPT TO:<reader{i}@example.net>\r\n").as_bytes())
            .unwrap();
        expect(&mut r, "250");
    }
    w.write_all(b"DATA\r\n").unwrap();
    expect(&mut r, "354");
    let mut msg = format!(
        "From: News <news@example.com>\r\nTo: readers\r\nSubject: big issue {n}\r\n\
         X-Optin-Stream: marketing\r\nX-Optin-List: news\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while msg.len() + line.len() < size {
        msg.extend_from_slice(line);
    }
    msg.extend_from_slice(b".\r\n");
    w.write_all(&msg).unwrap();
    expect(&mut r, "250");
    let _ = w.write_all(b"QUIT\r\n");
    started.elapsed()
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let size_mib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(24);
    let exe = std::env::current_exe().unwrap();
    let relay_bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("optin-relay"))
        .unwrap();
    assert!(
        relay_bin.exists(),
        "{} is missing: run `cargo build --release` first",
        relay_bin.display()
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let sink_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink_listener.local_addr().unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let counter = delivered.clone();
    std::thread::spawn(move || sink(sink_listener, counter));
    let smtp_port = free_port();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[accounts.bench]\nnetworks = [\"127.0.0.0/8\"]\nstreams = [\"marketing\"]\n\
             from_domains = [\"example.com\"]\ncontact_address = \"hello@example.com\"\n\
             postal_address = \"1 Main St, Springfield\"\n[accounts.bench.lists.news]\nname = \"Bench news\"\n\
             consent_source = \"the benchmark\"\n\
             consent_statement = \"You receive {{list}} because you signed up at {{source}}.\"\n\
             [[accounts.bench.dkim]]\ndomain = \"example.com\"\nselector = \"bench\"\n\
             private_key = \"{root}/tests/fixtures/dkim/ed25519-pkcs8.pem\"\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:{smtp_port}\"\nhostname = \"relay.bench\"\n\
             [spool]\npath = \"{spool}\"\n[delivery]\nsmarthost = \"{sink_addr}\"\nlog = \"\"\n\
             [http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[policy]\npath = \"{policy}\"\n\
             [log]\nlevel = \"warn\"\n",
            spool = dir.path().join("spool").display(),
            policy = policy.display(),
        ),
    )
    .unwrap();
    let granted = Command::new(&relay_bin)
        .args(["--config", config.to_str().unwrap(), "lists", "grant"])
        .args(["reader0@example.net", "reader1@example.net"])
        .args(["--account", "bench", "--list", "news"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(granted.success(), "lists grant failed");
    let _relay = Relay(
        Command::new(&relay_bin)
            .args(["--config", config.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while greeting(smtp_port).is_none() {
        assert!(Instant::now() < deadline, "the relay did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle baseline.
    let mut idle: Vec<Duration> = (0..50)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            greeting(smtp_port)
        })
        .collect();
    idle.sort();

    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Some(d) = greeting(smtp_port) {
                    samples.push(d);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    let started = Instant::now();
    let senders: Vec<_> = (0..messages)
        .map(|n| std::thread::spawn(move || submit(smtp_port, n, size_mib << 20)))
        .collect();
    let submit_times: Vec<Duration> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let accepted = started.elapsed();
    let want = messages * 2;
    let deadline = Instant::now() + Duration::from_secs(600);
    while delivered.load(Ordering::SeqCst) < want {
        assert!(Instant::now() < deadline, "not delivered in 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_delivered = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let mut busy = prober.join().unwrap();
    busy.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{messages} marketing message(s) of {size_mib} MiB, 2 recipients each (footer + Ed25519 DKIM per recipient)"
    );
    println!(
        "submission (upload + end-of-DATA checks + fsync): {}",
        submit_times
            .iter()
            .map(|d| format!("{:.0} ms", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "all accepted after {:.0} ms, all {want} deliveries after {:.0} ms",
        ms(accepted),
        ms(all_delivered)
    );
    println!(
        "greeting latency idle:  median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        ms(*idle.last().unwrap()),
        idle.len()
    );
    println!(
        "greeting latency busy:  median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(&busy, 0.5)),
        ms(percentile(&busy, 0.99)),
        ms(*busy.last().unwrap()),
        busy.len()
    );
}
