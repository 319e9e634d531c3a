//! Workbooks (`.xlsx`, `.xlsm`, `.xls`, `.ods`) through calamine: every worksheet in
//! order, the address column found by its header (or a sheet's only column), `.xlsx` read
//! cell by cell so a stray far-away cell cannot make calamine allocate a whole grid, and
//! every calamine call guarded so a damaged file is an error, not a panic.

use std::any::Any;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use calamine::{Data, Reader, Sheets};

use super::{
    ImportError, Item, PROGRESS_ROWS, address_or_invalid, find_address_column, read_error,
};

pub(super) fn read_workbook(
    path: &Path,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    match guarded(path, || calamine::open_workbook_auto(path))? {
        Ok(mut workbook) => read_sheets(path, &mut workbook, sink, progress),
        Err(first) => match reopen_by_content(path)? {
            Some(mut workbook) => read_sheets(path, &mut workbook, sink, progress),
            None => Err(ImportError::Workbook {
                path: path.to_owned(),
                source: first,
            }),
        },
    }
}

/// Web applications often export an .xlsx file under an .xls name (or the reverse); when
/// the reader the extension chose fails, try the one the file's first octets point to.
fn reopen_by_content(path: &Path) -> Result<Option<Sheets<BufReader<File>>>, ImportError> {
    let mut magic = [0u8; 8];
    let read = File::open(path)
        .and_then(|f| f.take(8).read(&mut magic))
        .map_err(read_error(path))?;
    let magic = magic.get(..read).unwrap_or_default();
    guarded(path, || {
        if magic.starts_with(b"PK\x03\x04") {
            calamine::open_workbook(path)
                .map(Sheets::Xlsx)
                .or_else(|_| calamine::open_workbook(path).map(Sheets::Ods))
                .ok()
        } else if magic.starts_with(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1") {
            calamine::open_workbook(path).map(Sheets::Xls).ok()
        } else {
            None
        }
    })
}

/// Where a workbook read is, across its sheets, for progress and the result.
#[derive(Default)]
struct Counts {
    /// Rows handed to the sink.
    rows: u64,
    /// Rows of the sheets before the current one.
    before: u64,
    /// When progress was last reported (in rows).
    reported: u64,
}

fn read_sheets<RS: Read + Seek>(
    path: &Path,
    workbook: &mut Sheets<RS>,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImportError> {
    let names: Vec<String> = workbook
        .sheets_metadata()
        .iter()
        .filter(|sheet| sheet.typ == calamine::SheetType::WorkSheet)
        .map(|sheet| sheet.name.clone())
        .collect();
    let mut count = Counts::default();
    let mut any_data = false;
    for name in names {
        let mut sheet = match &mut *workbook {
            Sheets::Xlsx(xlsx) => Sheet::Xlsx(xlsx),
            other => {
                let range = guarded(path, || other.worksheet_range(&name))?.map_err(|source| {
                    ImportError::Sheet {
                        path: path.to_owned(),
                        sheet: name.clone(),
                        source,
                    }
                })?;
                Sheet::Loaded(range)
            }
        };
        any_data |= read_sheet(path, &name, &mut sheet, &mut count, sink, progress)?;
    }
    if !any_data {
        return Err(ImportError::EmptyWorkbook {
            path: path.to_owned(),
        });
    }
    progress(count.before, count.before);
    Ok(count.rows)
}

/// A worksheet to read. `.xlsx` sheets are streamed cell by cell: calamine's
/// `worksheet_range` makes a dense grid from the first to the last used cell, so one stray
/// value in cell XFD1048576 would ask for 17 billion cells. The other formats are loaded
/// by calamine whole anyway.
enum Sheet<'w, RS> {
    Loaded(calamine::Range<Data>),
    Xlsx(&'w mut calamine::Xlsx<RS>),
}

impl<RS: Read + Seek> Sheet<'_, RS> {
    /// A fresh pass over the rows of the sheet named `name`.
    fn rows(&mut self, path: &Path, name: &str) -> Result<SheetRows<'_, RS>, ImportError> {
        match self {
            Sheet::Loaded(range) => Ok(SheetRows::Loaded {
                start: range.start().unwrap_or_default(),
                height: range.end().map_or(0, |(row, _)| u64::from(row) + 1),
                rows: range.rows(),
                next: 0,
            }),
            Sheet::Xlsx(xlsx) => match guarded(path, || xlsx.worksheet_cells_reader(name))? {
                Ok(reader) => Ok(SheetRows::Xlsx {
                    height: u64::from(reader.dimensions().end.0) + 1,
                    reader: Some(Box::new(reader)),
                    pending: None,
                }),
                // Listed as a worksheet but is not one: nothing to read, as calamine does.
                Err(calamine::XlsxError::NotAWorksheet(_)) => Ok(SheetRows::Empty),
                Err(source) => Err(ImportError::Sheet {
                    path: path.to_owned(),
                    sheet: name.to_owned(),
                    source: calamine::Error::Xlsx(source),
                }),
            },
        }
    }
}

