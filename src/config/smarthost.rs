//! `[delivery] smarthost`: where all mail goes instead of MX lookup, and how the relay
//! talks to it. A plain `"host:port"` is a relay on a trusted network (opportunistic
//! STARTTLS, no login); a table describes a provider's submission service: the TLS it
//! must have (verified against the Mozilla roots or a given CA, for a given name; by
//! STARTTLS or from the first byte) and the credentials to log in with.
//!
//! This module reads and checks the configuration only; it never connects, and the
//! password never appears in a `Debug` rendering (or anywhere else the relay prints).

use std::path::PathBuf;

use super::HostPort;
use super::reader::Section;

/// How much TLS a next hop must have (`[delivery] smarthost.tls`, the policy's
/// `[destinations."D"] tls`). Ordered: the stricter of two demands wins.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsLevel {
    /// STARTTLS when offered, any certificate; plain text otherwise.
    Opportunistic,
    /// TLS or nothing; any certificate.
    Required,
    /// TLS with a certificate valid for the server's name, or nothing.
    Verify,
}

pub const DEFAULT_SMARTHOST_TLS: TlsLevel = TlsLevel::Opportunistic;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    pub address: HostPort,
    pub tls: TlsLevel,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    /// The name sent in SNI and that the certificate must be valid for (default: the
    /// address's host).
    pub server_name: String,
    /// CA certificates (PEM) that verify the smart host, in place of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN or LOGIN after TLS; `None`: no login.
    pub auth: Option<Credentials>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A password: kept out of every `Debug` output and log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Smarthost {
    /// A smart host given as `"host:port"`: opportunistic STARTTLS, no login.
    pub fn plain(address: HostPort) -> Smarthost {
        Smarthost {
            server_name: address.host.clone(),
            address,
            tls: DEFAULT_SMARTHOST_TLS,
            implicit_tls: false,
            ca_file: None,
            auth: None,
        }
    }
}

/// Reads `smarthost` of `[delivery]`: a `"host:port"` string or a table (see the module
/// doc). Every problem is reported with its key path.
pub(super) fn read(s: &mut Section<'_>) -> Option<Smarthost> {
    match s.get::<toml::Value>("smarthost")? {
        toml::Value::String(v) => match v.parse::<HostPort>() {
            Ok(hp) => Some(Smarthost::plain(hp)),
            Err(e) => {
                s.problem("smarthost", e);
                None
            }
        },
        toml::Value::Table(_) => read_table(&mut s.section("smarthost")),
        _ => {
            s.problem("smarthost", "must be \"host:port\" or a table");
            None
        }
    }
}

fn read_table(s: &mut Section<'_>) -> Option<Smarthost> {
    let address = match s.get::<String>("address") {
        Some(v) => match v.parse::<HostPort>() {
            Ok(hp) => Some(hp),
            Err(e) => {
                s.problem("address", e);
                None
            }
        },
        None => {
            s.problem("address", "is required (\"host:port\")");
            None
        }
    };
    let tls = s.get_or("tls", DEFAULT_SMARTHOST_TLS);
    let implicit_tls = s.get_or("implicit_tls", false);
    if implicit_tls && tls == TlsLevel::Opportunistic {
        s.problem(
            "implicit_tls",
            "needs tls = \"required\" or \"verify\" (there is nothing to fall back to)",
        );
    }
    let server_name = match s.get::<String>("server_name") {
        Some(n)
            if n.parse::<std::net::IpAddr>().is_ok()
                || crate::smtp::address::check_domain(&n).is_ok() =>
        {
            Some(n)
        }
        Some(n) => {
            s.problem("server_name", format!("{n:?} is not a host name"));
            None
        }
        None => None,
    };
    let ca_file = s.get_path("ca_file");
    if let Some(path) = &ca_file {
        if tls != TlsLevel::Verify {
            s.problem("ca_file", "only used with tls = \"verify\"");
        } else if let Err(e) = crate::tls::private_ca_client_config(path) {
            s.problem("ca_file", e.to_string());
        }
    }
    let auth = read_credentials(s);
    if auth.is_some() && tls == TlsLevel::Opportunistic {
        s.problem(
            "username",
            "credentials are only ever sent over TLS: set tls = \"required\" or \"verify\"",
        );
    }
    let address = address?;
    Some(Smarthost {
        server_name: server_name.unwrap_or_else(|| address.host.clone()),
        address,
        tls,
        implicit_tls,
        ca_file,
        auth,
    })
}

