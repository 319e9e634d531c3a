//! Reading the lists of e-mail addresses that admins upload (`optin-relay lists import`).
//!
//! Three kinds of file, chosen by extension ([`Format::from_path`]):
//!
//! - **Text** (`.txt`, `.lst`): one address per line. Blank lines and lines starting with `#`
//!   are skipped; a UTF-8 BOM and CRLF line ends are accepted.
//! - **CSV** (`.csv`): a header row is required. The delimiter (`,`, `;` or tab — Excel in
//!   many European locales writes `;`) is guessed from the header line.
//! - **Workbooks** (`.xlsx`, `.xlsm`, `.xls`, `.ods`, read with calamine): every worksheet,
//!   in order; in each, the first non-empty row is the header.
//!
//! The address column is found by its header, compared case-insensitively and ignoring
//! spaces, `-` and `_`: the first of `email`, `emailaddress`, `mail`, `address`,
//! `recipient`, `emailaddr` present wins (so `E-Mail`, `email_address` and `Recipient` all
//! work). A worksheet without such a header is still read when it has exactly one non-empty
//! column: its first row is data if it contains `@`, a header otherwise. Any other sheet or
//! CSV file without an address column is refused, naming the headers it has.
//!
//! This module only finds the text of each address; it does not validate it. A row is
//! [`Item::Invalid`] when it has no usable address text: an empty address cell in a row that
//! has other content, a number, date, boolean or error cell, a CSV row with too few fields,
//! text that is not UTF-8, a line too long to be an address. Fully empty rows are skipped
//! silently. Line numbers are what a person sees in an editor or a spreadsheet (1-based,
//! header included), so a report can send them straight to the offending row; in workbooks
//! they restart with each sheet.
//!
//! Text and CSV files are streamed (they may be several GB), and so are `.xlsx` sheets, cell
//! by cell; calamine loads `.xls` and `.ods` files whole. Nothing here panics on bad input,
//! and a panic inside calamine on a damaged workbook is caught and returned as
//! [`ImportError::Damaged`] (the panic hook still prints it). What cannot be caught is an
//! allocation failure: calamine 0.38 sizes one buffer from the dimensions an `.xls` sheet
//! declares, so a damaged `.xls` can still abort the process.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One row of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The text of the address cell/line, trimmed; not yet validated as an address.
    Address { line: u64, text: String },
    /// A row that has no usable address cell (empty cell, number/date/bool cell, a CSV row
    /// with too few fields, a line that is not valid UTF-8 …), with a short reason.
    Invalid { line: u64, reason: String },
}

/// A file that cannot be read as a list at all. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be opened (missing, no permission, a directory).
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// Reading failed part-way.
    #[error("{path}: read failed: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The extension is not one of the [`Format`]s.
    #[error(
        "{path}: unsupported file type ({}); lists must be .txt, .lst, .csv, .xlsx, .xlsm, \
         .xls or .ods",
        describe_extension(.extension.as_deref())
    )]
    UnknownExtension {
        path: PathBuf,
        /// The extension as found (without the dot), `None` if the name has none.
        extension: Option<String>,
    },
    /// A text or CSV file in an encoding other than UTF-8 that says so with its BOM.
    #[error("{path}: the file is {encoding}; save it as UTF-8 and import it again")]
    Encoding {
        path: PathBuf,
        encoding: &'static str,
    },
    /// A CSV file with no header row: it is empty.
    #[error("{path}: the file is empty; a CSV list needs a header row naming the address column")]
    NoHeader { path: PathBuf },
    /// No header names the address column (and, in a workbook, the sheet has more than one
    /// column).
    #[error(
        "{path}: {}no address column: the header row (line {header_line}) has {}; name the \
         address column \"email\" (or e-mail, email address, mail, address, recipient){}",
        describe_sheet(.sheet.as_deref()),
        describe_headers(.headers),
        csv_hint(.sheet.as_deref(), .headers)
    )]
    NoAddressColumn {
        path: PathBuf,
        /// The worksheet, for workbooks.
        sheet: Option<String>,
        /// The line (row) of the header.
        header_line: u64,
        /// The non-empty header cells, trimmed.
        headers: Vec<String>,
    },
    /// The CSV reader failed other than by I/O.
    #[error("{path}: bad CSV: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    /// calamine cannot open the workbook (not a workbook, damaged, encrypted).
    #[error("{path}: cannot read the workbook: {source}")]
    Workbook {
        path: PathBuf,
        source: calamine::Error,
    },
    /// calamine cannot read one of the worksheets.
    #[error("{path}: sheet \"{sheet}\": cannot read: {source}")]
    Sheet {
        path: PathBuf,
        sheet: String,
        source: calamine::Error,
    },
    /// calamine panicked on the file.
    #[error("{path}: the workbook is damaged (the reader failed: {message})")]
    Damaged { path: PathBuf, message: String },
    /// No worksheet has a non-empty cell.
    #[error("{path}: the workbook has no data (no worksheet has a non-empty cell)")]
    EmptyWorkbook { path: PathBuf },
}

