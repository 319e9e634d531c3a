//! Retention: what holds personal data is kept only as long as `[privacy]` says.
//!
//! - The delivery log is written per UTC day (`delivery-YYYY-MM-DD.jsonl` beside the
//!   configured `[delivery] log` path, see [`day_file`]); a day file goes once every line
//!   in it is older than `delivery_log_days`. A log from before per-day files (the
//!   configured path itself) goes once it was last written that long ago.
//! - Event logs that carry addresses (`events/*.jsonl` in the spool directory, all but the
//!   address-free audit logs in [`ADDRESS_FREE_EVENT_LOGS`]) lose the lines whose `time_ms`
//!   is older than `event_log_days` (rewritten atomically, see [`super::jsonl`]); a line
//!   without `time_ms` is kept, since its age is unknown.
//! - Complaint reports and mail to return paths kept aside (`complaints/malformed/*`,
//!   `bounces/kept-aside/*`) go `event_log_days` after they were written (by modification
//!   time).
//!
//! [`spawn`] runs a [`sweep`] when the relay starts and every hour. A sweep never fails as
//! a whole: each file it cannot handle is a problem in its report, logged by path (paths
//! hold no address), and the next sweep tries again.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// How often the relay sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Event logs without addresses (freezes, campaign verdicts): an audit trail, not
/// personal data, so retention leaves them whole.
pub const ADDRESS_FREE_EVENT_LOGS: &[&str] = &["freezes.jsonl", "campaigns.jsonl"];

/// What a sweep works on; see the module doc.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The spool directory (`events/` and `complaints/malformed/` are in it).
    pub spool: PathBuf,
    /// The configured delivery log path (`None`: the log is off).
    pub delivery_log: Option<PathBuf>,
    pub delivery_log_days: u32,
    pub event_log_days: u32,
}

impl Retention {
    /// The places and limits of a relay's configuration.
    pub fn new(config: &crate::config::Config) -> Retention {
        Retention {
            spool: config.spool.path.clone(),
            delivery_log: config.delivery.log.clone(),
            delivery_log_days: config.privacy.delivery_log_days,
            event_log_days: config.privacy.event_log_days,
        }
    }
}

/// What one sweep removed, and what it could not handle.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Delivery log day files deleted.
    pub delivery_logs_deleted: usize,
    /// Event log lines removed.
    pub event_lines_removed: usize,
    /// Kept-aside complaint reports deleted.
    pub reports_deleted: usize,
    /// Files that could not be read, rewritten or deleted, with the reason.
    pub problems: Vec<String>,
}

impl SweepReport {
    fn log(&self) {
        if self.delivery_logs_deleted + self.event_lines_removed + self.reports_deleted > 0 {
            tracing::info!(
                delivery_logs_deleted = self.delivery_logs_deleted,
                event_lines_removed = self.event_lines_removed,
                reports_deleted = self.reports_deleted,
                "retention sweep removed expired personal data"
            );
        }
        for problem in &self.problems {
            tracing::warn!(problem = %problem, "retention sweep: left for the next sweep");
        }
    }

    fn problem(&mut self, path: &Path, e: impl std::fmt::Display) {
        self.problems.push(format!("{}: {e}", path.display()));
    }
}

