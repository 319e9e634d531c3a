//! Which configuration a command runs on, and `config check` / `config show`.
//!
//! The file is, in order: `--config FILE`, the `OPTIN_RELAY_CONFIG` environment variable,
//! `/etc/optin-relay/optin-relay.toml` when it exists, else the embedded default. Every
//! command uses the same choice; `serve` logs it and `config check|show` print it, so an
//! operator never wonders which file a relay runs on. Relative paths in a file resolve
//! against its directory (see `crate::config::reader::Collector::for_file`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::config::reader::Setting;

/// The environment variable naming the config file when `--config` does not.
pub const CONFIG_ENV: &str = "OPTIN_RELAY_CONFIG";
/// The system-wide config file (the Debian package installs it).
pub const SYSTEM_CONFIG: &str = "/etc/optin-relay/optin-relay.toml";

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    System,
    Embedded,
}

/// The configuration file a command runs on (`None`: the embedded default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: Option<PathBuf>,
    pub source: Source,
}

impl Located {
    /// Finds the file: `--config`, then `$OPTIN_RELAY_CONFIG` (when set and not empty),
    /// then the system file when it exists, else the embedded default.
    pub fn find(flag: Option<&Path>) -> Located {
        Located::find_in(flag, std::env::var_os(CONFIG_ENV), Path::new(SYSTEM_CONFIG))
    }

    fn find_in(flag: Option<&Path>, env: Option<std::ffi::OsString>, system: &Path) -> Located {
        if let Some(p) = flag {
            return Located {
                path: Some(p.to_path_buf()),
                source: Source::Flag,
            };
        }
        if let Some(p) = env.filter(|p| !p.is_empty()) {
            return Located {
                path: Some(PathBuf::from(p)),
                source: Source::Env,
            };
        }
        if system.exists() {
            return Located {
                path: Some(system.to_path_buf()),
                source: Source::System,
            };
        }
        Located {
            path: None,
            source: Source::Embedded,
        }
    }

    /// "FILE (from --config)", "the embedded default (…)".
    pub fn describe(&self) -> String {
        let file = self.path.as_deref().map(|p| p.display().to_string());
        match (&self.source, file) {
            (Source::Flag, Some(f)) => format!("{f} (from --config)"),
            (Source::Env, Some(f)) => format!("{f} (from {CONFIG_ENV})"),
            (Source::System, Some(f)) => format!("{f} (the system configuration)"),
            _ => format!("the embedded default (no --config, no {CONFIG_ENV}, no {SYSTEM_CONFIG})"),
        }
    }
}

/// `[cluster]`: asks each Redis server once. None answering is a problem (the relay would
/// start, but on its share of the limits only and sharing nothing).
fn check_cluster(cluster: &crate::config::cluster::ClusterConfig) -> bool {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            println!("cluster: cannot check Redis: {e}");
            return false;
        }
    };
    let answers = runtime.block_on(crate::cluster::probe(cluster));
    let mut any = false;
    for (url, answer) in &answers {
        match answer {
            Ok(what) => {
                any = true;
                println!("cluster: {url} {what}");
            }
            Err(why) => println!("cluster: {url} does not answer: {why}"),
        }
    }
    if !any {
        println!(
            "cluster: no Redis server answers; node {:?} would run on its share of the limits, \
             sharing nothing",
            cluster.node_id
        );
    }
    any
}

/// `config check`: the main config, its TLS files, the policy; problems exit 1, warnings
/// are printed and exit 0.
pub fn check(located: &Located) -> ExitCode {
    println!("configuration: {}", located.describe());
    let path = located.path.as_deref();
    let name = path.map_or("(embedded default)".to_string(), |p| {
        p.display().to_string()
    });
    let config = match super::load_config(path) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    let tls_problems = tls_problems(&config);
    for p in &tls_problems {
        println!("{name}: {p}");
    }
    ok &= tls_problems.is_empty();
    let warnings: Vec<String> = config
        .warnings()
        .iter()
        .map(ToString::to_string)
        .chain(certificate_warnings(&config))
        .collect();
    if tls_problems.is_empty() {
        match warnings.len() {
            0 => println!("{name}: ok"),
            n => println!("{name}: ok, {n} warning(s)"),
        }
    }
    for w in &warnings {
        println!("  warning: {w}");
    }
    let policy_name = config
        .policy
        .path
        .as_ref()
        .map_or("(embedded default policy)".to_string(), |p| {
            p.display().to_string()
        });
    match super::load_policy(&config) {
        Ok(p) if p.accounts().is_empty() => {
            for problem in crate::reload::account_problems(&p, None) {
                println!("{policy_name}: {problem}");
            }
            ok = false;
        }
        Ok(p) => println!("{policy_name}: ok ({} accounts)", p.accounts().len()),
        Err(e) => {
            println!("{e}");
            ok = false;
        }
    }
    if let Some(cluster) = &config.cluster {
        ok &= check_cluster(cluster);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The certificate files of the SMTP and HTTP listeners: each must load and its key must
/// match (what `serve` would refuse at start, found before it).
fn tls_problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.tls.certificate.is_some()
        && let Err(e) = crate::tls::server_config(&config.tls, &config.smtp.hostname)
    {
        out.push(format!("tls: {e}"));
    }
    if let (Some(certificate), Some(private_key)) =
        (&config.http.certificate, &config.http.private_key)
    {
        let tls = crate::tls::TlsConfig {
            certificate: Some(certificate.clone()),
            private_key: Some(private_key.clone()),
        };
        if let Err(e) = crate::tls::server_config(&tls, &config.smtp.hostname) {
            out.push(format!("http: {e}"));
        }
    }
    out
}

/// Certificates that expire within 14 days (or have).
fn certificate_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let files = [
        ("tls.certificate", config.tls.certificate.as_deref()),
        ("http.certificate", config.http.certificate.as_deref()),
    ];
    let now = crate::envelope::now_ms() / 1000;
    for (key, file) in files {
        let Some(not_after) = file.and_then(|f| crate::tls::not_after(f).ok()) else {
            continue;
        };
        let left = not_after - now as i64;
        if left <= 0 {
            out.push(format!("{key}: the certificate has expired"));
        } else if left < 14 * 86400 {
            out.push(format!(
                "{key}: the certificate expires in {} day(s)",
                left / 86400
            ));
        }
    }
    out
}