/// The kinds of file understood, chosen by extension (case-insensitive): .txt (also .lst),
/// .csv, .xlsx (also .xlsm), .xls, .ods
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One address per line.
    Text,
    /// Comma-, semicolon- or tab-separated values with a header row.
    Csv,
    /// A spreadsheet workbook, read with calamine's `open_workbook_auto`.
    Excel,
}

impl Format {
    /// The format of `path`, from its extension.
    pub fn from_path(path: &Path) -> Result<Format, ImportError> {
        let extension = path.extension().map(|e| e.to_string_lossy().into_owned());
        match extension.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("txt" | "lst") => Ok(Format::Text),
            Some("csv") => Ok(Format::Csv),
            Some("xlsx" | "xlsm" | "xls" | "ods") => Ok(Format::Excel),
            _ => Err(ImportError::UnknownExtension {
                path: path.to_owned(),
                extension,
            }),
        }
    }
}

/// Reads every row of `path`, calling `sink` once per data row in file order.
/// `progress(done, total)` is called now and then (at least at the end) with a measure of
/// how far the read is (bytes for text/csv, rows for workbooks) so a CLI can draw a progress
/// bar. For workbooks `total` counts the rows of the sheets loaded so far, so it can grow
/// when a later sheet is loaded. Returns the number of rows handed to `sink`.
pub fn read_file(
    path: &Path,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let format = Format::from_path(path)?;
    let open_error = |source| ImportError::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let metadata = file.metadata().map_err(open_error)?;
    if metadata.is_dir() {
        return Err(open_error(io::ErrorKind::IsADirectory.into()));
    }
    let total = metadata.len();
    match format {
        Format::Text => read_text(path, file, total, sink, progress),
        Format::Csv => read_csv(path, file, total, sink, progress),
        Format::Excel => {
            drop(file);
            workbook::read_workbook(path, sink, progress)
        }
    }
}

// ---- shared ------------------------------------------------------------------------------

/// Header names (already [`normalise_header`]ed) of the address column, preferred first.
const ADDRESS_HEADERS: [&str; 6] = [
    "email",
    "emailaddress",
    "mail",
    "address",
    "recipient",
    "emailaddr",
];

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Text and CSV files report progress about this often (in octets).
const PROGRESS_OCTETS: u64 = 1 << 20;

/// Workbooks report progress about this often (in rows).
const PROGRESS_ROWS: u64 = 4096;

/// Longest text line kept. An address is at most 254 octets; the margin allows for
/// surrounding blanks, and the cap keeps a file with no line breaks from filling memory.
const MAX_LINE: usize = 64 * 1024;

/// How much of a CSV file is looked at to guess the delimiter.
const CSV_SNIFF: u64 = 64 * 1024;