/// Runs [`sweep`] now and every [`SWEEP_INTERVAL`] until `stop` is cancelled.
pub fn spawn(retention: Retention, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let r = retention.clone();
            match tokio::task::spawn_blocking(move || sweep(&r, crate::envelope::now_ms())).await {
                Ok(report) => report.log(),
                Err(e) => tracing::error!(error = %e, "the retention sweep task failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    })
}

/// Removes what is past its time at `now_ms` (Unix milliseconds); see the module doc.
pub fn sweep(r: &Retention, now_ms: u64) -> SweepReport {
    let mut report = SweepReport::default();
    if let Some(log) = &r.delivery_log {
        sweep_delivery_log(log, r.delivery_log_days, now_ms, &mut report);
    }
    let cutoff = now_ms.saturating_sub(u64::from(r.event_log_days) * DAY_MS);
    sweep_event_logs(&r.spool.join("events"), cutoff, &mut report);
    sweep_reports(&r.spool.join("complaints/malformed"), cutoff, &mut report);
    sweep_reports(&r.spool.join("bounces/kept-aside"), cutoff, &mut report);
    report
}

/// Deletes the day files of `log` whose every line is older than `days`, and the undated
/// log of old when it was last written before that.
fn sweep_delivery_log(log: &Path, days: u32, now_ms: u64, report: &mut SweepReport) {
    let dir = log_dir(log);
    let cutoff = now_ms.saturating_sub(u64::from(days) * DAY_MS);
    for (path, name) in files(dir, report) {
        let expired = match dated_day(log, &name) {
            // The file of day D holds lines up to D+1 00:00 UTC.
            Some(day) => (day + 1) * DAY_MS <= cutoff,
            None if path == log => modified_ms(&path).is_some_and(|t| t < cutoff),
            None => false,
        };
        if expired {
            match std::fs::remove_file(&path) {
                Ok(()) => report.delivery_logs_deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report.problem(&path, e),
            }
        }
    }
}

/// Trims every event log with addresses to the lines at or after `cutoff`.
fn sweep_event_logs(dir: &Path, cutoff: u64, report: &mut SweepReport) {
    for (path, name) in files(dir, report) {
        if !name.ends_with(".jsonl") || ADDRESS_FREE_EVENT_LOGS.contains(&name.as_str()) {
            continue;
        }
        match super::jsonl::rewrite(&path, |line| !older_than(line, cutoff)) {
            Ok(n) => report.event_lines_removed += n,
            Err(e) => report.problem(&path, e),
        }
    }
}

/// A JSON line whose `time_ms` is before `cutoff` (a line without one is not).
fn older_than(line: &[u8], cutoff: u64) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("time_ms").and_then(serde_json::Value::as_u64))
        .is_some_and(|t| t < cutoff)
}

/// Deletes the kept-aside reports last written before `cutoff`.
fn sweep_reports(dir: &Path, cutoff: u64, report: &mut SweepReport) {
    for (path, _) in files(dir, report) {
        if modified_ms(&path).is_some_and(|t| t < cutoff) {
            match std::fs::remove_file(&path) {
                Ok(()) => report.reports_deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report.problem(&path, e),
            }
        }
    }
}

/// The regular files of `dir` with their names (none when it does not exist).
pub(crate) fn files(dir: &Path, report: &mut SweepReport) -> Vec<(PathBuf, String)> {
    match list_files(dir) {
        Ok(list) => list,
        Err(e) => {
            report.problem(dir, e);
            Vec::new()
        }
    }
}

/// The regular files of `dir` with their names, sorted (empty when `dir` does not exist).
pub(crate) fn list_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((entry.path(), name));
        }
    }
    out.sort();
    Ok(out)
}

/// When `path` was last written, in Unix milliseconds.
fn modified_ms(path: &Path) -> Option<u64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

// ---- day files ---------------------------------------------------------------------------

