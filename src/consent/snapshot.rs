//! Snapshot files: an immutable, memory-mapped set of fingerprints with a tag byte each.
//!
//! This is our own small layout rather than the `bloomfilter` crate: that
//! crate keeps its bits in its own `Vec` (loading copies the whole file into every process),
//! probes k separate cache lines per lookup, and hashes through `std::hash::Hash`, which is
//! not stable across compilers. Here a lookup touches one 64-octet bloom block for the
//! common "definitely not" answer; a "maybe" is confirmed in the sorted fingerprint array
//! (through a radix directory, so a hit costs two or three more cache lines), so a member is
//! never a bloom false positive. Opening maps the file and checks the header and the length:
//! constant time whatever the size. [`Snapshot::verify`] checks the body checksum and is run
//! before a snapshot is put into service.
//!
//! Layout, little-endian throughout, every section 64-octet aligned:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `OPTINSNP` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | hash id ([`super::key::HASH_ID`]) |
//! | 16 | 8 | secret id ([`super::key::Secret::id`]) |
//! | 24 | 8 | bloom seed |
//! | 32 | 8 | entries |
//! | 40 | 8 | bloom blocks (64 octets each) |
//! | 48 | 4 | bloom probes per key (k) |
//! | 52 | 4 | directory bits |
//! | 56 | 8 | journals folded (every journal with a number up to this one) |
//! | 64 | 8 | created (Unix ms) |
//! | 72 | 4 | CRC32C of everything after the 128-octet header |
//! | 76 | 4 | CRC32C of octets 0..76 |
//!
//! then the bloom blocks, the directory (`2^bits + 1` u32: where each bucket of fingerprints,
//! by their top bits, starts), and the records sorted by fingerprint: 9 octets each, the u64
//! fingerprint and its tag octet.
//!
//! Files are written to a temporary name, fsynced and renamed: a mapped file is never
//! modified or truncated in place (that would be a SIGBUS in every reader).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::key::HASH_ID;

const MAGIC: &[u8; 8] = b"OPTINSNP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
const BLOCK: usize = 64;
/// A fingerprint (u64) and its tag octet, packed: a hit reads one cache line, not two.
const RECORD: usize = 9;
/// Entries per directory bucket aimed at.
const BUCKET_TARGET: u64 = 4;
/// The directory stores u32 positions.
pub const MAX_ENTRIES: u64 = u32::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an optin-relay snapshot (bad magic)")]
    Foreign { path: PathBuf },
    #[error(
        "{path}: snapshot format version {found} is not supported (this build reads {VERSION})"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: snapshot made with hash {found}, this build uses hash {HASH_ID}")]
    HashId { path: PathBuf, found: u32 },
    #[error(
        "{path}: snapshot made with another secret (secret id {found:016x}, ours {ours:016x}); \
         rebuild it from the source lists with this relay's secret"
    )]
    Secret {
        path: PathBuf,
        found: u64,
        ours: u64,
    },
    #[error("{path}: corrupt snapshot header (checksum mismatch)")]
    Header { path: PathBuf },
    #[error("{path}: snapshot header is inconsistent: {what}")]
    Inconsistent { path: PathBuf, what: &'static str },
    #[error("{path}: truncated snapshot: {found} octets, the header says {expected}")]
    Length {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{path}: corrupt snapshot body (checksum mismatch)")]
    Body { path: PathBuf },
    #[error("too many entries for one snapshot: {0} (at most {MAX_ENTRIES})")]
    TooMany(u64),
}

/// The parameters that fix where everything is in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    entries: u64,
    blocks: u64,
    probes: u32,
    dir_bits: u32,
}

impl Geometry {
    fn for_entries(entries: u64, bits_per_key: u32) -> Geometry {
        let bits = entries.max(1) * u64::from(bits_per_key.max(1));
        let blocks = bits.div_ceil(BLOCK as u64 * 8).max(1);
        let buckets = (entries / BUCKET_TARGET).max(1);
        let dir_bits = (64 - (buckets - 1).leading_zeros()).min(32);
        Geometry {
            entries,
            blocks,
            probes: optimal_probes(bits_per_key),
            dir_bits,
        }
    }