fn normalise_header(header: &str) -> String {
    header
        .trim()
        .chars()
        .filter(|c| !matches!(c, '-' | '_') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The index of the address column among `headers`, by [`ADDRESS_HEADERS`] preference.
fn find_address_column<S: AsRef<str>>(headers: &[S]) -> Option<usize> {
    let normalised: Vec<String> = headers
        .iter()
        .map(|h| normalise_header(h.as_ref()))
        .collect();
    ADDRESS_HEADERS
        .iter()
        .find_map(|wanted| normalised.iter().position(|h| h == wanted))
}

/// Byte-order marks of encodings we do not read. Windows tools ("Unicode text" in Excel
/// and Notepad) write UTF-16 with a BOM; reading it as UTF-8 would make every row invalid.
fn foreign_encoding(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        Some("UTF-16 (\"Unicode text\")")
    } else {
        None
    }
}

fn describe_extension(extension: Option<&str>) -> String {
    match extension {
        Some(e) => format!("\".{e}\""),
        None => "no extension".to_owned(),
    }
}

fn describe_sheet(sheet: Option<&str>) -> String {
    sheet.map_or_else(String::new, |s| format!("sheet \"{s}\": "))
}

fn describe_headers(headers: &[String]) -> String {
    const SHOWN: usize = 20;
    if headers.is_empty() {
        return "no names".to_owned();
    }
    let mut text = headers
        .iter()
        .take(SHOWN)
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if headers.len() > SHOWN {
        text.push_str(&format!(" and {} more", headers.len() - SHOWN));
    }
    text
}

/// A one-column CSV whose "header" looks like an address is a plain list saved as .csv.
fn csv_hint(sheet: Option<&str>, headers: &[String]) -> &'static str {
    if sheet.is_none() && headers.len() == 1 && headers.iter().any(|h| h.contains('@')) {
        "; a list of bare addresses without a header can be imported as .txt"
    } else {
        ""
    }
}

fn address_or_invalid(line: u64, text: &str, empty_reason: &str) -> Item {
    let text = text.trim();
    if text.is_empty() {
        Item::Invalid {
            line,
            reason: empty_reason.to_owned(),
        }
    } else {
        Item::Address {
            line,
            text: text.to_owned(),
        }
    }
}

fn read_error(path: &Path) -> impl Fn(io::Error) -> ImportError + '_ {
    move |source| ImportError::Read {
        path: path.to_owned(),
        source,
    }
}

// ---- text --------------------------------------------------------------------------------

fn read_text(
    path: &Path,
    file: File,
    total: u64,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let head = fill_buf_retrying(&mut reader).map_err(read_error(path))?;
    if let Some(encoding) = foreign_encoding(head) {
        return Err(ImportError::Encoding {
            path: path.to_owned(),
            encoding,
        });
    }
    progress(0, total);
    let mut buf = Vec::new();
    let (mut line, mut done, mut rows, mut next_report) = (0u64, 0u64, 0u64, PROGRESS_OCTETS);
    loop {
        // Room for the line end too.
        let (read, overflow) =
            read_line_capped(&mut reader, &mut buf, MAX_LINE + 2).map_err(read_error(path))?;
        if read == 0 {
            break;
        }
        line += 1;
        done += read;
        let mut bytes = buf.as_slice();
        if line == 1 {
            bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let item = if overflow || bytes.len() > MAX_LINE {
            Some(Item::Invalid {
                line,
                reason: format!("line longer than {MAX_LINE} octets"),
            })
        } else {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let text = text.trim();
                    (!text.is_empty() && !text.starts_with('#')).then(|| Item::Address {
                        line,
                        text: text.to_owned(),
                    })
                }
                Err(_) => Some(Item::Invalid {
                    line,
                    reason: "not UTF-8".to_owned(),
                }),
            }
        };
        if let Some(item) = item {
            sink(item);
            rows += 1;
        }
        if done >= next_report {
            progress(done, total.max(done));
            next_report = done.saturating_add(PROGRESS_OCTETS);
        }
    }
    progress(done, total.max(done));
    Ok(rows)
}

fn fill_buf_retrying<R: BufRead>(reader: &mut R) -> io::Result<&[u8]> {
    // The loop cannot return the borrow directly (a known borrow-checker limitation), so
    // retry until the call succeeds or fails for good, then borrow once more.
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    reader.fill_buf()
}