/// The directory of the delivery log `log`.
fn log_dir(log: &Path) -> &Path {
    match log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The stem and the extension (with its dot, or empty) the day files of `log` are named by.
fn name_parts(log: &Path) -> (String, String) {
    let stem = log
        .file_stem()
        .map_or_else(|| "delivery".into(), |s| s.to_string_lossy().into_owned());
    let ext = log
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    (stem, ext)
}

/// The file of UTC day `day` (days since 1970-01-01) of the delivery log configured as
/// `log`: `log/delivery.jsonl` → `log/delivery-2026-11-21.jsonl`.
pub fn day_file(log: &Path, day: u64) -> PathBuf {
    let (stem, ext) = name_parts(log);
    log_dir(log).join(format!("{stem}-{}{ext}", date(day)))
}

/// The UTC day of a file name of `log`'s day files (`None` for any other name).
fn dated_day(log: &Path, name: &str) -> Option<u64> {
    let (stem, ext) = name_parts(log);
    let date = name.strip_prefix(&stem)?.strip_prefix('-')?;
    parse_date(date.strip_suffix(ext.as_str())?)
}

/// `YYYY-MM-DD` of UTC day `day` (days since 1970-01-01).
pub fn date(day: u64) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day of a `YYYY-MM-DD` date from 1970 on; `None` for anything else.
fn parse_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let day = days_from_civil(i64::from(y), m, d);
    // Out-of-range months and days do not survive the round trip.
    (day >= 0 && civil_from_days(day) == (i64::from(y), m, d)).then_some(day as u64)
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to the given date (the inverse of [`civil_from_days`] for valid
/// dates).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_day_file_names() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_778), "2026-11-21");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(parse_date("2026-11-21"), Some(20_778));
        for day in (0..80_000).step_by(7) {
            assert_eq!(parse_date(&date(day)), Some(day));
        }
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-01",
            "+026-01-01",
            "1969-12-31",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        let log = Path::new("spool/log/delivery.jsonl");
        assert_eq!(
            day_file(log, 20_778),
            Path::new("spool/log/delivery-2026-11-21.jsonl")
        );
        assert_eq!(
            day_file(Path::new("deliveries"), 0),
            Path::new("./deliveries-1970-01-01")
        );
        assert_eq!(dated_day(log, "delivery-2026-11-21.jsonl"), Some(20_778));
        assert_eq!(dated_day(log, "delivery-2026-11-21.json"), None);
        assert_eq!(dated_day(log, "other-2026-11-21.jsonl"), None);
        assert_eq!(dated_day(log, "delivery.jsonl"), None);
    }

    fn set_age(path: &Path, now_ms: u64, age_days: u64) {
        let at = UNIX_EPOCH + Duration::from_millis(now_ms - age_days * DAY_MS);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(at).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        list_files(dir)
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    #[test]
    fn a_sweep_removes_exactly_what_is_past_its_time() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        let log = spool.join("log/delivery.jsonl");
        std::fs::create_dir_all(spool.join("log")).unwrap();
        std::fs::create_dir_all(spool.join("events")).unwrap();
        std::fs::create_dir_all(spool.join("complaints/malformed")).unwrap();
        // noon on 2026-11-21
        let today = 20_778;
        let now = today * DAY_MS + DAY_MS / 2;
        for back in [0, 1, 30, 31, 400] {
            std::fs::write(day_file(&log, today - back), "{}\n").unwrap();
        }
        std::fs::write(spool.join("log/notes.txt"), "x").unwrap();
        std::fs::write(spool.join("log/delivery-2026-13-01.jsonl"), "x").unwrap();
        // the undated log of old, last written 31 days ago
        std::fs::write(&log, "{}\n").unwrap();
        set_age(&log, now, 31);

        let day = DAY_MS;
        let lines = format!(
            "{{\"time_ms\":{},\"address\":\"old@example.net\"}}\n\
             {{\"time_ms\":{},\"address\":\"recent@example.net\"}}\n\
             {{\"address\":\"undated@example.net\"}}\n\
             not json\n\
             {{\"time_ms\":{},\"address\":\"edge@example.net\"}}\n",
            now - 91 * day,
            now - 89 * day,
            now - 90 * day
        );
        std::fs::write(spool.join("events/unsubscribes.jsonl"), &lines).unwrap();
        std::fs::write(spool.join("events/complaints.jsonl"), &lines).unwrap();
        std::fs::write(spool.join("events/freezes.jsonl"), &lines).unwrap();
        std::fs::write(spool.join("events/notes.txt"), &lines).unwrap();
        for (name, age) in [("old.eml", 91), ("young.eml", 89)] {
            let p = spool.join("complaints/malformed").join(name);
            std::fs::write(&p, "From: x\r\n\r\nhi").unwrap();
            set_age(&p, now, age);
        }

        let r = Retention {
            spool: spool.clone(),
            delivery_log: Some(log.clone()),
            delivery_log_days: 30,
            event_log_days: 90,
        };
        let report = sweep(&r, now);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            names(&spool.join("log")),
            [
                "delivery-2026-10-22.jsonl", // 30 days back: its last line is 29.5 days old
                "delivery-2026-11-20.jsonl",
                "delivery-2026-11-21.jsonl",
                "delivery-2026-13-01.jsonl",
                "notes.txt",
            ]
        );
        assert_eq!(report.delivery_logs_deleted, 3);
        let kept = "{\"time_ms\":".to_string();
        for name in ["unsubscribes.jsonl", "complaints.jsonl"] {
            let text = std::fs::read_to_string(spool.join("events").join(name)).unwrap();
            assert!(!text.contains("old@"), "{text}");
            assert!(text.contains("recent@") && text.contains("undated@"));
            assert!(
                text.contains("not json") && text.contains("edge@"),
                "{text}"
            );
            assert!(text.starts_with(&kept));
        }
        assert_eq!(report.event_lines_removed, 2);
        for name in ["freezes.jsonl", "notes.txt"] {
            let text = std::fs::read_to_string(spool.join("events").join(name)).unwrap();
            assert_eq!(text, lines, "{name} is left alone");
        }
        assert_eq!(names(&spool.join("complaints/malformed")), ["young.eml"]);
        assert_eq!(report.reports_deleted, 1);

        // a second sweep finds nothing more; a missing directory is no problem
        let again = sweep(&r, now);
        assert_eq!(again, SweepReport::default());
        let empty = Retention {
            spool: tmp.path().join("nothing"),
            delivery_log: Some(tmp.path().join("nothing/log/delivery.jsonl")),
            ..r
        };
        assert_eq!(sweep(&empty, now), SweepReport::default());
    }
}
