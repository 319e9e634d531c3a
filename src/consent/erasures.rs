//! Erasures reach every node of a cluster. The feed carries an erasure's suppression (a
//! fingerprint) to every node, but scrubbing a node's spool, event logs and kept-aside
//! reports needs the address itself. The node that took the request puts the address on
//! the stream `PREFIX erasures`, sealed (ChaCha20-Poly1305, a random nonce each) with a key
//! derived from the lists secret that every node shares — Redis never holds it in the
//! clear — and every other node reads the stream from its own position
//! (`erasures.seen` beside its journals), opens each entry and erases the address there
//! as the admin API would. Entries older than [`KEEP`] are trimmed: a node away for longer
//! misses them (logged when it comes back).

use std::sync::Arc;
use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tokio_util::sync::CancellationToken;

use super::{Lists, positions};
use crate::cluster::{Cluster, stream};

/// How long an erasure stays on the stream.
pub const KEEP: Duration = Duration::from_secs(7 * 86_400);
/// How long a read waits for news.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// The longest address an entry may hold.
const MAX_ADDRESS: usize = 1024;

/// What a node does with an erasure made elsewhere (the address, normalised).
pub type OnErasure = Arc<
    dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync,
>;

fn key(lists: &Lists) -> LessSafeKey {
    let k = blake3::derive_key(
        "optin-relay 2026 erasure address key",
        lists.secret().key_bytes(),
    );
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("32-octet key"))
}

/// The address sealed: nonce, then ciphertext and tag.
fn seal(lists: &Lists, address: &str) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut out = address.as_bytes().to_vec();
    key(lists)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut out)
        .expect("sealing cannot fail for a short message");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&out);
    sealed
}

/// The address of a sealed entry; `None` when it does not open (another secret, damaged,
/// not ours).
fn open(lists: &Lists, sealed: &[u8]) -> Option<String> {
    if sealed.len() <= NONCE_LEN || sealed.len() > NONCE_LEN + MAX_ADDRESS + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut body = body.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let plain = key(lists)
        .open_in_place(nonce, Aad::empty(), &mut body)
        .ok()?;
    let address = std::str::from_utf8(plain).ok()?;
    super::key::normalise(address).ok().filter(|n| n == address)
}

/// Tells the other nodes to erase `address` (normalised); `Err` when Redis did not take it.
pub async fn announce(cluster: &Cluster, lists: &Lists, address: &str) -> Result<(), String> {
    let key = cluster.key("erasures");
    let sealed = seal(lists, address);
    let node = cluster.node_id().to_string();
    let oldest = crate::envelope::now_ms().saturating_sub(KEEP.as_millis() as u64);
    cluster
        .call("erasure", |mut c| async move {
            redis::pipe()
                .cmd("XADD")
                .arg(&key)
                .arg("MINID")
                .arg("~")
                .arg(oldest)
                .arg("*")
                .arg("n")
                .arg(node)
                .arg("a")
                .arg(sealed)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .ok_or_else(|| "Redis did not take the erasure for the other nodes".to_string())
}

/// Reads the other nodes' erasures for as long as the node runs and hands each address to
/// `on_erasure`; the position is kept only once it succeeded (an erasure that failed is
/// tried again after a while).
pub fn spawn(
    lists: Arc<Lists>,
    cluster: Arc<Cluster>,
    on_erasure: OnErasure,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let key = cluster.key("erasures");
        let seen = positions::erasures_seen_path(lists.dir());
        let mut after = positions::read_line(&seen);
        let mut conn = None;
        // A node that read before looks once for erasures trimmed while it was away.
        let mut checked = after.is_none();
        loop {
            let Some(c) = cluster
                .reading_connection(&mut conn, READ_BLOCK, &stop)
                .await
            else {
                return;
            };
            let position = match &after {
                Some(p) => p.clone(),
                None => {
                    // A new node starts from now: erasures before it have nothing of it
                    // to scrub.
                    let now = stream::latest(c, &key)
                        .await
                        .unwrap_or_else(|| "0-0".into());
                    after = Some(now.clone());
                    now
                }
            };
            if !checked {
                checked = true;
                if stream::trimmed_after(c, &key, &position).await {
                    tracing::error!(
                        "erasures made on other nodes while this one was away longer than a \
                         week were trimmed: addresses erased elsewhere may still be in this \
                         node's spool or logs"
                    );
                }
            }
            let read = tokio::select! {
                () = stop.cancelled() => return,
                r = stream::read(c, &key, &position, 100, READ_BLOCK) => r,
            };
            let entries = match read {
                Ok(e) => e,
                Err(e) => {
                    cluster.failed("erasure", &e);
                    conn = None;
                    continue;
                }
            };
            for entry in entries {
                let node: String = entry.get("n").unwrap_or_default();
                let sealed: Vec<u8> = entry.get("a").unwrap_or_default();
                if node != cluster.node_id() {
                    match open(&lists, &sealed) {
                        Some(address) => {
                            if let Err(e) = on_erasure(address).await {
                                tracing::error!(error = %e, "an erasure made on another node is incomplete here; tried again in a minute");
                                tokio::select! {
                                    () = stop.cancelled() => return,
                                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                                }
                                break;
                            }
                            tracing::info!(node, "erasure made on another node carried out here");
                        }
                        None => tracing::warn!(
                            node,
                            "an erasure entry that does not open with this node's secret skipped"
                        ),
                    }
                }
                let _ = positions::write_line(&seen, &entry.id);
                after = Some(entry.id);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_address_opens_only_with_the_same_secret() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let a = Lists::open(d1.path(), 24).unwrap();
        std::fs::copy(d1.path().join("secret"), d2.path().join("secret")).unwrap();
        let b = Lists::open(d2.path(), 24).unwrap();
        let other = Lists::open(d3.path(), 24).unwrap();
        let sealed = seal(&a, "jane@example.com");
        assert!(
            !sealed.windows(4).any(|w| w == b"jane"),
            "never in the clear"
        );
        assert_eq!(open(&b, &sealed).as_deref(), Some("jane@example.com"));
        assert_eq!(open(&other, &sealed), None, "another secret");
        let mut damaged = sealed.clone();
        damaged[NONCE_LEN] ^= 1;
        assert_eq!(open(&b, &damaged), None, "damaged");
        assert_eq!(open(&b, &sealed[..5]), None, "short");
        assert_ne!(seal(&a, "jane@example.com"), sealed, "a nonce each");
        // Not an address, or not normalised: refused even when it opens.
        assert_eq!(open(&b, &seal(&a, "Jane@Example.com")), None);
        assert_eq!(open(&b, &seal(&a, "no at sign")), None);
    }
}