    fn bloom_offset(&self) -> usize {
        HEADER_LEN
    }
    fn dir_offset(&self) -> usize {
        self.bloom_offset() + self.blocks as usize * BLOCK
    }
    fn dir_len(&self) -> usize {
        ((1usize << self.dir_bits) + 1) * 4
    }
    fn records_offset(&self) -> usize {
        (self.dir_offset() + self.dir_len()).next_multiple_of(BLOCK)
    }
    fn file_len(&self) -> usize {
        self.records_offset() + self.entries as usize * RECORD
    }
}

/// The number of probes that minimises false positives for 512-bit blocks at this many
/// bits per key (13 at 24).
fn optimal_probes(bits_per_key: u32) -> u32 {
    (1..=24)
        .min_by(|&a, &b| {
            design_fp_rate(bits_per_key, a)
                .partial_cmp(&design_fp_rate(bits_per_key, b))
                .expect("finite")
        })
        .expect("non-empty range")
}

/// The expected false-positive rate of the blocked bloom layer: the number of keys in a
/// block is Poisson with mean 512 / bits_per_key, and a non-member passes when all its k
/// probes hit set bits of its block.
pub fn design_fp_rate(bits_per_key: u32, probes: u32) -> f64 {
    let bits = (BLOCK * 8) as f64;
    let lambda = bits / f64::from(bits_per_key.max(1));
    let mut p = (-lambda).exp();
    let mut rate = 0.0;
    for i in 0..400 {
        if i > 0 {
            p *= lambda / f64::from(i);
        }
        let set = 1.0 - (1.0 - 1.0 / bits).powf(f64::from(probes) * f64::from(i));
        rate += p * set.powf(f64::from(probes));
    }
    rate
}

/// Spreads a fingerprint (already uniform) with the seed into independent probe bits.
#[inline]
fn mix(mut x: u64) -> u64 {
    // The splitmix64 finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The block of a key and the 8-word mask of its probe bits.
#[inline]
fn probe(fp: u64, seed: u64, blocks: u64, probes: u32) -> (usize, [u64; 8]) {
    let h1 = mix(fp ^ seed);
    let block = ((u128::from(h1) * u128::from(blocks)) >> 64) as usize;
    let mut mask = [0u64; 8];
    let mut state = h1;
    let mut h = 0;
    let mut left = 0;
    for _ in 0..probes {
        if left == 0 {
            // Each round spends 7 probes of 9 bits from a fresh 64-bit value.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            h = mix(state);
            left = 7;
        }
        let bit = (h & 511) as usize;
        mask[bit >> 6] |= 1 << (bit & 63);
        h >>= 9;
        left -= 1;
    }
    (block, mask)
}

/// An open snapshot. Cloning is cheap (the map is shared).
#[derive(Clone)]
pub struct Snapshot {
    /// The file map, or its copy in anonymous memory ([`Snapshot::load_into_memory`]).
    map: std::sync::Arc<Mmap>,
    path: PathBuf,
    geometry: Geometry,
    seed: u64,
    folded: u64,
    created_ms: u64,
    body_crc: u32,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("entries", &self.geometry.entries)
            .field("folded", &self.folded)
            .finish()
    }
}

