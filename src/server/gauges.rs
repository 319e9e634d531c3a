//! Gauges that are read rather than counted: the spool's disk space, the inbound
//! certificate's expiry, and each account's distance to its freeze thresholds. A task
//! refreshes them every [`EVERY`]; nothing on the mail path pays for them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::governance::Governor;
use crate::governance::health;

/// How often the gauges are refreshed.
const EVERY: Duration = Duration::from_secs(15);

/// Sets what is known at start and spawns the refreshing task.
pub(super) fn spawn(config: &Config, governor: Arc<Governor>, stop: CancellationToken) {
    if let Some(cert) = &config.tls.certificate {
        match crate::tls::not_after(cert) {
            Ok(t) => crate::metrics::tls_not_after(t),
            Err(e) => tracing::warn!(error = %e, "cannot read the certificate's expiry"),
        }
    }
    let spool = config.spool.path.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let path = spool.clone();
            // statvfs may block on a slow file system: off the async threads.
            if let Ok(Some((free, total))) =
                tokio::task::spawn_blocking(move || disk_space(&path)).await
            {
                crate::metrics::spool_disk(free, total);
            }
            thresholds(&governor);
        }
    });
}

/// Free (for an unprivileged writer) and total bytes of the file system holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points at writable memory of the
    // right type; statvfs fills it or fails without touching it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`. (The fields are u64 on the
    // 64-bit Linux this builds for.)
    let st = unsafe { st.assume_init() };
    let block = st.f_frsize;
    Some((st.f_bavail * block, st.f_blocks * block))
}

/// Each account's rates over its thresholds, in the current window.
fn thresholds(governor: &Governor) {
    let rules = governor.policy.load().health_rules();
    let now = crate::envelope::now_ms();
    for account in governor.health.accounts() {
        let window = governor.health.window(&account, &rules, now);
        for c in health::closeness(&window, &rules) {
            crate::metrics::account_threshold(&account, c.threshold, c.ratio);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn disk_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = super::disk_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total, "{free} {total}");
        assert!(super::disk_space(Path::new("/nonexistent/x")).is_none());
    }
}
