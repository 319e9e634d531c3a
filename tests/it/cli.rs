//! The shipped example configs, and the command line as an operator uses it.

use std::path::Path;

use optin_relay::config::Config;
use optin_relay::policy::Policy;

use crate::support::{self, Account, SUBSCRIBED, bin};

#[test]
fn the_example_config_and_policy_load_and_document_every_key() {
    let config = Config::load("config/optin-relay.toml".as_ref()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.smtp.hostname, "relay.example.com");
    let policy =
        Policy::load(config.policy.path.as_ref().unwrap()).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.user("newsletter").is_some());
    assert!(
        policy
            .identify_by_ip("127.0.0.1".parse().unwrap())
            .is_some()
    );
    // keys left commented out in the example are still documented there
    let text = std::fs::read_to_string("config/optin-relay.toml").unwrap();
    for key in [
        "listen",
        "listen_tls",
        "hostname",
        "max_connections",
        "max_connections_per_ip",
        "max_message_size",
        "max_recipients",
        "max_command_line",
        "max_line_length",
        "max_errors",
        "idle_timeout",
        "session_timeout",
        "max_received_headers",
        "auth_failure_delay",
        "shutdown_grace",
        "postmaster",
        "certificate",
        "private_key",
        "path",
        "fsync",
        "segment_size",
        "smarthost",
        "mode",
        "capture_dir",
        "capture_keep",
        "dns",
        "mx_port",
        "helo_name",
        "starttls",
        "max_connections_per_destination",
        "max_messages_per_connection",
        "max_content_in_flight",
        "address",
        "implicit_tls",
        "server_name",
        "ca_file",
        "username",
        "password_file",
        "connect_timeout",
        "command_timeout",
        "data_timeout",
        "connection_idle_timeout",
        "retry_initial",
        "retry_max",
        "max_age",
        "delay_warning",
        "log",
        "refresh_interval",
        "bloom_bits_per_key",
        "compact_after",
        "load_into_memory",
        "watch_interval",
        "public_url",
        "mail_domain",
        "keys",
        "address",
        "enabled",
        "require_token",
        "delivery_log_days",
        "event_log_days",
        "level",
        "format",
        "header_timeout",
        "body_timeout",
        "max_header_size",
        "max_body_size",
        "token",
        "token_file",
        "consent_record_days",
        "max_upload_size",
        "upload_timeout",
        "max_jobs",
        "max_per_ip",
        "max_per_address",
        "max_per_hour",
        "confirm_ttl",
    ] {
        assert!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("# {key} = ")),
            "{key} is not in the example"
        );
    }
    let text = std::fs::read_to_string("config/policy.toml").unwrap();
    for key in [
        "description",
        "networks",
        "username",
        "password_hash",
        "streams",
        "default_stream",
        "default_list",
        "name",
        "consent_statement",
        "consent_source",
        "from_domains",
        "feedback_id",
        "transactional_unsubscribe",
        "display_name",
        "contact_address",
        "postal_address",
        "logo_url",
        "brand_colour",
        "subscribe",
        "confirm_subject",
        "confirm_text",
        "thank_you_urls",
        "consent_max_age",
        "operator_contacts",
        "message_rate",
        "connections",
        "messages_per_connection",
        "code",
        "text",
        "action",
        "factor",
        "duration",
        "step",
        "every",
        "tls",
        "domain",
        "selector",
        "private_key",
    ] {
        assert!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("# {key} = ")),
            "{key} is not in the example policy"
        );
    }
    let newsletter = policy.account("newsletter").unwrap();
    assert_eq!(newsletter.default_list.as_deref(), Some("weekly"));
    assert_eq!(newsletter.lists.len(), 2);
}

/// `shop` sends marketing (by default) to `news`.
fn lists_policy() -> String {
    let shop = Account::shop().default_stream("marketing");
    support::policy(&[shop.list("news", SUBSCRIBED)], "")
}

fn lists_config(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("policy.toml"), lists_policy()).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\npath = \"{}\"\n[policy]\npath = \"{}\"\n\
             [http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n",
            dir.join("spool").display(),
            dir.join("policy.toml").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// Runs `optin-relay --config CONFIG ARGS…`: whether it succeeded, its stdout and its