/// A row with content: its 0-based index and its non-blank cells (0-based column, value).
struct SheetRow {
    index: u32,
    cells: Vec<(u32, Data)>,
}

/// One pass over the rows of a sheet that have content, in sheet order.
enum SheetRows<'s, RS: Read + Seek> {
    /// A sheet with nothing to read.
    Empty,
    Loaded {
        rows: calamine::Rows<'s, Data>,
        /// Where the range starts in the sheet (row, column).
        start: (u32, u32),
        /// The index of the next row in `rows`.
        next: u32,
        height: u64,
    },
    Xlsx {
        /// `None` once the sheet is finished.
        reader: Option<Box<calamine::XlsxCellReader<'s, RS>>>,
        /// The first cell of the next row, read while looking for the end of a row.
        pending: Option<(u32, u32, Data)>,
        height: u64,
    },
}

impl<RS: Read + Seek> SheetRows<'_, RS> {
    /// Rows the sheet spans, from row 1 (a guess for `.xlsx`: its declared dimension).
    fn height(&self) -> u64 {
        match self {
            SheetRows::Empty => 0,
            SheetRows::Loaded { height, .. } | SheetRows::Xlsx { height, .. } => *height,
        }
    }

    fn next_row(&mut self, path: &Path, name: &str) -> Result<Option<SheetRow>, ImportError> {
        match self {
            SheetRows::Empty => Ok(None),
            SheetRows::Loaded {
                rows, start, next, ..
            } => {
                for row in rows.by_ref() {
                    let index = start.0.saturating_add(*next);
                    *next = next.saturating_add(1);
                    let cells: Vec<(u32, Data)> = (start.1..)
                        .zip(row)
                        .filter(|(_, cell)| !is_blank(cell))
                        .map(|(column, cell)| (column, cell.clone()))
                        .collect();
                    if !cells.is_empty() {
                        return Ok(Some(SheetRow { index, cells }));
                    }
                }
                Ok(None)
            }
            SheetRows::Xlsx {
                reader, pending, ..
            } => {
                let mut row = pending.take().map(|(index, column, value)| SheetRow {
                    index,
                    cells: vec![(column, value)],
                });
                let Some(cells) = reader.as_mut() else {
                    return Ok(row);
                };
                loop {
                    let cell = guarded(path, || cells.next_cell())?.map_err(|source| {
                        ImportError::Sheet {
                            path: path.to_owned(),
                            sheet: name.to_owned(),
                            source: calamine::Error::Xlsx(source),
                        }
                    })?;
                    let Some(cell) = cell else {
                        *reader = None;
                        return Ok(row);
                    };
                    let value = Data::from(cell.get_value().clone());
                    if is_blank(&value) {
                        continue;
                    }
                    let (index, column) = cell.get_position();
                    match &mut row {
                        None => {
                            row = Some(SheetRow {
                                index,
                                cells: vec![(column, value)],
                            });
                        }
                        Some(current) if current.index == index => {
                            current.cells.push((column, value));
                        }
                        Some(_) => {
                            *pending = Some((index, column, value));
                            return Ok(row);
                        }
                    }
                }
            }
        }
    }
}