/// `config show`: every setting in force, as TOML (the defaults marked); with `changed`,
/// only what the file sets (as `postconf -n`).
pub fn show(located: &Located, changed: bool) -> Result<ExitCode, String> {
    let (_, settings) = match located.path.as_deref() {
        Some(p) => Config::load_with_settings(p).map_err(|e| e.to_string())?,
        None => Config::embedded_with_settings(),
    };
    print!("{}", render(&located.describe(), &settings, changed));
    Ok(ExitCode::SUCCESS)
}

/// Settings as TOML, one table per section in the order first read.
fn render(source: &str, settings: &[Setting], changed: bool) -> String {
    let mut sections: Vec<(&str, Vec<&Setting>)> = Vec::new();
    for s in settings.iter().filter(|s| s.given || !changed) {
        let section = s.key.rsplit_once('.').map_or("", |(t, _)| t);
        match sections.iter_mut().find(|(name, _)| *name == section) {
            Some((_, list)) => list.push(s),
            None => sections.push((section, vec![s])),
        }
    }
    let mut out = format!("# configuration: {source}\n");
    if !changed {
        out.push_str("# values marked `# default` are not in the file; `# (not set)`: off\n");
    }
    for (section, list) in sections {
        out.push('\n');
        if !section.is_empty() {
            out.push_str(&format!("[{section}]\n"));
        }
        for s in list {
            let key = s.key.rsplit_once('.').map_or(s.key.as_str(), |(_, k)| k);
            match (&s.value, s.given) {
                (Some(v), true) => out.push_str(&format!("{key} = {v}\n")),
                (Some(v), false) => out.push_str(&format!("{key} = {v}  # default\n")),
                (None, _) => out.push_str(&format!("# {key} = (not set)\n")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_found_in_order() {
        let none = Path::new("/nonexistent/optin-relay.toml");
        let flag = Located::find_in(Some(Path::new("a.toml")), Some("b.toml".into()), none);
        assert_eq!(flag.source, Source::Flag);
        assert_eq!(flag.path.as_deref(), Some(Path::new("a.toml")));
        let env = Located::find_in(None, Some("b.toml".into()), none);
        assert_eq!(env.source, Source::Env);
        assert!(env.describe().contains(CONFIG_ENV));
        // An empty variable is no choice; a missing system file leaves the default.
        let default = Located::find_in(None, Some("".into()), none);
        assert_eq!(default.source, Source::Embedded);
        assert_eq!(default.path, None);
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("optin-relay.toml");
        std::fs::write(&system, "").unwrap();
        let found = Located::find_in(None, None, &system);
        assert_eq!(found.source, Source::System);
        assert!(found.describe().contains("system"));
    }

    #[test]
    fn show_marks_defaults_and_hides_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "[spool]\npath = \"spool\"\n[admin]\ntoken = \"0123456789abcdef0123\"\n\
             [delivery]\nretry_max = \"2h\"\n",
        )
        .unwrap();
        let (config, settings) = Config::load_with_settings(&file).unwrap();
        let all = render("x", &settings, false);
        // Relative paths resolve against the file's directory; defaults derived from them
        // follow.
        let spool = std::path::absolute(dir.path().join("spool")).unwrap();
        assert_eq!(config.spool.path, spool);
        assert!(
            all.contains(&format!("path = \"{}\"\n", spool.display())),
            "{all}"
        );
        assert!(all.contains("retry_max = \"2h\"\n"), "{all}");
        assert!(all.contains("retry_initial = \"5m\"  # default\n"), "{all}");
        assert!(all.contains(&format!(
            "token_file = \"{}\"  # default",
            spool.join("admin.token").display()
        )));
        assert!(all.contains("token = \"(hidden)\""), "{all}");
        assert!(!all.contains("0123456789abcdef0123"));
        // The output is a config the relay reads back to the same values (but for the
        // hidden token, which is shown as what it is not).
        let again = dir.path().join("again.toml");
        let text: Vec<&str> = all.lines().filter(|l| !l.starts_with("token =")).collect();
        std::fs::write(&again, text.join("\n")).unwrap();
        let (reread, _) = Config::load_with_settings(&again).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reread.spool.path, spool);
        assert_eq!(reread.delivery.retry_max, config.delivery.retry_max);
        // --changed: only what the file says.
        let changed = render("x", &settings, true);
        assert!(!changed.contains("# default"), "{changed}");
        assert!(changed.contains("retry_max"));
    }
}