/// stderr.
fn run(config: &str, args: &[&str]) -> (bool, String, String) {
    let out = output(config.as_ref(), args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `optin-relay --config CONFIG ARGS…` to its end.
fn output(config: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn lists_import_reads_every_file_type_then_check_and_revoke() {
    // (file, rows, valid, invalid, an invalid row it names)
    let cases = [
        (
            "contacts.txt",
            6,
            5,
            1,
            "contacts.txt:6: not a valid address",
        ),
        ("contacts.csv", 8, 5, 3, "contacts.csv:11: row has 1 field"),
        ("contacts.xlsx", 11, 8, 3, "contacts.xlsx:9: number cell"),
        ("contacts.xls", 11, 8, 3, "contacts.xls:6: empty cell"),
    ];
    for (file, rows, valid, invalid, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg = lists_config(dir.path());
        let path = format!("tests/fixtures/lists/{file}");
        let (ok, out, err) = run(
            &cfg,
            &[
                "lists",
                "import",
                "--kind",
                "consent",
                "--account",
                "shop",
                "--list",
                "news",
                &path,
            ],
        );
        assert!(ok, "{file}: {out}{err}");
        assert!(
            out.contains(&format!("read {rows} row(s) from 1 file(s)"))
                && out.contains(&format!("{valid} valid, {invalid} invalid")),
            "{file}: {out}"
        );
        assert!(err.contains(named), "{file}: {err}");
        for (address, allowed) in [
            ("bob@example.com", true),
            ("  ALICE@example.COM ", true),
            ("anna@xn--bcher-kva.example", true),
            ("zed@example.com", false),
        ] {
            let (ok, out, _) = run(&cfg, &["lists", "check", address, "--account", "shop"]);
            assert_eq!(ok, allowed, "{file} {address}: {out}");
            let verdict = if allowed {
                "verdict:     allowed"
            } else {
                "verdict:     refused: 550 5.7.1"
            };
            assert!(out.contains(verdict), "{file} {address}: {out}");
        }
        // A revocation is in force at once, and survives compilation.
        let (ok, ..) = run(
            &cfg,
            &["lists", "revoke", "bob@example.com", "--account", "shop"],
        );
        assert!(ok);
        let (ok, out, _) = run(&cfg, &["lists", "compile"]);
        assert!(ok && out.contains("1 journal change(s)"), "{out}");
        let (ok, out, _) = run(
            &cfg,
            &["lists", "check", "bob@example.com", "--account", "shop"],
        );
        assert!(!ok && out.contains("no consent recorded"), "{out}");
        // Nothing in the lists directory holds an address.
        for entry in std::fs::read_dir(dir.path().join("spool/lists")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(7).any(|w| w.eq_ignore_ascii_case(b"example")));
        }
    }
}

#[test]
fn lists_tools_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lists_config(dir.path());
    let (ok, _, err) = run(
        &cfg,
        &[
            "lists",
            "import",
            "--kind",
            "consent",
            "--account",
            "nobody",
            "x.txt",
        ],
    );
    assert!(!ok && err.contains("no account \"nobody\""), "{err}");
    let (ok, _, err) = run(
        &cfg,
        &[
            "lists",
            "import",
            "--kind",
            "consent",
            "--account",
            "shop",
            "--list",
            "nope",
            "x.txt",
        ],
    );
    assert!(!ok && err.contains("has no list \"nope\""), "{err}");
    let (ok, _, err) = run(&cfg, &["suppress", "add", "not an address"]);
    assert!(!ok && err.contains("not a valid address"), "{err}");
    let (ok, _, err) = run(
        &cfg,
        &[
            "lists",
            "import",
            "--kind",
            "suppression",
            "tests/fixtures/lists/no-address-column.xlsx",
        ],
    );
    assert!(!ok && err.contains("no-address-column.xlsx"), "{err}");
    // A snapshot that is not one is refused by every tool, naming the file.
    std::fs::create_dir_all(dir.path().join("spool/lists")).unwrap();
    std::fs::write(dir.path().join("spool/lists/snapshot"), b"junk").unwrap();
    let (ok, _, err) = run(&cfg, &["lists", "status"]);
    assert!(!ok && err.contains("not an optin-relay snapshot"), "{err}");
}

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[smtp]\nlisten = 5\nmax_message_size = \"huge\"\n[delivery]\nsmarthost = \"nope\"\n[extra]\n").unwrap();
    let out = output(&path, &["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 problems"), "{text}");
    support::assert_has(
        &text,
        &[
            "delivery.smarthost",
            "extra: unknown key",
            "smtp.listen",
            "smtp.max_message_size",
        ],
    );
    // a bad policy named by a good config
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[accounts.a]\nnetworks = [\"not-a-net\"]\n[[accounts.a.users]]\nusername = \"u\"\npassword_hash = \"plain\"\n").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[policy]\npath = \"{}\"\n", policy.display()),
    )
    .unwrap();
    let out = output(&good, &["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("good.toml: ok") && text.contains("2 problems"),
        "{text}"
    );
    // serve refuses to start on it, saying why
    let out = output(&good, &["serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accounts.a.networks"),
        "{out:?}"
    );
}

