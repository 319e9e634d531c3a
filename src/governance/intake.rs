//! What every address of the relay that takes mail from strangers shares (the feedback
//! address, the return paths): an hourly cap per client address ([`HourlyCap`]), and a
//! directory where mail that cannot be used is kept aside for an operator, bounded in
//! files and octets so that it cannot fill the disk ([`KeptAside`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses whose counts are remembered at most.
const MAX_RATE_CLIENTS: usize = 65_536;
/// How often a kept-aside directory's totals are counted afresh (the retention sweep
/// deletes old files behind our back).
const ASIDE_RECOUNT: Duration = Duration::from_secs(60);

/// Messages taken per client address (IPv6: its /64) in fixed one-hour windows.
#[derive(Debug)]
pub struct HourlyCap {
    pub max: u32,
    window: Mutex<RateWindow>,
}

#[derive(Debug, Default)]
struct RateWindow {
    started: Option<Instant>,
    counts: HashMap<IpAddr, u32>,
}

impl HourlyCap {
    pub fn new(max: u32) -> HourlyCap {
        HourlyCap {
            max,
            window: Mutex::default(),
        }
    }

    /// Whether one more may come from `client` this hour (counts it when yes).
    pub fn admit(&self, client: IpAddr) -> bool {
        let key = crate::policy::client_key(client);
        let now = Instant::now();
        let mut rate = self.window.lock().expect("rate window lock");
        if rate
            .started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(3600))
        {
            rate.started = Some(now);
            rate.counts.clear();
        }
        if !rate.counts.contains_key(&key) && rate.counts.len() >= MAX_RATE_CLIENTS {
            // So many clients in one hour is a flood of its own: newcomers wait.
            return false;
        }
        let n = rate.counts.entry(key).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }
}

/// A directory of kept-aside messages (`<time>-<random>.eml`, mode 0600, fsynced), at
/// most `max_files` files and `max_bytes` octets.
#[derive(Debug)]
pub struct KeptAside {
    pub dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    usage: Mutex<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    counted: Option<Instant>,
    files: usize,
    bytes: u64,
}

impl KeptAside {
    pub fn new(dir: &Path, max_files: usize, max_bytes: u64) -> KeptAside {
        KeptAside {
            dir: dir.to_path_buf(),
            max_files,
            max_bytes,
            usage: Mutex::default(),
        }
    }

    /// Writes `raw` to a new file; `None` when the directory is full.
    pub fn store(&self, raw: &[u8]) -> std::io::Result<Option<PathBuf>> {
        let dir = &self.dir;
        crate::files::private_dir(dir)?;
        let mut usage = self.usage.lock().expect("kept-aside lock");
        if usage.counted.is_none_or(|t| t.elapsed() >= ASIDE_RECOUNT) {
            let (files, bytes) = std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()));
            *usage = Usage {
                counted: Some(Instant::now()),
                files,
                bytes,
            };
        }
        if usage.files >= self.max_files || usage.bytes + raw.len() as u64 > self.max_bytes {
            return Ok(None);
        }
        let path = dir.join(format!(
            "{}-{:016x}.eml",
            crate::envelope::now_ms(),
            rand::random::<u64>()
        ));
        crate::files::write_new(&path, raw)?;
        usage.files += 1;
        usage.bytes += raw.len() as u64;
        Ok(Some(path))
    }
}