impl Snapshot {
    /// Maps `path` and checks its header and length (constant time). `secret_id` must be
    /// the id of the secret the fingerprints will be made with.
    pub fn open(path: &Path, secret_id: u64) -> Result<Snapshot, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let p = || path.to_path_buf();
        if len < HEADER_LEN as u64 {
            let mut head = vec![0u8; len as usize];
            std::io::Read::read_exact(&mut &file, &mut head).map_err(io)?;
            let n = head.len().min(8);
            if n == 0 || head[..n] != MAGIC[..n] {
                return Err(SnapshotError::Foreign { path: p() });
            }
            return Err(SnapshotError::Length {
                path: p(),
                found: len,
                expected: HEADER_LEN as u64,
            });
        }
        // SAFETY: snapshot files are immutable once renamed into place (writers use a new
        // file and rename), so the mapping does not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let h = &map[..HEADER_LEN];
        if &h[..8] != MAGIC {
            return Err(SnapshotError::Foreign { path: p() });
        }
        if crc32c::crc32c(&h[..76]) != le32(h, 76) {
            return Err(SnapshotError::Header { path: p() });
        }
        let version = le32(h, 8);
        if version != VERSION {
            return Err(SnapshotError::Version {
                path: p(),
                found: version,
            });
        }
        let hash = le32(h, 12);
        if hash != HASH_ID {
            return Err(SnapshotError::HashId {
                path: p(),
                found: hash,
            });
        }
        let found = le64(h, 16);
        if found != secret_id {
            return Err(SnapshotError::Secret {
                path: p(),
                found,
                ours: secret_id,
            });
        }
        let geometry = Geometry {
            entries: le64(h, 32),
            blocks: le64(h, 40),
            probes: le32(h, 48),
            dir_bits: le32(h, 52),
        };
        let inconsistent = |what| SnapshotError::Inconsistent { path: p(), what };
        if geometry.entries > MAX_ENTRIES {
            return Err(inconsistent("too many entries"));
        }
        if geometry.blocks == 0 || geometry.blocks > len / BLOCK as u64 {
            return Err(inconsistent("bloom size"));
        }
        if geometry.probes == 0 || geometry.probes > 64 {
            return Err(inconsistent("probe count"));
        }
        if geometry.dir_bits > 32 || (1u64 << geometry.dir_bits) > len {
            return Err(inconsistent("directory size"));
        }
        let expected = geometry.file_len() as u64;
        if len != expected {
            return Err(SnapshotError::Length {
                path: p(),
                found: len,
                expected,
            });
        }
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let (seed, folded, created_ms, body_crc) =
            (le64(h, 24), le64(h, 56), le64(h, 64), le32(h, 72));
        let map = std::sync::Arc::new(map);
        Ok(Snapshot {
            seed,
            folded,
            created_ms,
            body_crc,
            map,
            path: path.to_path_buf(),
            geometry,
        })
    }

    /// Checks the body checksum (reads the whole file once). Also checks that the
    /// directory is consistent with the entry count, so lookups cannot index out of range.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        if crc32c::crc32c(&self.map[HEADER_LEN..]) != self.body_crc {
            return Err(SnapshotError::Body {
                path: self.path.clone(),
            });
        }
        let dir = self.dir();
        let mut last = 0;
        for &d in dir {
            let d = u32::from_le(d);
            if d < last || u64::from(d) > self.geometry.entries {
                return Err(SnapshotError::Inconsistent {
                    path: self.path.clone(),
                    what: "directory",
                });
            }
            last = d;
        }
        if u64::from(last) != self.geometry.entries {
            return Err(SnapshotError::Inconsistent {
                path: self.path.clone(),
                what: "directory end",
            });
        }
        Ok(())
    }

    /// Copies the snapshot into anonymous memory backed by 2 MiB pages where the kernel
    /// allows (transparent huge pages), and drops the file map. Lookups touch random places
    /// of what can be gigabytes: with the file's 4 KiB pages nearly every one also misses
    /// the TLB (at 100 M entries a hit takes ~400 ns from the file map, ~260 ns from
    /// memory). Costs RAM equal to the file size and a second or so per GB, once, before
    /// the snapshot goes into service; on failure the file map keeps serving.
    pub fn load_into_memory(mut self) -> Snapshot {
        let copy = (|| -> std::io::Result<Mmap> {
            let mut anon = memmap2::MmapMut::map_anon(self.map.len())?;
            #[cfg(target_os = "linux")]
            let _ = anon.advise(memmap2::Advice::HugePage);
            anon.copy_from_slice(&self.map);
            anon.make_read_only()
        })();
        match copy {
            Ok(data) => self.map = std::sync::Arc::new(data),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "snapshot stays in the file map"
            ),
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn len(&self) -> u64 {
        self.geometry.entries
    }
    pub fn is_empty(&self) -> bool {
        self.geometry.entries == 0
    }
    /// Journals up to this number are folded into the snapshot.
    pub fn folded(&self) -> u64 {
        self.folded
    }
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }
    pub fn probes(&self) -> u32 {
        self.geometry.probes
    }
    pub fn bits_per_key(&self) -> f64 {
        (self.geometry.blocks * BLOCK as u64 * 8) as f64 / self.geometry.entries.max(1) as f64
    }

    fn dir(&self) -> &[u32] {
        let off = self.geometry.dir_offset();
        let n = self.geometry.dir_len() / 4;
        cast(&self.map[off..off + n * 4])
    }

    fn records(&self) -> &[u8] {
        &self.map[self.geometry.records_offset()..]
    }

    /// The bloom layer alone: false means certainly absent.
    #[inline]
    pub fn maybe_contains(&self, fp: u64) -> bool {
        let (block, mask) = probe(fp, self.seed, self.geometry.blocks, self.geometry.probes);
        let off = HEADER_LEN + block * BLOCK;
        let words: &[u64] = cast(&self.map[off..off + BLOCK]);
        let mut ok = true;
        for i in 0..8 {
            ok &= u64::from_le(words[i]) & mask[i] == mask[i];
        }
        ok
    }

    /// The tag octet stored with `fp`, or 0 when `fp` is not in the snapshot.
    #[inline]
    pub fn get(&self, fp: u64) -> u8 {
        // The directory entry is prefetched while the bloom block is tested, so the two
        // cache misses of a hit overlap; a miss does not wait for the prefetch.
        self.prefetch_bucket(fp);
        if !self.maybe_contains(fp) {
            return 0;
        }
        let (lo, hi) = self.bucket(fp);
        let records = &self.records()[lo * RECORD..hi * RECORD];
        for r in records.chunks_exact(RECORD) {
            let (key, tag) = r.split_at(8);
            if u64::from_le_bytes(key.try_into().expect("8 octets")) == fp {
                return tag[0];
            }
        }
        0
    }

    #[inline]
    fn prefetch_bucket(&self, fp: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let entry = &self.dir()[bucket_of(fp, self.geometry.dir_bits)];
            // SAFETY: a prefetch is only a hint; the pointer is in bounds anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (entry as *const u32).cast(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fp;
    }

    /// The range of records whose fingerprints share the top bits of `fp`.
    #[inline]
    fn bucket(&self, fp: u64) -> (usize, usize) {
        let bucket = bucket_of(fp, self.geometry.dir_bits);
        let dir = self.dir();
        let entries = self.geometry.entries as usize;
        let hi = (u32::from_le(dir[bucket + 1]) as usize).min(entries);
        let lo = (u32::from_le(dir[bucket]) as usize).min(hi);
        (lo, hi)
    }

    /// Every (fingerprint, tag) in order, for compaction.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.records()[..self.geometry.entries as usize * RECORD]
            .chunks_exact(RECORD)
            .map(|r| {
                (
                    u64::from_le_bytes(r[..8].try_into().expect("8 octets")),
                    r[8],
                )
            })
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 octets"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 octets"))
}