/// Legal but unwise settings are warned about, each with its key path, and the check
/// still succeeds.
#[test]
fn config_check_warns_about_links_recipients_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = output(&path, &["config", "check"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // SMTP for the Internet, links on the loopback HTTP listener in plain http.
    let text = check("open.toml", "[smtp]\nlisten = \"0.0.0.0:25\"\n");
    assert!(text.contains("open.toml: ok, 2 warning(s)"), "{text}");
    assert!(
        text.contains(
            "  warning: unsubscribe.public_url: \"http://127.0.0.1:8025\" is plain http while \
             SMTP listens beyond loopback"
        ),
        "{text}"
    );
    assert!(
        text.contains("recipients elsewhere cannot reach the unsubscribe links"),
        "{text}"
    );
    // The operator listener beyond loopback.
    let text = check(
        "ops.toml",
        "[smtp]\nlisten = \"0.0.0.0:25\"\n[unsubscribe]\npublic_url = \"https://u.example.com\"\n\
         [admin]\nlisten = \"0.0.0.0:8026\"\n",
    );
    assert!(text.contains("ops.toml: ok, 1 warning(s)"), "{text}");
    assert!(
        text.contains("warning: admin.listen: 0.0.0.0:8026"),
        "{text}"
    );
    // Everything as it should be.
    let text = check(
        "good.toml",
        "[smtp]\nlisten = \"0.0.0.0:25\"\n[unsubscribe]\npublic_url = \"https://u.example.com\"\n",
    );
    assert!(
        text.contains("good.toml: ok\n") && !text.contains("warning"),
        "{text}"
    );
}

#[test]
fn hash_password_makes_a_hash_the_policy_accepts() {
    use std::io::Write;
    let mut child = bin()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let policy = Policy::from_toml(
        "p",
        &format!(
            "[accounts.a]\n[[accounts.a.users]]\nusername = \"u\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let (_, user) = policy.user("u").unwrap();
    assert!(
        optin_relay::policy::password::Passwords::default().verify_blocking(
            "u",
            "correct horse",
            &user.password_hash
        )
    );
}

#[tokio::test]
async fn queue_list_and_show_read_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    // a smart host that refuses connections: the message stays queued
    let relay = support::start_relay(
        dir.path(),
        "[delivery]\nsmarthost = \"127.0.0.1:9\"\nretry_initial = \"1h\"\n",
        support::LOOPBACK_POLICY,
    )
    .await;
    let reply = support::raw_send(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["a@x.example", "b@y.example"],
        "Subject: q\r\n\r\nx",
    )
    .await;
    let id = reply.rsplit(' ').next().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\npath = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out = output(&config, &["queue", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&id) && text.contains("2/2") && text.contains("x.example,y.example"),
        "{text}"
    );
    assert!(text.contains("1 message(s) queued"), "{text}");
    let out = output(&config, &["queue", "list", "--json"]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["pending"], 2);
    let out = output(&config, &["queue", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sender:    <app@shop.example>")
            && text.contains("<a@x.example>  deferred, 1 attempt(s)"),
        "{text}"
    );
    // Not queued: its history is the running relay's, which this config cannot reach.
    let out = output(&config, &["queue", "show", "0000000000000000"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0000000000000000 is not in the queue"),
        "{err}"
    );
    relay.shutdown().await;
}
