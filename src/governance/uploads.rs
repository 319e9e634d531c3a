//! Bulk consent changes uploaded by an account: a file of addresses (CSV, or JSON lines)
//! stored as it arrives (`state/uploads/JOB.data`, 0600), then read by one worker in
//! batches of [`BATCH`] addresses, each batch granted or withdrawn through
//! [`super::consents`] (proof first, then the lists; fsynced, in force). Memory stays
//! bounded by one batch and one line, whatever the file's size; progress (lines read,
//! changed, refused, with the first refusals' line numbers) is kept for the account to
//! ask about by the job's id.
//!
//! A job survives a restart: its description (`JOB.json`) is written before it is
//! acknowledged, and on start every job whose data file is still there is run again from
//! its beginning (granting or withdrawing twice changes nothing). Finished jobs are
//! remembered for [`KEEP_FINISHED`] and their data files deleted.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::consents::Consents;
use super::ledger::{How, Proof};
use crate::consent::Origin;

/// Addresses per batch (one journal append and one ledger transaction each).
pub const BATCH: usize = 10_000;
/// Longest line read; longer lines are refused, not read into memory.
pub const MAX_LINE: usize = 4096;
/// How many refused lines a job names.
const MAX_NAMED: usize = 20;
/// Jobs remembered at most (finished ones are forgotten, oldest first, past this).
pub const MAX_LISTED: usize = 10_000;
/// How long a finished job stays listed.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One address per line, or CSV with a column named `email`, `e-mail` or `address`.
    Csv,
    /// One JSON value per line: a string, or an object with `address` or `email`.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Grant,
    Withdraw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
}

/// A job, as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub account: String,
    pub list: String,
    pub action: Action,
    pub format: Format,
    /// The name the account gave the file (recorded in each proof).
    pub name: String,
    /// The key that uploaded it.
    pub key_id: String,
    pub bytes: u64,
    pub created_ms: u64,
    pub state: State,
    pub lines: u64,
    pub changed: u64,
    pub refused: u64,
    /// Line numbers and reasons of the first refused lines (never the address).
    pub refusals: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl Job {
    /// A job just uploaded with `key` (for its account), queued, nothing read yet.
    pub fn queued(
        id: String,
        key: &super::account_keys::KeyInfo,
        list: &str,
        action: Action,
        format: Format,
        name: String,
        bytes: u64,
    ) -> Job {
        Job {
            id,
            account: key.account.clone(),
            list: list.to_string(),
            action,
            format,
            name,
            key_id: key.id.clone(),
            bytes,
            created_ms: crate::envelope::now_ms(),
            state: State::Queued,
            lines: 0,
            changed: 0,
            refused: 0,
            refusals: Vec::new(),
            error: None,
            finished_ms: None,
        }
    }
}

pub struct Uploads {
    dir: PathBuf,
    consents: Arc<Consents>,
    jobs: Mutex<Vec<Job>>,
    queue: Mutex<VecDeque<String>>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").field("dir", &self.dir).finish()
    }
}