/// Reads one line (with its `\n`, if any) into `line`, keeping at most `cap` octets of it.
/// Returns the octets consumed (0 at end of file) and whether the line was cut.
fn read_line_capped<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<(u64, bool)> {
    line.clear();
    let (mut consumed, mut overflow) = (0u64, false);
    loop {
        let buf = fill_buf_retrying(reader)?;
        if buf.is_empty() {
            return Ok((consumed, overflow));
        }
        let (chunk, complete) = match memchr::memchr(b'\n', buf) {
            Some(end) => (&buf[..=end], true),
            None => (buf, false),
        };
        let room = cap.saturating_sub(line.len());
        if chunk.len() > room {
            overflow = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        consumed += used as u64;
        if complete {
            return Ok((consumed, overflow));
        }
    }
}

// ---- CSV ---------------------------------------------------------------------------------

fn read_csv(
    path: &Path,
    mut file: File,
    total: u64,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let mut head = Vec::new();
    (&mut file)
        .take(CSV_SNIFF)
        .read_to_end(&mut head)
        .map_err(read_error(path))?;
    if let Some(encoding) = foreign_encoding(&head) {
        return Err(ImportError::Encoding {
            path: path.to_owned(),
            encoding,
        });
    }
    // The csv crate does not skip a BOM; it would become part of the first header name.
    let skipped = if head.starts_with(UTF8_BOM) {
        UTF8_BOM.len() as u64
    } else {
        0
    };
    let delimiter = guess_delimiter(head.get(skipped as usize..).unwrap_or_default());
    file.seek(SeekFrom::Start(skipped))
        .map_err(read_error(path))?;
    read_csv_records(path, file, delimiter, skipped, total, sink, progress)
}

/// Reads the CSV `input` (what follows the BOM, if any: `skipped` octets).
fn read_csv_records<R: Read>(
    path: &Path,
    input: R,
    delimiter: u8,
    skipped: u64,
    total: u64,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(true)
        .buffer_capacity(64 * 1024)
        .from_reader(LineTracker::new(input));
    let csv_error = |e: csv::Error| {
        if e.is_io_error() {
            if let csv::ErrorKind::Io(source) = e.into_kind() {
                return ImportError::Read {
                    path: path.to_owned(),
                    source,
                };
            }
            // is_io_error() said it was; keep a generic error rather than panic.
            return ImportError::Read {
                path: path.to_owned(),
                source: io::Error::other("I/O error"),
            };
        }
        ImportError::Csv {
            path: path.to_owned(),
            source: e,
        }
    };

    let header = reader.byte_headers().map_err(csv_error)?.clone();
    if header.is_empty() {
        return Err(ImportError::NoHeader {
            path: path.to_owned(),
        });
    }
    let header_line = reader.get_mut().record_line(&header);
    let headers: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_owned())
        .collect();
    let Some(column) = find_address_column(&headers) else {
        return Err(ImportError::NoAddressColumn {
            path: path.to_owned(),
            sheet: None,
            header_line,
            headers: headers.into_iter().filter(|h| !h.is_empty()).collect(),
        });
    };

    progress(0, total);
    let mut record = csv::ByteRecord::new();
    let (mut rows, mut next_report) = (0u64, PROGRESS_OCTETS);
    let blank = |field: &[u8]| std::str::from_utf8(field).is_ok_and(|f| f.trim().is_empty());
    while reader.read_byte_record(&mut record).map_err(csv_error)? {
        let line = reader.get_mut().record_line(&record);
        if !record.iter().all(blank) {
            let item = match record.get(column) {
                None => Item::Invalid {
                    line,
                    reason: format!(
                        "row has {} field{}, the address is field {}",
                        record.len(),
                        if record.len() == 1 { "" } else { "s" },
                        column + 1
                    ),
                },
                Some(field) => match std::str::from_utf8(field) {
                    Ok(text) => address_or_invalid(line, text, "empty field"),
                    Err(_) => Item::Invalid {
                        line,
                        reason: "not UTF-8".to_owned(),
                    },
                },
            };
            sink(item);
            rows += 1;
        }
        let done = reader.position().byte() + skipped;
        if done >= next_report {
            progress(done, total.max(done));
            next_report = done.saturating_add(PROGRESS_OCTETS);
        }
    }
    let done = reader.position().byte() + skipped;
    progress(done, total.max(done));
    Ok(rows)
}

