//! Memory figures for tests and the measuring examples (which include this file with
//! `#[path]`): a counting global allocator for the live heap and its peak, the process's
//! resident set and its peak, glibc's heap statistics, and an in-process SMTP sink every
//! route leads to that keeps nothing of what it receives.
#![allow(dead_code)] // each user takes a different part

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use optin_relay::delivery::outcome::ResolveFailure;
use optin_relay::delivery::transport::{BoxFuture, BoxStream, RouteKey, Target, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The system allocator (glibc malloc), counting the bytes held and their peak. A binary
/// that wants the figures declares `#[global_allocator] static A: Counting = Counting;`.
pub struct Counting;

/// Bytes allocated and not yet freed.
pub static HELD: AtomicUsize = AtomicUsize::new(0);
/// The highest `HELD` since the last [`reset_heap_peak`].
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = HELD.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// The peak of the live heap since the last reset.
pub fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak from the live heap now.
pub fn reset_heap_peak() {
    PEAK.store(HELD.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// glibc's `struct mallinfo2` (all arenas summed).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Mallinfo2 {
    /// Non-mmapped space allocated from the system (every arena's heap).
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    /// Space in mmapped chunks (large allocations).
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    /// Bytes in use in the arenas.
    pub uordblks: usize,
    /// Free bytes kept in the arenas (not returned to the system).
    pub fordblks: usize,
    /// Free space at the top of the main heap that trimming could release.
    pub keepcost: usize,
}

unsafe extern "C" {
    fn mallinfo2() -> Mallinfo2;
}

/// Gives free heap memory back to the system, as the relay does after a burst.
pub fn trim() {
    optin_relay::trim::give_back_memory();
}

pub fn heap() -> Mallinfo2 {
    unsafe { mallinfo2() }
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
pub fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("field present")
        * 1024
}

/// Resets the peak resident set (`VmHWM`) to the current one (Linux `clear_refs` 5).
pub fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
}

pub fn mib(bytes: impl Into<u64>) -> f64 {
    bytes.into() as f64 / (1u64 << 20) as f64
}

/// Every route leads to one in-process server that accepts everything at once, over
/// in-memory pipes; it counts the messages it took.
pub struct Sink {
    pub delivered: Arc<AtomicUsize>,
}

impl Default for Sink {
    fn default() -> Sink {
        Sink::new()
    }
}

impl Sink {
    pub fn new() -> Sink {
        Sink {
            delivered: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn count(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }
}

async fn serve(stream: tokio::io::DuplexStream, delivered: Arc<AtomicUsize>) {
    let mut io = BufReader::new(stream);
    if io.get_mut().write_all(b"220 sink\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with(b"EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with(b"DATA") {
            if io.get_mut().write_all(b"354 go\r\n").await.is_err() {
                return;
            }
            loop {
                line.clear();
                if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
            }
            delivered.fetch_add(1, Ordering::Relaxed);
            b"250 ok\r\n"
        } else if upper.starts_with(b"QUIT") {
            let _ = io.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if io.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

impl Transport for Sink {
    fn resolve<'a>(
        &'a self,
        _: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async {
            Ok(vec![Target {
                host: "sink.test".into(),
                addr: "127.0.0.1:25".parse().expect("address"),
            }])
        })
    }

    fn connect<'a>(&'a self, _: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        let delivered = self.delivered.clone();
        Box::pin(async move {
            // Small pipes: a real network's buffers are the kernel's, not the process's.
            let (ours, theirs) = tokio::io::duplex(16 << 10);
            tokio::spawn(serve(theirs, delivered));
            Ok(Box::new(ours) as BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        true
    }
}

/// Watches the resident set from a thread (every 5 ms): the peaks of its anonymous part
/// (heap, stacks) and of its file-backed part (mapped files), which `VmHWM` lumps together.
pub struct RssSampler {
    peaks: Arc<[AtomicUsize; 2]>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        let peaks: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peaks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p[0].fetch_max(status_bytes("RssAnon") as usize, Ordering::Relaxed);
                p[1].fetch_max(status_bytes("RssFile") as usize, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        RssSampler { peaks, stop }
    }

    /// (anonymous, file-backed) peaks since the start or the last reset, and resets them.
    pub fn take(&self) -> (u64, u64) {
        (
            self.peaks[0].swap(0, Ordering::Relaxed) as u64,
            self.peaks[1].swap(0, Ordering::Relaxed) as u64,
        )
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