/// Reads one sheet; returns whether it had any content.
fn read_sheet<RS: Read + Seek>(
    path: &Path,
    name: &str,
    sheet: &mut Sheet<'_, RS>,
    count: &mut Counts,
    sink: &mut dyn FnMut(Item),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<bool, ImportError> {
    let mut rows = sheet.rows(path, name)?;
    let mut height = rows.height();
    progress(count.before, count.before + height);
    let Some(header) = rows.next_row(path, name)? else {
        count.before += height;
        return Ok(false);
    };
    let headers: Vec<(u32, String)> = header
        .cells
        .iter()
        .map(|(column, cell)| (*column, cell.to_string().trim().to_owned()))
        .collect();
    let texts: Vec<&str> = headers.iter().map(|(_, text)| text.as_str()).collect();
    let mut emit = |row: &SheetRow, column: u32, height: &mut u64| {
        let cell = row.cells.iter().find(|(c, _)| *c == column).map(|(_, v)| v);
        sink(cell_item(u64::from(row.index) + 1, cell));
        count.rows += 1;
        *height = (*height).max(u64::from(row.index) + 1);
        let done = count.before + u64::from(row.index) + 1;
        if done >= count.reported + PROGRESS_ROWS {
            progress(done, count.before + *height);
            count.reported = done;
        }
    };

    if let Some(found) = find_address_column(&texts) {
        let column = headers.get(found).map_or(0, |(column, _)| *column);
        while let Some(row) = rows.next_row(path, name)? {
            emit(&row, column, &mut height);
        }
    } else {
        // No known header: usable only if the whole sheet is one column.
        let only = header.cells.first().map(|(column, _)| *column);
        let mut one_column = header.cells.len() == 1;
        while one_column && let Some(row) = rows.next_row(path, name)? {
            one_column = row.cells.iter().all(|(column, _)| Some(*column) == only);
        }
        let Some(column) = only.filter(|_| one_column) else {
            return Err(ImportError::NoAddressColumn {
                path: path.to_owned(),
                sheet: Some(name.to_owned()),
                header_line: u64::from(header.index) + 1,
                headers: headers.into_iter().map(|(_, text)| text).collect(),
            });
        };
        drop(rows);
        let mut rows = sheet.rows(path, name)?;
        if let Some(first) = rows.next_row(path, name)? {
            let is_data = first
                .cells
                .iter()
                .any(|(_, cell)| matches!(cell, Data::String(s) if s.contains('@')));
            if is_data {
                emit(&first, column, &mut height);
            }
        }
        while let Some(row) = rows.next_row(path, name)? {
            emit(&row, column, &mut height);
        }
    }
    count.before += height;
    count.reported = count.before;
    Ok(true)
}

fn is_blank(cell: &Data) -> bool {
    match cell {
        Data::Empty => true,
        Data::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn cell_item(line: u64, cell: Option<&Data>) -> Item {
    let reason = match cell {
        Some(Data::String(text)) => return address_or_invalid(line, text, "empty cell"),
        None | Some(Data::Empty) => "empty cell".to_owned(),
        Some(Data::Int(_) | Data::Float(_)) => "number cell".to_owned(),
        Some(Data::Bool(_)) => "boolean cell".to_owned(),
        Some(Data::DateTime(value)) if value.is_duration() => "duration cell".to_owned(),
        Some(Data::DateTime(_) | Data::DateTimeIso(_)) => "date/time cell".to_owned(),
        Some(Data::DurationIso(_)) => "duration cell".to_owned(),
        Some(Data::Error(error)) => format!("error cell ({error})"),
    };
    Item::Invalid { line, reason }
}

/// Runs a workbook-reader call, turning a panic on a damaged file into an error. Only
/// calamine runs inside: a panic in the caller's sink is not ours to hide.
pub(super) fn guarded<T>(path: &Path, call: impl FnOnce() -> T) -> Result<T, ImportError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| ImportError::Damaged {
        path: path.to_owned(),
        message: panic_message(payload.as_ref()),
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown error".to_owned()
    }
}