/// Knows on which line each CSV record starts.
///
/// `csv::Position::line` cannot be used for that: a record's position is taken just after
/// the first octet of the previous record's terminator, so after a CRLF, or after blank
/// lines, it names an earlier line (rust-csv issues 184 and 208). Its byte offset is
/// exact, though, and everything between it and the record is line-end octets. So this
/// reader, placed under the csv reader, notes every CR and LF that passes, and
/// [`LineTracker::record_line`] counts the line breaks before a record's first octet. A
/// lone CR is a line break (old Mac files; the csv reader ends records there too). Only the
/// line ends the csv reader has buffered but not yet passed are kept: at most its 64 KiB
/// buffer's worth, plus those inside the record being read.
struct LineTracker<R> {
    inner: R,
    /// Octets read so far.
    offset: u64,
    /// Offsets of the CR and LF octets not yet before a record, and whether each ends a
    /// line (a CR followed by LF does not: the LF does).
    line_ends: VecDeque<(u64, bool)>,
    /// A CR that was the last octet read: a line break unless an LF comes next.
    pending_cr: Option<u64>,
    /// Line breaks before the first of `line_ends`.
    breaks: u64,
}

impl<R: Read> LineTracker<R> {
    fn new(inner: R) -> LineTracker<R> {
        LineTracker {
            inner,
            offset: 0,
            line_ends: VecDeque::new(),
            pending_cr: None,
            breaks: 0,
        }
    }

    /// The 1-based line on which `record`, just read, starts.
    fn record_line(&mut self, record: &csv::ByteRecord) -> u64 {
        let Some(start) = record.position().map(csv::Position::byte) else {
            return self.breaks + 1;
        };
        while let Some(&(at, is_break)) = self.line_ends.front() {
            if at >= start {
                break;
            }
            self.breaks += u64::from(is_break);
            self.line_ends.pop_front();
        }
        // The rest of the previous record's line end, and blank lines.
        let mut next = start;
        while let Some(&(at, is_break)) = self.line_ends.front() {
            if at != next {
                break;
            }
            self.breaks += u64::from(is_break);
            self.line_ends.pop_front();
            next += 1;
        }
        self.breaks + 1
    }
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        let data = buf.get(..read).unwrap_or_default();
        if data.is_empty() {
            if let Some(cr) = self.pending_cr.take() {
                self.line_ends.push_back((cr, true));
            }
            return Ok(0);
        }
        for index in memchr::memchr2_iter(b'\r', b'\n', data) {
            let at = self.offset + index as u64;
            let is_lf = data.get(index) == Some(&b'\n');
            if let Some(cr) = self.pending_cr.take() {
                self.line_ends.push_back((cr, !(is_lf && cr + 1 == at)));
            }
            if is_lf {
                self.line_ends.push_back((at, true));
            } else {
                self.pending_cr = Some(at);
            }
        }
        self.offset += read as u64;
        if let Some(cr) = self.pending_cr
            && cr + 1 < self.offset
        {
            // Something other than LF followed it.
            self.line_ends.push_back((cr, true));
            self.pending_cr = None;
        }
        Ok(read)
    }
}

/// The delimiter of the first non-blank line of `head`: whichever of `,` `;` tab occurs
/// most often outside quotes (`,` on a tie or when there is none: a one-column file).
fn guess_delimiter(head: &[u8]) -> u8 {
    const CANDIDATES: [u8; 3] = [b',', b';', b'\t'];
    let mut counts = [0usize; 3];
    let (mut in_quotes, mut seen_text) = (false, false);
    for &byte in head {
        match byte {
            b'"' => in_quotes = !in_quotes,
            b'\n' if !in_quotes && seen_text => break,
            _ if in_quotes => {}
            _ => {
                if let Some(i) = CANDIDATES.iter().position(|&c| c == byte) {
                    counts[i] += 1;
                }
            }
        }
        seen_text |= !byte.is_ascii_whitespace();
    }
    let mut best = 0;
    for i in 1..CANDIDATES.len() {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    CANDIDATES[best]
}

mod workbook;

#[cfg(test)]
mod tests;