/// Views aligned little-endian octets as words. Sections are 64-octet aligned in a
/// page-aligned map, so the prefix and suffix are always empty.
fn cast<T: Word>(bytes: &[u8]) -> &[T] {
    // SAFETY: u32 and u64 have no invalid bit patterns.
    let (pre, words, post) = unsafe { bytes.align_to::<T>() };
    assert!(
        pre.is_empty() && post.is_empty(),
        "misaligned snapshot section"
    );
    words
}

/// Plain integer types that may be read from raw octets.
trait Word: Copy {}
impl Word for u32 {}
impl Word for u64 {}

/// What [`write`] produced.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes a snapshot of `entries` (sorted by fingerprint, unique, tags non-zero), made at
/// `created_ms`, to `path`: a temporary file in the same directory, fsynced, renamed over
/// `path`, and the directory fsynced.
pub fn write(
    path: &Path,
    secret_id: u64,
    folded: u64,
    bits_per_key: u32,
    created_ms: u64,
    fps: &[u64],
    tags: &[u8],
) -> Result<Written, SnapshotError> {
    assert_eq!(fps.len(), tags.len());
    debug_assert!(
        fps.windows(2).all(|w| w[0] < w[1]),
        "fingerprints must be sorted"
    );
    let entries = fps.len() as u64;
    if entries > MAX_ENTRIES {
        return Err(SnapshotError::TooMany(entries));
    }
    let g = Geometry::for_entries(entries, bits_per_key);
    let seed: u64 = loop {
        let s = rand::random::<u64>();
        if s != 0 {
            break s;
        }
    };
    let mut bloom = vec![0u64; g.blocks as usize * 8];
    for &fp in fps {
        let (block, mask) = probe(fp, seed, g.blocks, g.probes);
        for (w, m) in bloom[block * 8..block * 8 + 8].iter_mut().zip(mask) {
            *w |= m;
        }
    }
    let buckets = 1usize << g.dir_bits;
    let mut dir = vec![0u32; buckets + 1];
    {
        let mut i = 0usize;
        for (b, slot) in dir.iter_mut().enumerate().take(buckets) {
            *slot = i as u32;
            while i < fps.len() && bucket_of(fps[i], g.dir_bits) == b {
                i += 1;
            }
        }
        dir[buckets] = fps.len() as u32;
    }

    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Written beside the old snapshot and renamed over it once whole (see AtomicFile).
    let mut atomic = crate::files::AtomicFile::create(path).map_err(io)?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, atomic.file());
        let mut crc = 0u32;
        let mut body =
            |out: &mut BufWriter<&mut File>, bytes: &[u8]| -> Result<(), SnapshotError> {
                crc = crc32c::crc32c_append(crc, bytes);
                out.write_all(bytes).map_err(io)
            };
        // The body first (to learn its checksum), then the header is written in place.
        out.write_all(&[0u8; HEADER_LEN]).map_err(io)?;
        for chunk in bloom.chunks(8192) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|w| w.to_le_bytes()).collect();
            body(&mut out, &bytes)?;
        }
        for chunk in dir.chunks(16384) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|w| w.to_le_bytes()).collect();
            body(&mut out, &bytes)?;
        }
        let pad = g.records_offset() - (g.dir_offset() + g.dir_len());
        body(&mut out, &vec![0u8; pad])?;
        for (fps, tags) in fps.chunks(8192).zip(tags.chunks(8192)) {
            let mut bytes = Vec::with_capacity(fps.len() * RECORD);
            for (fp, tag) in fps.iter().zip(tags) {
                bytes.extend_from_slice(&fp.to_le_bytes());
                bytes.push(*tag);
            }
            body(&mut out, &bytes)?;
        }
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&HASH_ID.to_le_bytes());
        h[16..24].copy_from_slice(&secret_id.to_le_bytes());
        h[24..32].copy_from_slice(&seed.to_le_bytes());
        h[32..40].copy_from_slice(&g.entries.to_le_bytes());
        h[40..48].copy_from_slice(&g.blocks.to_le_bytes());
        h[48..52].copy_from_slice(&g.probes.to_le_bytes());
        h[52..56].copy_from_slice(&g.dir_bits.to_le_bytes());
        h[56..64].copy_from_slice(&folded.to_le_bytes());
        h[64..72].copy_from_slice(&created_ms.to_le_bytes());
        h[72..76].copy_from_slice(&crc.to_le_bytes());
        let hcrc = crc32c::crc32c(&h[..76]);
        h[76..80].copy_from_slice(&hcrc.to_le_bytes());
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&h).map_err(io)?;
    }
    atomic.commit().map_err(io)?;
    Ok(Written {
        entries,
        bytes: g.file_len() as u64,
    })
}

