//! Personal data: keeping recipient addresses out of logs, keeping what must hold them
//! only as long as configured ([`retention`]), and erasing an address from everything on
//! disk ([`erase`]). README's *Personal data* lists every place and its limit.
//!
//! Log lines name a recipient only as `h:<16 hex>@domain`: a keyed BLAKE3 hash of the
//! normalised address (lower-cased), so an operator can follow one recipient through the
//! log, and search for a known address with `optin-relay` tooling that has the key, but the
//! log itself reveals no address. The key is 32 random octets in a file beside the spool
//! (`log.key`, mode 0600), created on first start and kept, so tags stay stable across
//! restarts. The domain stays readable: it is what operators debug delivery by.
//!
//! Nothing here may log an address, or leave a plain copy behind when it rewrites a file
//! (rewrites go through a temporary file renamed over the original, see [`jsonl`]).

pub mod delivery_log;
pub mod erase;
pub mod events;
pub mod jsonl;
pub mod retention;

use std::path::Path;

/// Turns addresses into the keyed tags that logs carry instead (see the module doc).
#[derive(Clone)]
pub struct AddressTagger {
    key: [u8; 32],
}

impl std::fmt::Debug for AddressTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressTagger(<key>)")
    }
}

impl AddressTagger {
    /// A tagger with this key (tests; the relay loads its key file).
    pub fn new(key: [u8; 32]) -> AddressTagger {
        AddressTagger { key }
    }

    /// Loads the key from `path`, creating it (0600) if it does not exist; the same key
    /// file handling as the lists' secret.
    pub fn load_or_create(path: &Path) -> std::io::Result<AddressTagger> {
        crate::consent::key::Secret::load_or_create(path).map(|s| AddressTagger {
            key: *s.key_bytes(),
        })
    }

    /// `text` (a server's reply, say) with every spelling of `address` in it, in any
    /// case, replaced by its tag: servers often quote the recipient back.
    pub fn scrub(&self, text: &str, address: &str) -> String {
        if address.is_empty() || text.len() < address.len() {
            return text.to_string();
        }
        let lower_text = text.to_lowercase();
        let lower_addr = address.to_lowercase();
        if lower_text.len() != text.len() || !lower_text.contains(&lower_addr) {
            return text.to_string();
        }
        let tag = self.tag(address);
        let mut out = String::with_capacity(text.len());
        let mut rest = 0;
        for (at, _) in lower_text.match_indices(&lower_addr) {
            out.push_str(&text[rest..at]);
            out.push_str(&tag);
            rest = at + lower_addr.len();
        }
        out.push_str(&text[rest..]);
        out
    }

    /// 32 bits of the address's keyed hash (case-blind), for finding an address in memory
    /// without keeping it there.
    pub fn short(&self, address: &str) -> u32 {
        let hash = blake3::keyed_hash(&self.key, address.to_lowercase().as_bytes());
        u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"))
    }

    /// A key of its own for `purpose`, derived from the tagger's (keyed hashes of other
    /// things than addresses).
    pub fn key_for(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(&format!("optin-relay 2026 {purpose}"), &self.key)
    }

    /// `h:<hash>@domain` for logs.
    pub fn tag(&self, address: &str) -> String {
        let normalised = address.to_lowercase();
        let hash = blake3::keyed_hash(&self.key, normalised.as_bytes());
        let hex = hash.to_hex();
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        format!("h:{}@{}", &hex[..16], domain.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_hide_the_local_part_and_are_stable() {
        let t = AddressTagger::new([7; 32]);
        let a = t.tag("Jane.Doe@Example.COM");
        assert!(a.starts_with("h:") && a.ends_with("@example.com"));
        assert!(!a.to_lowercase().contains("jane"));
        assert_eq!(a, t.tag("jane.doe@example.com"));
        assert_ne!(a, AddressTagger::new([8; 32]).tag("jane.doe@example.com"));
    }

    #[test]
    fn replies_are_scrubbed_of_the_address() {
        let t = AddressTagger::new([7; 32]);
        let tag = t.tag("jane@example.com");
        assert_eq!(
            t.scrub(
                "550 5.1.1 <Jane@Example.COM>: user unknown (jane@example.com)",
                "jane@example.com"
            ),
            format!("550 5.1.1 <{tag}>: user unknown ({tag})")
        );
        assert_eq!(t.scrub("250 ok", "jane@example.com"), "250 ok");
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let a = AddressTagger::load_or_create(&path)
            .unwrap()
            .tag("x@y.example");
        let b = AddressTagger::load_or_create(&path)
            .unwrap()
            .tag("x@y.example");
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(AddressTagger::load_or_create(&path).is_err());
    }
}
