//! Tests of the list file readers against the fixtures in tests/fixtures/lists and in-memory edge cases (delimiters, BOM, line numbers, damaged workbooks).

use super::workbook::guarded;
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lists")
        .join(name)
}

/// Reads `path`, checking the count and that progress ends complete.
fn read(path: &Path) -> Result<Vec<Item>, ImportError> {
    let mut items = Vec::new();
    let mut reports = Vec::new();
    let count = read_file(path, &mut |item| items.push(item), &mut |done, total| {
        reports.push((done, total))
    })?;
    assert_eq!(count, items.len() as u64);
    let last = reports.last().copied().expect("progress is reported");
    assert_eq!(last.0, last.1, "the last report is complete: {reports:?}");
    assert!(
        reports.iter().all(|(done, total)| done <= total),
        "{reports:?}"
    );
    Ok(items)
}

/// Writes `bytes` to a temporary file called `name` and reads it.
fn read_bytes(
    name: &str,
    bytes: &[u8],
) -> (tempfile::TempDir, PathBuf, Result<Vec<Item>, ImportError>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the test file");
    let result = read(&path);
    (dir, path, result)
}

fn items(name: &str, bytes: &[u8]) -> Vec<Item> {
    let (_dir, path, result) = read_bytes(name, bytes);
    result.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn error(name: &str, bytes: &[u8]) -> (PathBuf, ImportError) {
    let (_dir, path, result) = read_bytes(name, bytes);
    match result {
        Ok(items) => panic!("{} read as {items:?}", path.display()),
        Err(e) => {
            let message = e.to_string();
            let prefix = format!("{}: ", path.display());
            assert!(message.starts_with(&prefix), "{message}");
            (path, e)
        }
    }
}

fn address(line: u64, text: &str) -> Item {
    Item::Address {
        line,
        text: text.to_owned(),
    }
}

fn invalid(line: u64, reason: &str) -> Item {
    Item::Invalid {
        line,
        reason: reason.to_owned(),
    }
}

/// The first sheet of contacts.xlsx and contacts.xls, then sheets "More" and "Legacy".
fn workbook_items() -> Vec<Item> {
    vec![
        address(2, "alice@example.com"),
        address(3, "Bob@Example.COM"),
        address(4, "anna@bücher.example"),
        address(5, "not-an-address"),
        invalid(6, "empty cell"),
        address(8, "carol@example.org"),
        invalid(9, "number cell"),
        address(10, "alice@example.com"),
        address(1, "dave@example.net"),
        address(2, "Erin@Example.net"),
        address(2, "gina@example.net"),
    ]
}

// ---- fixtures ----

#[test]
fn text_fixture() {
    let items = read(&fixture("contacts.txt")).expect("contacts.txt");
    assert_eq!(
        items,
        vec![
            address(2, "alice@example.com"),
            address(3, "Bob@Example.COM"),
            address(4, "anna@bücher.example"),
            address(6, "not-an-address"),
            address(7, "carol@example.org"),
            address(8, "alice@example.com"),
        ]
    );
}

#[test]
fn csv_fixture() {
    let items = read(&fixture("contacts.csv")).expect("contacts.csv");
    assert_eq!(
        items,
        vec![
            address(2, "alice@example.com"),
            address(3, "Bob@Example.COM"),
            address(4, "anna@bücher.example"),
            address(5, "not-an-address"),
            invalid(7, "empty field"),
            address(9, "carol@example.org"),
            address(10, "alice@example.com"),
            invalid(11, "row has 1 field, the address is field 2"),
        ]
    );
}

#[test]
fn xlsx_fixture() {
    assert_eq!(
        read(&fixture("contacts.xlsx")).expect("contacts.xlsx"),
        workbook_items()
    );
}

#[test]
fn xls_fixture() {
    assert_eq!(
        read(&fixture("contacts.xls")).expect("contacts.xls"),
        workbook_items()
    );
}

#[test]
fn xlsx_saved_as_xls_is_read_by_content() {
    let bytes = std::fs::read(fixture("contacts.xlsx")).expect("contacts.xlsx");
    assert_eq!(items("export.xls", &bytes), workbook_items());
    assert_eq!(items("EXPORT.XLSX", &bytes), workbook_items());
}

#[test]
fn sheet_without_address_column_is_refused() {
    let path = fixture("no-address-column.xlsx");
    let e = read(&path).expect_err("no address column");
    assert!(matches!(e, ImportError::NoAddressColumn { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: sheet \"People\": no address column: the header row (line 1) has \
             \"Name\", \"Phone\"; name the address column \"email\" (or e-mail, email \
             address, mail, address, recipient)",
            path.display()
        )
    );
}

#[test]
fn empty_workbook_is_refused() {
    let path = fixture("empty.xlsx");
    let e = read(&path).expect_err("empty workbook");
    assert!(matches!(e, ImportError::EmptyWorkbook { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("{}: ", path.display())));
}

// ---- text ----

#[test]
fn text_bom_crlf_comments_and_bad_utf8() {
    let data = b"\xEF\xBB\xBFa@example.com\r\n# a comment\r\n\r\n  \t\r\n\
                 b@ex\xE4mple.com\r\n  c@example.com \r\n#@not-skipped-twice\nlast@example.com";
    assert_eq!(
        items("list.txt", data),
        vec![
            address(1, "a@example.com"),
            invalid(5, "not UTF-8"),
            address(6, "c@example.com"),
            address(8, "last@example.com"),
        ]
    );
}

#[test]
fn text_line_too_long_is_invalid_and_reading_goes_on() {
    let mut data = b"a@example.com\n".to_vec();
    data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    data.extend(b"\nb@example.com\n");
    data.extend(std::iter::repeat_n(b' ', MAX_LINE - 1));
    data.extend(b"c@example.com\r\n");
    assert_eq!(
        items("list.lst", &data),
        vec![
            address(1, "a@example.com"),
            invalid(2, "line longer than 65536 octets"),
            address(3, "b@example.com"),
            invalid(4, "line longer than 65536 octets"),
        ]
    );
}

#[test]
fn text_empty_file_has_no_rows() {
    assert_eq!(items("list.txt", b""), vec![]);
}

#[test]
fn text_progress_is_in_octets_and_grows() {
    let data: String = (0..60_000)
        .map(|i| format!("user{i}@example.com\n"))
        .collect();
    let (_dir, path, _) = read_bytes("big.txt", data.as_bytes());
    let mut reports = Vec::new();
    let rows = read_file(&path, &mut |_| {}, &mut |done, total| {
        reports.push((done, total))
    })
    .expect("big.txt");
    assert_eq!(rows, 60_000);
    let size = data.len() as u64;
    assert!(reports.len() > 2, "{reports:?}");
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
    assert_eq!(reports.last(), Some(&(size, size)));
}

#[test]
fn utf16_is_refused() {
    for name in ["list.txt", "list.csv"] {
        let (_, e) = error(name, b"\xFF\xFEe\0m\0a\0i\0l\0");
        assert!(matches!(e, ImportError::Encoding { .. }), "{e:?}");
        assert!(e.to_string().contains("UTF-16"), "{e}");
    }
}

// ---- CSV ----

#[test]
fn csv_semicolon_and_tab() {
    let semicolon = "Name;E-Mail;Ort\r\nAnna;anna@example.de;Köln, Innenstadt\r\n\
                     \"Müller, Jörg\";joerg@example.de;Bonn\r\n";
    assert_eq!(
        items("liste.csv", semicolon.as_bytes()),
        vec![
            address(2, "anna@example.de"),
            address(3, "joerg@example.de")
        ]
    );
    let tab = "name\temail address\nA, B\ta@example.com\n";
    assert_eq!(
        items("list.csv", tab.as_bytes()),
        vec![address(2, "a@example.com")]
    );
}

#[test]
fn csv_quoted_multiline_field_keeps_line_numbers() {
    let data = "email,note\n\
                a@example.com,\"first\nsecond\nthird\"\n\
                \n\
                b@example.com,\"x\"\"y\"\n\
                \"c@example.com\",\"one\r\ntwo\"\r\n\
                d@example.com,end";
    assert_eq!(
        items("list.csv", data.as_bytes()),
        vec![
            address(2, "a@example.com"),
            address(6, "b@example.com"),
            address(7, "c@example.com"),
            address(9, "d@example.com"),
        ]
    );
}

/// Hands out one octet per read, so every line end falls on a read boundary.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((&byte, rest)), Some(slot)) => {
                *slot = byte;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn csv_line_numbers_across_line_end_styles_and_read_boundaries() {
    // CRLF, a blank CRLF line, quoted CRLFs, a lone CR (old Mac) and LFs, no final EOL.
    let data: &[u8] = b"email,name\r\n\r\na@x,\"multi\r\nline\r\nname\"\r\n\rb@x,B\n\n\nc@x,C";
    let expected = vec![address(3, "a@x"), address(7, "b@x"), address(10, "c@x")];
    let path = Path::new("memory.csv");
    for one_byte in [false, true] {
        let mut got = Vec::new();
        let mut sink = |item| got.push(item);
        let total = data.len() as u64;
        let result = if one_byte {
            read_csv_records(
                path,
                OneByte(data),
                b',',
                0,
                total,
                &mut sink,
                &mut |_, _| {},
            )
        } else {
            read_csv_records(path, data, b',', 0, total, &mut sink, &mut |_, _| {})
        };
        assert_eq!(result.expect("records"), 3);
        assert_eq!(got, expected, "one octet per read: {one_byte}");
    }
    assert_eq!(
        items("mac.csv", b"email\rA@x\rB@x\r"),
        vec![address(2, "A@x"), address(3, "B@x")]
    );
}

#[test]
fn csv_bom_is_skipped() {
    assert_eq!(
        items(
            "list.csv",
            "\u{FEFF}Email;Name\nx@example.com;X\n".as_bytes()
        ),
        vec![address(2, "x@example.com")]
    );
}

#[test]
fn csv_invalid_rows() {
    let data = b"name,email,city\n\
                 Short\n\
                 ,,\n\
                 Bad,\xFF@example.com,X\n\
                 Good,ok@example.com,M\xFCnchen\n\
                 Empty,  ,Y\n";
    assert_eq!(
        items("list.csv", data),
        vec![
            invalid(2, "row has 1 field, the address is field 2"),
            invalid(4, "not UTF-8"),
            address(5, "ok@example.com"),
            invalid(6, "empty field"),
        ]
    );
}

#[test]
fn csv_header_preference() {
    let cases: [(&str, &str); 5] = [
        ("address,email\nhome,x@y\n", "x@y"),
        ("Recipient,Mail\nr@y,m@y\n", "m@y"),
        (" E_Mail Address ;E-Mail-Addr\nx@y;z@y\n", "x@y"),
        ("ID,RECIPIENT\n1,r@y\n", "r@y"),
        ("emailaddr,address\na@y,b@y\n", "b@y"),
    ];
    for (data, wanted) in cases {
        assert_eq!(
            items("list.csv", data.as_bytes()),
            vec![address(2, wanted)],
            "{data:?}"
        );
    }
}

#[test]
fn csv_missing_column_names_the_headers() {
    let (path, e) = error("list.csv", b"name,phone\nAlice,123\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: no address column: the header row (line 1) has \"name\", \"phone\"; name \
             the address column \"email\" (or e-mail, email address, mail, address, \
             recipient)",
            path.display()
        )
    );
    let (_, e) = error("list.csv", b"alice@example.com\nbob@example.com\n");
    assert!(e.to_string().ends_with("can be imported as .txt"), "{e}");
    let (_, e) = error("list.csv", b"");
    assert!(matches!(e, ImportError::NoHeader { .. }), "{e:?}");
}

#[test]
fn delimiter_guess() {
    assert_eq!(guess_delimiter(b"a,b;c,d\n"), b',');
    assert_eq!(guess_delimiter(b"\"Name, full\";E-Mail\nx,y,z,w\n"), b';');
    assert_eq!(guess_delimiter(b"\n\r\nname\temail\n"), b'\t');
    assert_eq!(guess_delimiter(b"email\n"), b',');
    assert_eq!(guess_delimiter(b""), b',');
}

// ---- files and formats ----

#[test]
fn formats_by_extension() {
    let cases = [
        ("a.txt", Format::Text),
        ("a.Lst", Format::Text),
        ("A.CSV", Format::Csv),
        ("a.xlsx", Format::Excel),
        ("a.XLSM", Format::Excel),
        ("a.xls", Format::Excel),
        ("a.ods", Format::Excel),
    ];
    for (name, format) in cases {
        assert_eq!(
            Format::from_path(Path::new(name)).ok(),
            Some(format),
            "{name}"
        );
    }
}

#[test]
fn unknown_extension_names_the_supported_ones() {
    let e = Format::from_path(Path::new("/tmp/list.pdf")).expect_err("pdf");
    assert_eq!(
        e.to_string(),
        "/tmp/list.pdf: unsupported file type (\".pdf\"); lists must be .txt, .lst, .csv, \
         .xlsx, .xlsm, .xls or .ods"
    );
    let e = read(Path::new("/tmp/README")).expect_err("no extension");
    assert!(
        e.to_string()
            .starts_with("/tmp/README: unsupported file type (no extension)")
    );
}

#[test]
fn missing_file_and_directory_are_open_errors() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.csv");
    let e = read(&missing).expect_err("missing");
    assert!(matches!(e, ImportError::Open { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot open: ", missing.display()))
    );
    let folder = dir.path().join("folder.txt");
    std::fs::create_dir(&folder).expect("mkdir");
    assert!(matches!(read(&folder), Err(ImportError::Open { .. })));
}

#[test]
fn garbage_and_truncated_workbooks_are_errors() {
    for name in ["list.xlsx", "list.xls", "list.ods", "list.xlsm"] {
        let (_, e) = error(name, b"name,email\nAlice,alice@example.com\n");
        assert!(matches!(e, ImportError::Workbook { .. }), "{name}: {e:?}");
    }
    for fixture_name in ["contacts.xlsx", "contacts.xls"] {
        let bytes = std::fs::read(fixture(fixture_name)).expect("fixture");
        let (_, e) = error(
            fixture_name,
            bytes.get(..bytes.len() / 2).unwrap_or_default(),
        );
        assert!(
            matches!(e, ImportError::Workbook { .. } | ImportError::Sheet { .. }),
            "{fixture_name}: {e:?}"
        );
        // Every cut, a step at a time, is an error, or the whole content when the cut
        // only loses unused trailing octets. calamine 0.38 panics on some truncated .xls
        // files (slice indexes): those come back as Damaged.
        for cut in (0..bytes.len()).step_by(97) {
            let (_dir, _path, result) = read_bytes(fixture_name, &bytes[..cut]);
            if let Ok(items) = result {
                assert_eq!(items, workbook_items(), "{fixture_name} cut at {cut}");
            }
        }
    }
}

#[test]
fn damaged_means_a_caught_panic() {
    let e = guarded(Path::new("x.xls"), || -> u8 {
        panic!("index out of bounds")
    })
    .expect_err("caught");
    assert_eq!(
        e.to_string(),
        "x.xls: the workbook is damaged (the reader failed: index out of bounds)"
    );
}
