//! `optin-relay account key …`: the accounts' API keys, made, listed and revoked through
//! the running relay's admin API (`/admin/accounts/{name}/keys`). A new key is printed
//! once; the relay keeps only its hash.

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::ApiArgs;
use super::admin::{Call, encode};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key for the account's own API (`/account/…` on the public listener); it is
    /// printed once and never shown again.
    Create {
        /// The account (as named in the policy).
        name: String,
        /// What the key is for (shown in listings).
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The account's keys: id, label, when made and revoked (never the keys).
    List {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a key: it opens nothing from the next request on.
    Revoke {
        name: String,
        /// The key's id (the 12 hexadecimal digits after `ork_`).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn when(v: &Value) -> String {
    v.as_u64().map_or_else(
        || "-".into(),
        |ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        },
    )
}

/// The request and the printer of each verb.
pub fn call(command: KeyCommand) -> (ApiArgs, Call) {
    match command {
        KeyCommand::Create { name, label, api } => {
            let call = Call::new(
                Method::POST,
                format!("/accounts/{}/keys", encode(&name)),
                |v| {
                    println!(
                        "key {} of account {} made; give it to the account's systems now, it \
                         is not shown again:\n\n  {}\n",
                        v["id"].as_str().unwrap_or("?"),
                        v["account"].as_str().unwrap_or("?"),
                        v["key"].as_str().unwrap_or("?"),
                    );
                },
            )
            .with_body(json!({ "label": label }));
            (api, call)
        }
        KeyCommand::List { name, api } => {
            let call = Call::new(
                Method::GET,
                format!("/accounts/{}/keys", encode(&name)),
                |v| {
                    let keys = v["keys"].as_array().cloned().unwrap_or_default();
                    if keys.is_empty() {
                        println!("no keys");
                    }
                    for k in keys {
                        println!(
                            "{}  made {}  {}  {}",
                            k["id"].as_str().unwrap_or("?"),
                            when(&k["created_ms"]),
                            match k["revoked_ms"].as_u64() {
                                Some(_) => format!("revoked {}", when(&k["revoked_ms"])),
                                None => "active".into(),
                            },
                            k["label"].as_str().unwrap_or(""),
                        );
                    }
                },
            );
            (api, call)
        }
        KeyCommand::Revoke { name, id, api } => {
            let call = Call::new(
                Method::DELETE,
                format!("/accounts/{}/keys/{}", encode(&name), encode(&id)),
                |v| {
                    println!(
                        "key {} of account {} revoked ({})",
                        v["id"].as_str().unwrap_or("?"),
                        v["account"].as_str().unwrap_or("?"),
                        when(&v["revoked_ms"]),
                    );
                },
            );
            (api, call)
        }
    }
}