impl Uploads {
    /// Opens `dir` (created 0700): jobs left unfinished are queued again, finished ones
    /// older than [`KEEP_FINISHED`] forgotten.
    pub fn open(dir: &Path, consents: Arc<Consents>) -> std::io::Result<Uploads> {
        crate::files::private_dir(dir)?;
        let mut jobs = Vec::new();
        let mut queue = VecDeque::new();
        let now = crate::envelope::now_ms();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(mut job) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
            else {
                tracing::warn!(path = %path.display(), "unreadable upload job description removed");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let data = dir.join(format!("{}.data", job.id));
            match job.finished_ms {
                Some(t) if now.saturating_sub(t) > KEEP_FINISHED.as_millis() as u64 => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Some(_) => {}
                None if data.exists() => {
                    job.state = State::Queued;
                    queue.push_back(job.id.clone());
                }
                None => {
                    job.state = State::Failed;
                    job.error = Some("the uploaded file was lost before it was read".into());
                    job.finished_ms = Some(now);
                }
            }
            jobs.push(job);
        }
        jobs.sort_by_key(|j| j.created_ms);
        Ok(Uploads {
            dir: dir.to_path_buf(),
            consents,
            jobs: Mutex::new(jobs),
            queue: Mutex::new(queue),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// A fresh job id (the data file is then written at [`Uploads::data_path`]).
    pub fn new_id() -> String {
        let raw: [u8; 8] = rand::Rng::random(&mut rand::rng());
        data_encoding::HEXLOWER.encode(&raw)
    }

    /// Jobs of `account` not yet finished.
    pub fn pending(&self, account: &str) -> usize {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.iter()
            .filter(|j| j.account == account && j.finished_ms.is_none())
            .count()
    }

    /// Queues a job whose data file is complete; durable before it returns (blocking).
    /// Finished jobs past [`KEEP_FINISHED`], or beyond [`MAX_LISTED`] in all, are
    /// forgotten first (the oldest), so the list cannot grow without end.
    pub fn submit(&self, job: Job) -> std::io::Result<Job> {
        self.save(&job)?;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let now = crate::envelope::now_ms();
        let keep = KEEP_FINISHED.as_millis() as u64;
        let mut excess = jobs.len().saturating_sub(MAX_LISTED - 1);
        jobs.retain(|j| {
            let Some(done) = j.finished_ms else {
                return true;
            };
            let forget = now.saturating_sub(done) > keep || excess > 0;
            if forget {
                excess = excess.saturating_sub(1);
                let _ = std::fs::remove_file(self.meta_path(&j.id));
            }
            !forget
        });
        jobs.push(job.clone());
        drop(jobs);
        self.queue
            .lock()
            .expect("queue lock")
            .push_back(job.id.clone());
        self.wake.notify_one();
        Ok(job)
    }

    /// Job `id` of `account`.
    pub fn get(&self, account: &str, id: &str) -> Option<Job> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.iter()
            .find(|j| j.id == id && j.account == account)
            .cloned()
    }

    /// The jobs of `account`, newest first.
    pub fn list(&self, account: &str) -> Vec<Job> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.iter()
            .rev()
            .filter(|j| j.account == account)
            .cloned()
            .collect()
    }

    fn save(&self, job: &Job) -> std::io::Result<()> {
        super::write_state(&self.meta_path(&job.id), job)
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Option<Job> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let job = jobs.iter_mut().find(|j| j.id == id)?;
        f(job);
        Some(job.clone())
    }

    /// Runs queued jobs, one at a time, until `stop`.
    pub fn spawn_worker(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let next = me.queue.lock().expect("queue lock").pop_front();
                let Some(id) = next else {
                    tokio::select! {
                        _ = me.wake.notified() => continue,
                        _ = stop.cancelled() => return,
                    }
                };
                let worker = me.clone();
                let run = tokio::task::spawn_blocking(move || worker.run(&id));
                if run.await.is_err() {
                    tracing::error!("an upload job panicked");
                }
            }
        })
    }

    /// Reads one job's file and applies it (blocking).
    fn run(&self, id: &str) {
        let Some(job) = self.update(id, |j| j.state = State::Running) else {
            return;
        };
        let result = std::fs::File::open(self.data_path(id))
            .map_err(|e| format!("the uploaded file: {e}"))
            .and_then(|f| self.apply(&job, f));
        let finished = self
            .update(id, |j| {
                j.finished_ms = Some(crate::envelope::now_ms());
                match result {
                    Ok(()) => j.state = State::Done,
                    Err(e) => {
                        j.state = State::Failed;
                        j.error = Some(e);
                    }
                }
            })
            .expect("the job is listed");
        if let Err(e) = self.save(&finished) {
            tracing::error!(job = id, error = %e, "could not save an upload job");
        }
        let _ = std::fs::remove_file(self.data_path(id));
        crate::metrics::upload_job(state_name(finished.state));
        tracing::info!(
            job = id,
            account = %finished.account,
            list = %finished.list,
            lines = finished.lines,
            changed = finished.changed,
            refused = finished.refused,
            "upload job finished"
        );
    }

    fn apply(&self, job: &Job, file: std::fs::File) -> Result<(), String> {
        let reader = BufReader::with_capacity(64 << 10, file);
        let mut batch: Vec<String> = Vec::with_capacity(BATCH);
        let mut counts = (0u64, 0u64, Vec::new());
        let lines = read_addresses(reader, job.format, |n, found| {
            match found {
                Ok(address) => batch.push(address),
                Err(why) => refuse(&mut counts, n, &why),
            }
            if batch.len() >= BATCH {
                self.flush(job, &mut batch, &mut counts, n)?;
            }
            Ok(())
        })?;
        self.flush(job, &mut batch, &mut counts, lines)
    }

    /// Applies one batch and publishes the progress.
    fn flush(
        &self,
        job: &Job,
        batch: &mut Vec<String>,
        counts: &mut (u64, u64, Vec<String>),
        lines: u64,
    ) -> Result<(), String> {
        if !batch.is_empty() {
            let changed = batch.len() as u64;
            match job.action {
                Action::Grant => {
                    let detail = format!("{} (job {}, key {})", job.name, job.id, job.key_id);
                    let proofs = batch
                        .drain(..)
                        .map(|a| Proof::new(a, How::Upload, detail.clone()))
                        .collect();
                    self.consents
                        .grant(&job.account, &job.list, proofs, Origin::Account)
                        .map_err(|e| e.to_string())?;
                }
                Action::Withdraw => {
                    self.consents
                        .withdraw(&job.account, &job.list, batch, "upload", Origin::Account)
                        .map_err(|e| e.to_string())?;
                    batch.clear();
                }
            }
            counts.0 += changed;
        }
        let (changed, refused, named) = (counts.0, counts.1, counts.2.clone());
        self.update(&job.id, |j| {
            j.lines = lines;
            j.changed = changed;
            j.refused = refused;
            j.refusals = named;
        });
        Ok(())
    }
}

