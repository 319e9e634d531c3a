//! A strict TOML reader that collects every problem before the caller refuses the file.
//!
//! Serde's `deny_unknown_fields` stops at the first mistake; an admin fixing a file wants all
//! of them at once, each with its key path (`smtp.max_message_size: …`). A [`Section`] reads
//! one table key by key, deserialising each value on its own, and when it is dropped reports
//! every key nobody asked for as unknown.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;

use serde::de::DeserializeOwned;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `delivery.smarthost` or `accounts.shop.users[0].username`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a file, sorted by key path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    pub file: String,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        write!(
            f,
            "{}: {} problem{}",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.list {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

type Sink = Rc<RefCell<Vec<Problem>>>;

/// Reads one TOML table. Create the root with [`Section::root`], then take values and
/// sub-sections; drop every section before calling [`Collector::finish`].
pub struct Section<'t> {
    path: String,
    table: Option<&'t toml::Table>,
    used: HashSet<String>,
    sink: Sink,
}

/// Holds the problem list shared by all sections of one file.
pub struct Collector {
    sink: Sink,
    file: String,
}

impl Collector {
    pub fn new(file: impl Into<String>) -> Collector {
        Collector {
            sink: Rc::new(RefCell::new(Vec::new())),
            file: file.into(),
        }
    }

    /// Parses TOML text; a syntax error is the one problem reported.
    pub fn parse(&self, text: &str) -> Option<toml::Table> {
        match text.parse::<toml::Table>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.sink.borrow_mut().push(Problem {
                    path: String::new(),
                    message: format!("not valid TOML: {}", e.to_string().trim_end()),
                });
                None
            }
        }
    }

    pub fn root<'t>(&self, table: &'t toml::Table) -> Section<'t> {
        Section {
            path: String::new(),
            table: Some(table),
            used: HashSet::new(),
            sink: self.sink.clone(),
        }
    }

    /// Records a problem that is not about a single key (cross-checks).
    pub fn problem(&self, path: impl Into<String>, message: impl Into<String>) {
        self.sink.borrow_mut().push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `Ok(value)` when nothing was wrong, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, Problems> {
        let mut list = std::mem::take(&mut *self.sink.borrow_mut());
        list.sort_by(|a, b| a.path.cmp(&b.path));
        if list.is_empty() {
            Ok(value)
        } else {
            Err(Problems {
                file: self.file,
                list,
            })
        }
    }
}

impl<'t> Section<'t> {
    fn key_path(&self, key: &str) -> String {
        if key.is_empty() {
            self.path.clone()
        } else if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Records a problem with a key of this section.
    pub fn problem(&self, key: &str, message: impl Into<String>) {
        self.sink.borrow_mut().push(Problem {
            path: self.key_path(key),
            message: message.into(),
        });
    }

    fn raw(&mut self, key: &str) -> Option<&'t toml::Value> {
        self.used.insert(key.to_string());
        self.table?.get(key)
    }

    /// The value of `key`, if present and of the right type (else a problem).
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.raw(key)?;
        match value.clone().try_into::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(key, clean_error(&e.to_string()));
                None
            }
        }
    }

    /// The value of `key`, or `default` when absent or wrong (a wrong value is a problem).
    pub fn get_or<T: DeserializeOwned>(&mut self, key: &str, default: T) -> T {
        self.get(key).unwrap_or(default)
    }

    /// A sub-table; absent means empty. A non-table value is a problem.
    pub fn section(&mut self, key: &str) -> Section<'t> {
        let path = self.key_path(key);
        let table = match self.raw(key) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                self.problem(key, "must be a table");
                None
            }
        };
        Section {
            path,
            table,
            used: HashSet::new(),
            sink: self.sink.clone(),
        }
    }

    /// The keys of a table whose keys are names (like `[accounts.NAME]`), each as a section.
    pub fn named_sections(&mut self, key: &str) -> Vec<(String, Section<'t>)> {
        let mut parent = self.section(key);
        let names: Vec<String> = parent
            .table
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        names
            .into_iter()
            .map(|name| {
                let child = parent.section(&name);
                (name, child)
            })
            .collect()
    }

    /// An array of tables (`[[x]]` or `x = [{…}]`), each as a section.
    pub fn array_sections(&mut self, key: &str) -> Vec<Section<'t>> {
        let path = self.key_path(key);
        match self.raw(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    toml::Value::Table(t) => Some(Section {
                        path: format!("{path}[{i}]"),
                        table: Some(t),
                        used: HashSet::new(),
                        sink: self.sink.clone(),
                    }),
                    _ => {
                        self.problem(&format!("{key}[{i}]"), "must be a table");
                        None
                    }
                })
                .collect(),
            Some(_) => {
                self.problem(key, "must be an array of tables");
                Vec::new()
            }
        }
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        let Some(table) = self.table else { return };
        let mut unknown: Vec<&String> = table.keys().filter(|k| !self.used.contains(*k)).collect();
        unknown.sort();
        for key in unknown {
            self.problem(key, "unknown key");
        }
    }
}

/// toml's messages include a source excerpt when parsing text; for single values they are
/// one line already. Keep the first line only.
fn clean_error(msg: &str) -> String {
    msg.lines().next().unwrap_or(msg).trim().to_string()
}

/// Accepts either one string or a list of strings (`listen = "a"` or `listen = ["a", "b"]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem_with_paths() {
        let c = Collector::new("test.toml");
        let t = c
            .parse("top = 1\n[a]\nx = \"no\"\ny = 2\nz = 3\n[b]\nq = 1\n")
            .unwrap();
        {
            let mut root = c.root(&t);
            let mut a = root.section("a");
            let x: Option<u32> = a.get("x");
            assert_eq!(x, None);
            let y: u32 = a.get_or("y", 0);
            assert_eq!(y, 2);
            let _b = root.section("b");
        }
        let err = c.finish(()).unwrap_err();
        let paths: Vec<&str> = err.list.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["a.x", "a.z", "b.q", "top"]);
        assert!(err.to_string().starts_with("test.toml: 4 problems"));
    }

    #[test]
    fn syntax_error_is_one_problem() {
        let c = Collector::new("bad.toml");
        assert!(c.parse("[unclosed").is_none());
        let err = c.finish(()).unwrap_err();
        assert_eq!(err.list.len(), 1);
        assert!(err.list[0].message.starts_with("not valid TOML"));
    }

    #[test]
    fn arrays_and_named_tables() {
        let c = Collector::new("t");
        let t = c
            .parse("[accounts.shop]\n[[accounts.shop.users]]\nname = \"u\"\nbad = 1\n")
            .unwrap();
        {
            let mut root = c.root(&t);
            for (name, mut account) in root.named_sections("accounts") {
                assert_eq!(name, "shop");
                for mut user in account.array_sections("users") {
                    let n: String = user.get_or("name", String::new());
                    assert_eq!(n, "u");
                }
            }
        }
        let err = c.finish(()).unwrap_err();
        assert_eq!(err.list[0].path, "accounts.shop.users[0].bad");
    }
}