/// Rewrites the journals-folded field of a snapshot file not yet in service (a copy being
/// adopted from another node, whose journals are numbered differently), with its header
/// checksum, and fsyncs it. The body and its checksum are untouched.
pub fn refold(path: &Path, folded: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut h = [0u8; HEADER_LEN];
    file.read_exact(&mut h)?;
    if &h[..8] != MAGIC || crc32c::crc32c(&h[..76]) != le32(&h, 76) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a whole snapshot header",
        ));
    }
    h[56..64].copy_from_slice(&folded.to_le_bytes());
    let hcrc = crc32c::crc32c(&h[..76]);
    h[76..80].copy_from_slice(&hcrc.to_le_bytes());
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&h)?;
    file.sync_all()
}

fn bucket_of(fp: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (fp >> (64 - bits)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: u64 = 0x5ec2e7;

    fn build(dir: &Path, mut keys: Vec<u64>) -> Snapshot {
        keys.sort_unstable();
        keys.dedup();
        let tags: Vec<u8> = keys.iter().map(|k| (k % 7) as u8 + 1).collect();
        let path = dir.join("snapshot");
        write(
            &path,
            SECRET,
            3,
            crate::config::DEFAULT_BLOOM_BITS_PER_KEY,
            crate::envelope::now_ms(),
            &keys,
            &tags,
        )
        .unwrap();
        let s = Snapshot::open(&path, SECRET).unwrap();
        s.verify().unwrap();
        s
    }

    #[test]
    fn design_rate_at_24_bits_is_about_5e5() {
        assert_eq!(optimal_probes(24), 13);
        let r = design_fp_rate(24, 13);
        assert!((4e-5..6e-5).contains(&r), "{r}");
    }

    #[test]
    fn measured_false_positive_rate_matches_the_design() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u64> = (0..1_000_000u64).map(|i| mix(i ^ 0xabc)).collect();
        let s = build(dir.path(), keys);
        let probes = 4_000_000u64;
        let fp = (0..probes)
            .map(|i| mix(i ^ 0xdef0_0000_0000))
            .filter(|&k| s.maybe_contains(k))
            .count() as f64;
        let design = design_fp_rate(24, s.probes()) * probes as f64;
        // Poisson: the count lies within 5 standard deviations (plus a little for the
        // approximation of probe collisions within a block).
        let sd = design.sqrt();
        assert!(
            (fp - design).abs() < 5.0 * sd + 0.1 * design,
            "measured {fp} false positives, design {design:.1}"
        );
        for i in 0..10_000u64 {
            let k = mix(i ^ 0xdef0_0000_0000);
            if s.maybe_contains(k) {
                assert_eq!(s.get(k), 0, "the exact layer confirmed a non-member");
            }
        }
    }

    #[test]
    fn a_snapshot_loaded_into_memory_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u64> = (0..50_000u64).map(mix).collect();
        let file = build(dir.path(), keys.clone());
        let memory = file.clone().load_into_memory();
        assert!(!std::sync::Arc::ptr_eq(&file.map, &memory.map));
        for k in keys.iter().chain(&[1, 2, 3]).copied() {
            assert_eq!(file.get(k), memory.get(k));
            assert_eq!(file.get(k ^ (1 << 50)), memory.get(k ^ (1 << 50)));
        }
        assert_eq!(memory.entries().count(), keys.len());
        memory.verify().unwrap();
    }

    #[test]
    fn empty_and_tiny_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let s = build(dir.path(), vec![]);
        assert!(s.is_empty());
        assert_eq!(s.get(42), 0);
        let s = build(dir.path(), vec![u64::MAX, 0, 1 << 63]);
        assert_eq!(s.len(), 3);
        for k in [u64::MAX, 0, 1 << 63] {
            assert_ne!(s.get(k), 0);
        }
        assert_eq!(s.get(5), 0);
        assert_eq!(s.folded(), 3);
    }

    #[test]
    fn damaged_files_are_refused_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u64> = (0..10_000u64).map(mix).collect();
        build(dir.path(), keys);
        let path = dir.path().join("snapshot");
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            let p = dir.path().join("bad");
            std::fs::write(&p, bytes).unwrap();
            let err = Snapshot::open(&p, SECRET).and_then(|s| s.verify().map(|()| s));
            let text = err.expect_err(want).to_string();
            assert!(text.contains(want), "{text:?} lacks {want:?}");
            assert!(text.contains("bad"), "{text:?} names no file");
        };
        check(&good[..good.len() - 1], "truncated");
        check(&good[..100], "truncated");
        check(b"", "not an optin-relay snapshot");
        check(
            b"hello world, this is some text file\n",
            "not an optin-relay",
        );
        check(
            &[b"PK\x03\x04".as_slice(), &good[4..]].concat(),
            "bad magic",
        );
        let mut extra = good.clone();
        extra.push(0);
        check(&extra, "truncated");
        let mut h = good.clone();
        h[33] ^= 1;
        check(&h, "corrupt snapshot header");
        let mut b = good.clone();
        let n = b.len();
        b[n - 20] ^= 0x40;
        check(&b, "corrupt snapshot body");
        let err = Snapshot::open(&path, SECRET + 1).unwrap_err().to_string();
        assert!(err.contains("another secret"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn no_false_negative_and_no_false_confirmation(
            keys in proptest::collection::vec(any::<u64>(), 0..3000),
            others in proptest::collection::vec(any::<u64>(), 0..3000),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = build(dir.path(), keys.clone());
            let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
            for k in &keys {
                prop_assert!(s.maybe_contains(*k));
                prop_assert_eq!(s.get(*k), (k % 7) as u8 + 1);
            }
            for k in others.iter().filter(|k| !set.contains(k)) {
                prop_assert_eq!(s.get(*k), 0);
            }
        }
    }
}
