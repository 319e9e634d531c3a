//! Tests of the main config: defaults, every key, problems reported with their place.

use super::*;

#[test]
fn embedded_default_matches_design() {
    let c = Config::embedded_default();
    assert_eq!(c.smtp.listen, vec![addr("127.0.0.1:2525")]);
    assert_eq!(c.http.listen, Some(addr("127.0.0.1:8025")));
    assert_eq!(c.spool.path, PathBuf::from("./data"));
    assert!(c.delivery.smarthost.is_none());
    assert!(c.spool.fsync);
    assert_eq!(c.delivery.max_age, Duration::from_secs(5 * 86400));
    assert!(c.policy.path.is_none());
}

#[test]
fn reads_keys_tests_rely_on() {
    let c = Config::from_toml(
        "t",
        r#"
        [smtp]
        listen = ["127.0.0.1:0", "[::1]:0"]
        max_message_size = "10MiB"
        idle_timeout = "30s"
        [spool]
        path = "/tmp/x"
        [delivery]
        smarthost = "127.0.0.1:2526"
        dns = "127.0.0.1:5353"
        mx_port = 2500
        [http]
        listen = ""
        [policy]
        path = "p.toml"
        "#,
    )
    .unwrap();
    assert_eq!(c.smtp.listen.len(), 2);
    assert_eq!(c.smtp.max_message_size, 10 << 20);
    assert_eq!(c.smtp.idle_timeout, Duration::from_secs(30));
    assert_eq!(
        c.delivery.smarthost.map(|s| s.address),
        Some(HostPort {
            host: "127.0.0.1".into(),
            port: 2526
        })
    );
    assert_eq!(c.delivery.mx_port, 2500);
    assert_eq!(c.http.listen, None);
    assert_eq!(c.policy.path, Some(PathBuf::from("p.toml")));
}

#[test]
fn every_problem_at_once() {
    let err = Config::from_toml(
        "bad.toml",
        r#"
        [smtp]
        listen = "not an address"
        max_message_size = "lots"
        idle_timeout = 30
        max_line_length = 5000
        colour = "blue"
        [delivery]
        smarthost = "nohost"
        retry_initial = "2h"
        [tls]
        certificate = "c.pem"
        [unknown]
        "#,
    )
    .unwrap_err();
    let paths: Vec<&str> = err.list.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "delivery.retry_initial",
            "delivery.smarthost",
            "smtp.colour",
            "smtp.idle_timeout",
            "smtp.listen",
            "smtp.max_line_length",
            "smtp.max_message_size",
            "tls.certificate",
            "unknown",
        ],
        "{err}"
    );
}

#[test]
fn complaints_address_defaults_to_the_mail_domain() {
    let c = Config::from_toml("t", "[unsubscribe]\nmail_domain = \"Relay.Test\"\n").unwrap();
    assert!(c.complaints.enabled);
    assert_eq!(c.complaints.address.as_str(), "fbl@relay.test");
    let c = Config::from_toml(
        "t",
        "[complaints]\naddress = \"abuse-reports@fbl.example\"\nenabled = false\n",
    )
    .unwrap();
    assert!(!c.complaints.enabled);
    assert_eq!(c.complaints.address.as_str(), "abuse-reports@fbl.example");
    let err = Config::from_toml("t", "[complaints]\naddress = \"no at sign\"\n").unwrap_err();
    assert_eq!(err.list[0].path, "complaints.address", "{err}");
}

#[test]
fn webhook_retry_initial() {
    let c = Config::embedded_default();
    assert_eq!(c.webhooks.retry_initial, Duration::from_secs(30));
    let c = Config::from_toml("t", "[webhooks]\nretry_initial = \"100ms\"\n").unwrap();
    assert_eq!(c.webhooks.retry_initial, Duration::from_millis(100));
    let err = Config::from_toml("t", "[webhooks]\nretry_initial = \"2h\"\n").unwrap_err();
    assert_eq!(err.list[0].path, "webhooks.retry_initial", "{err}");
}

#[test]
fn privacy_retention_has_defaults_and_refuses_zero() {
    let c = Config::embedded_default();
    assert_eq!(
        (c.privacy.delivery_log_days, c.privacy.event_log_days),
        (30, 90)
    );
    let c = Config::from_toml(
        "t",
        "[privacy]\ndelivery_log_days = 7\nevent_log_days = 14\n",
    )
    .unwrap();
    assert_eq!(
        (c.privacy.delivery_log_days, c.privacy.event_log_days),
        (7, 14)
    );
    let err = Config::from_toml(
        "t",
        "[privacy]\ndelivery_log_days = 0\nevent_log_days = -1\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = err.list.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["privacy.delivery_log_days", "privacy.event_log_days"],
        "{err}"
    );
}

#[test]
fn host_port() {
    assert_eq!(
        "mx.example:25".parse::<HostPort>().unwrap().host,
        "mx.example"
    );
    assert_eq!(
        "[::1]:25".parse::<HostPort>().unwrap().to_string(),
        "[::1]:25"
    );
    assert!("mx.example".parse::<HostPort>().is_err());
    assert!("mx.example:0".parse::<HostPort>().is_err());
    assert!("bad_host:25".parse::<HostPort>().is_err());
}

#[test]
fn log_levels_and_listen_addresses_are_named_when_wrong() {
    let err = Config::from_toml(
        "t",
        "[smtp]\nlisten = [\"127.0.0.1:25\", \"nonsense\"]\n[log]\nlevel = \"verbose\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"nonsense\" is not an ip:port address"),
        "{err}"
    );
    assert!(err.contains("\"verbose\" is not a level"), "{err}");
    assert!(!err.contains("untagged"), "{err}");
    for ok in [
        "info",
        "warn,optin_relay=debug",
        "optin_relay::delivery=TRACE",
    ] {
        let c = Config::from_toml("t", &format!("[log]\nlevel = \"{ok}\"\n"));
        assert!(c.is_ok(), "{ok}: {:?}", c.err().map(|e| e.to_string()));
    }
}

#[test]
fn relative_paths_resolve_against_the_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let file = etc.join("relay.toml");
    std::fs::write(
        &file,
        "[spool]\npath = \"../spool\"\n[policy]\npath = \"policy.toml\"\n\
         [lists]\npath = \"/abs/lists\"\n",
    )
    .unwrap();
    let c = Config::load(&file).unwrap();
    let etc = std::path::absolute(&etc).unwrap();
    assert_eq!(c.spool.path, etc.join("../spool"));
    assert_eq!(c.policy.path, Some(etc.join("policy.toml")));
    assert_eq!(c.lists.path, PathBuf::from("/abs/lists"));
    // Defaults made from the spool follow it.
    assert_eq!(c.admin.token_file, etc.join("../spool/admin.token"));
    // Text that is not from a file keeps the working directory.
    let c = Config::from_toml("t", "[spool]\npath = \"sp\"\n").unwrap();
    assert_eq!(c.spool.path, PathBuf::from("sp"));
}