/// Reads the addresses of an uploaded file, holding one line at a time: calls `each` with
/// the number of every line that names an address and the address (normalised) or why the
/// line is refused (never the address itself); blank lines and a CSV header are skipped.
/// Stops at the first error `each` returns; returns the number of lines read.
pub fn read_addresses<R: BufRead>(
    reader: R,
    format: Format,
    mut each: impl FnMut(u64, Result<String, String>) -> Result<(), String>,
) -> Result<u64, String> {
    let mut lines = Lines::new(reader);
    let mut column: Option<usize> = None;
    let mut n = 0u64;
    while let Some(line) = lines.next_line().map_err(|e| e.to_string())? {
        n += 1;
        let found = match line {
            Line::TooLong => Err(format!("longer than {MAX_LINE} octets")),
            Line::Text(text) => match format {
                Format::Csv => csv_address(&text, n == 1, &mut column),
                Format::Jsonl => jsonl_address(&text),
            },
        };
        let address = match found {
            Ok(None) => continue,
            Ok(Some(a)) => crate::consent::key::normalise(&a).map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        each(n, address)?;
    }
    Ok(n)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Queued => "queued",
        State::Running => "running",
        State::Done => "done",
        State::Failed => "failed",
    }
}

fn refuse(counts: &mut (u64, u64, Vec<String>), line: u64, why: &str) {
    counts.1 += 1;
    if counts.2.len() < MAX_NAMED {
        counts.2.push(format!("line {line}: {why}"));
    }
}