fn read_credentials(s: &mut Section<'_>) -> Option<Credentials> {
    let username = s.get::<String>("username");
    let inline = s.get::<String>("password");
    let file = s.get_path("password_file");
    let password = match (inline, file) {
        (Some(_), Some(_)) => {
            s.problem("password_file", "give password or password_file, not both");
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => match read_password_file(&path) {
            Ok(p) => Some(p),
            Err(why) => {
                s.problem("password_file", format!("{}: {why}", path.display()));
                None
            }
        },
        (None, None) => None,
    };
    match (username, password) {
        (None, None) => None,
        (Some(_), None) => {
            s.problem("password", "username needs a password or password_file");
            None
        }
        (None, Some(_)) => {
            s.problem("username", "a password needs a username");
            None
        }
        (Some(u), Some(p)) => {
            // SASL PLAIN separates its fields with NUL; LOGIN sends each on its own line.
            let bad = |v: &str| v.is_empty() || v.contains(['\0', '\r', '\n']);
            if bad(&u) {
                s.problem("username", "must not be empty or hold NUL, CR or LF");
                return None;
            }
            if bad(&p) {
                s.problem("password", "must not be empty or hold NUL, CR or LF");
                return None;
            }
            Some(Credentials {
                username: u,
                password: Secret::new(p),
            })
        }
    }
}

/// The password in a file of its own: its first line. The file must be readable by its
/// owner only, like any secret the relay keeps.
fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "readable by others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(delivery: &str) -> Result<Config, crate::config::reader::Problems> {
        Config::from_toml("t", &format!("[delivery]\n{delivery}"))
    }

    #[test]
    fn a_string_is_a_plain_smart_host() {
        let c = load("smarthost = \"mail.example.net:25\"").unwrap();
        let s = c.delivery.smarthost.unwrap();
        assert_eq!(
            (s.tls, s.implicit_tls, s.auth),
            (TlsLevel::Opportunistic, false, None)
        );
        assert_eq!(s.server_name, "mail.example.net");
    }

    #[test]
    fn a_table_describes_a_submission_service() {
        let c = load(
            "[delivery.smarthost]\naddress = \"192.0.2.7:587\"\ntls = \"verify\"\n\
             server_name = \"smtp.provider.example\"\nusername = \"relay@shop.example\"\n\
             password = \"s3cret\"\n",
        )
        .unwrap();
        let s = c.delivery.smarthost.unwrap();
        assert_eq!(s.address.port, 587);
        assert_eq!(s.tls, TlsLevel::Verify);
        assert_eq!(s.server_name, "smtp.provider.example");
        let auth = s.auth.unwrap();
        assert_eq!(auth.username, "relay@shop.example");
        assert_eq!(auth.password.expose(), "s3cret");
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn credentials_never_go_without_tls_and_other_mistakes_are_listed() {
        let e = load(
            "[delivery.smarthost]\naddress = \"mail.example.net:587\"\nusername = \"u\"\n\
             password = \"p\"\nimplicit_tls = true\nca_file = \"/nonexistent.pem\"\nbogus = 1\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "delivery.smarthost.username: credentials are only ever sent over TLS",
            "delivery.smarthost.implicit_tls: needs tls",
            "delivery.smarthost.ca_file: only used with tls = \"verify\"",
            "delivery.smarthost.bogus: unknown key",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        assert!(!e.contains("\"p\""), "{e}");
        let e = load("[delivery.smarthost]\ntls = \"paranoid\"\nusername = \"u\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.smarthost.address: is required"), "{e}");
        assert!(e.contains("delivery.smarthost.tls"), "{e}");
        assert!(
            e.contains("delivery.smarthost.password: username needs"),
            "{e}"
        );
        let e = load("smarthost = 25").unwrap_err().to_string();
        assert!(e.contains("delivery.smarthost: must be"), "{e}");
    }

    #[test]
    fn a_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-a-file\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[delivery.smarthost]\naddress = \"mail.example.net:465\"\ntls = \"required\"\n\
             implicit_tls = true\nusername = \"u\"\npassword_file = \"{}\"\n",
            path.display()
        );
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("readable by others (mode 644)"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = load(&text).unwrap().delivery.smarthost.unwrap();
        assert_eq!(s.auth.unwrap().password.expose(), "from-a-file");
        assert!(s.implicit_tls);
    }
}