/// The address of one CSV line: the header's address column when the first line names
/// one, else the first field. `Ok(None)`: a blank line or the header.
fn csv_address(
    text: &str,
    first: bool,
    column: &mut Option<usize>,
) -> Result<Option<String>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let Some(record) = reader.records().next() else {
        return Ok(None);
    };
    let record = record.map_err(|e| format!("not CSV: {e}"))?;
    if first {
        let named = record.iter().position(|f| {
            matches!(
                f.trim().to_ascii_lowercase().as_str(),
                "email" | "e-mail" | "address" | "email address" | "email_address"
            )
        });
        if named.is_some() {
            *column = named;
            return Ok(None);
        }
    }
    let at = column.unwrap_or(0);
    record
        .get(at)
        .map(|f| Some(f.trim().to_string()))
        .ok_or_else(|| format!("no field {}", at + 1))
}

/// The address of one JSON line: a string, or an object's `address` or `email`.
fn jsonl_address(text: &str) -> Result<Option<String>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(s)) => Ok(Some(s)),
        Ok(serde_json::Value::Object(o)) => o
            .get("address")
            .or_else(|| o.get("email"))
            .and_then(|v| v.as_str())
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| "an object without \"address\" or \"email\"".to_string()),
        Ok(_) => Err("neither a string nor an object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

enum Line {
    Text(String),
    TooLong,
}

/// Lines of at most [`MAX_LINE`] octets; longer ones are skipped without being held.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            buf: Vec::with_capacity(256),
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        self.buf.clear();
        let limit = MAX_LINE as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') && n as u64 == limit {
            // Too long: skip to the end of the line.
            loop {
                let (done, used) = {
                    let available = self.reader.fill_buf()?;
                    if available.is_empty() {
                        (true, 0)
                    } else if let Some(i) = memchr::memchr(b'\n', available) {
                        (true, i + 1)
                    } else {
                        (false, available.len())
                    }
                };
                self.reader.consume(used);
                if done {
                    return Ok(Some(Line::TooLong));
                }
            }
        }
        let text = String::from_utf8_lossy(&self.buf);
        Ok(Some(Line::Text(
            text.trim_end_matches(['\n', '\r'])
                .trim_start_matches('\u{feff}')
                .to_string(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consents(dir: &Path) -> Arc<Consents> {
        let policy = crate::policy::Policy::from_toml(
            "p",
            "[accounts.shop]\nstreams = [\"marketing\"]\nfrom_domains = [\"shop.example\"]\n\
             contact_address = \"a@shop.example\"\npostal_address = \"1 Main St\"\n\
             [accounts.shop.lists.news]\nconsent_statement = \"s\"\n",
        )
        .unwrap();
        let lists = Arc::new(crate::consent::Lists::open(&dir.join("lists"), 24).unwrap());
        let ledger =
            super::super::ledger::Ledger::open(&dir.join("state"), lists.secret().clone()).unwrap();
        Arc::new(Consents {
            lists,
            ledger: Arc::new(ledger),
            policy: Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        })
    }

    fn job(id: &str, finished_ms: Option<u64>) -> Job {
        let key = super::super::account_keys::KeyInfo::for_tests("k", "shop");
        let mut job = Job::queued(
            id.into(),
            &key,
            "news",
            Action::Grant,
            Format::Csv,
            "f.csv".into(),
            0,
        );
        if finished_ms.is_some() {
            job.state = State::Done;
            job.finished_ms = finished_ms;
        }
        job
    }

    #[test]
    fn finished_jobs_past_their_time_are_forgotten_when_another_comes() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(&dir.path().join("u"), consents(dir.path())).unwrap();
        let recent = crate::envelope::now_ms();
        uploads.submit(job("0000000000000001", Some(1))).unwrap();
        uploads
            .submit(job("0000000000000002", Some(recent)))
            .unwrap();
        uploads.submit(job("0000000000000003", None)).unwrap();
        assert!(
            uploads.get("shop", "0000000000000001").is_none(),
            "a week past: forgotten"
        );
        assert!(!uploads.meta_path("0000000000000001").exists());
        assert!(uploads.get("shop", "0000000000000002").is_some());
        assert!(uploads.get("shop", "0000000000000003").is_some());
    }

    #[test]
    fn a_job_cut_off_by_a_restart_runs_again_and_its_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let c = consents(dir.path());
        let uploads_dir = dir.path().join("state/uploads");
        {
            let uploads = Uploads::open(&uploads_dir, c.clone()).unwrap();
            let id = Uploads::new_id();
            std::fs::write(uploads.data_path(&id), "a@x.org\nnot an address\nb@x.org\n").unwrap();
            let mut job = job(&id, None);
            uploads.submit(job.clone()).unwrap();
            // As if the relay stopped mid-run: the description says running.
            job.state = State::Running;
            uploads.save(&job).unwrap();
        }
        let uploads = Uploads::open(&uploads_dir, c.clone()).unwrap();
        let queued = uploads
            .queue
            .lock()
            .unwrap()
            .pop_front()
            .expect("queued again");
        assert_eq!(uploads.get("shop", &queued).unwrap().state, State::Queued);
        uploads.run(&queued);
        let job = uploads.get("shop", &queued).unwrap();
        assert_eq!((job.state, job.changed, job.refused), (State::Done, 2, 1));
        assert!(
            job.refusals[0].starts_with("line 2: "),
            "{:?}",
            job.refusals
        );
        assert!(!uploads.data_path(&queued).exists());
        assert!(c.lists.standing("shop", Some("news"), "b@x.org").consent);
        // Finished, it stays listed after another restart, and is not run again.
        let again = Uploads::open(&uploads_dir, c).unwrap();
        assert!(again.queue.lock().unwrap().is_empty());
        assert_eq!(again.get("shop", &queued).unwrap().state, State::Done);
        assert!(again.get("other", &queued).is_none());
    }

    fn all(input: &[u8]) -> Vec<String> {
        let mut l = Lines::new(std::io::BufReader::with_capacity(16, input));
        let mut out = Vec::new();
        while let Some(line) = l.next_line().unwrap() {
            out.push(match line {
                Line::Text(t) => t,
                Line::TooLong => "<too long>".into(),
            });
        }
        out
    }

    #[test]
    fn lines_are_bounded_and_a_long_one_is_skipped_whole() {
        let mut input = b"a@x.org\r\n".to_vec();
        input.extend(vec![b'z'; MAX_LINE * 3]);
        input.extend(b"\nb@x.org");
        assert_eq!(all(&input), ["a@x.org", "<too long>", "b@x.org"]);
        assert_eq!(all(b"\xef\xbb\xbfc@x.org\n"), ["c@x.org"]);
    }

    #[test]
    fn csv_finds_the_address_column() {
        let mut col = None;
        assert_eq!(csv_address("name,Email", true, &mut col), Ok(None));
        assert_eq!(col, Some(1));
        assert_eq!(
            csv_address("\"Doe, Ann\",ann@x.org", false, &mut col),
            Ok(Some("ann@x.org".into()))
        );
        assert!(csv_address("only-one", false, &mut col).is_err());
        let mut none = None;
        assert_eq!(
            csv_address("bob@x.org", true, &mut none),
            Ok(Some("bob@x.org".into()))
        );
        assert_eq!(csv_address("  ", false, &mut none), Ok(None));
    }

    #[test]
    fn json_lines_take_strings_and_objects() {
        assert_eq!(jsonl_address("\"a@x.org\""), Ok(Some("a@x.org".into())));
        assert_eq!(
            jsonl_address("{\"email\":\"b@x.org\",\"name\":\"B\"}"),
            Ok(Some("b@x.org".into()))
        );
        assert!(jsonl_address("{\"name\":\"B\"}").is_err());
        assert!(jsonl_address("[1]").is_err());
        assert!(jsonl_address("{").is_err());
        assert_eq!(jsonl_address(""), Ok(None));
    }
}
