//! A strict TOML reader that collects every problem before the caller refuses the file.
//!
//! Serde's `deny_unknown_fields` stops at the first mistake; an admin fixing a file wants all
//! of them at once, each with its key path (`smtp.max_message_size: …`). A [`Section`] reads
//! one table key by key, deserialising each value on its own, and when it is dropped reports
//! every key nobody asked for as unknown.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Serialize;
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
type Shown = Rc<RefCell<Vec<Setting>>>;

/// One key as the program sees it, for `config show`: what the file says, or the default
/// that applies, or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key path, `delivery.smarthost.address`.
    pub key: String,
    /// The value in force (a path resolved; a secret as `"(hidden)"`); `None`: unset.
    pub value: Option<toml::Value>,
    /// The file gave the value (false: the default, or unset).
    pub given: bool,
}

/// Keys whose values are never shown.
fn secret(key: &str) -> bool {
    matches!(key, "token" | "password" | "secret") || key.ends_with("_secret")
}

/// Reads one TOML table. Create the root with [`Section::root`], then take values and
/// sub-sections; drop every section before calling [`Collector::finish`].
pub struct Section<'t> {
    path: String,
    table: Option<&'t toml::Table>,
    used: HashSet<String>,
    sink: Sink,
    shown: Shown,
    base: Base,
}

/// The directory relative paths of a file resolve against (`None`: the working directory,
/// for text that is not from a file, such as the embedded defaults).
type Base = Option<Rc<Path>>;

/// Holds the problem list shared by all sections of one file.
pub struct Collector {
    sink: Sink,
    shown: Shown,
    file: String,
    base: Base,
}

impl Collector {
    pub fn new(file: impl Into<String>) -> Collector {
        Collector {
            sink: Rc::new(RefCell::new(Vec::new())),
            shown: Rc::new(RefCell::new(Vec::new())),
            file: file.into(),
            base: None,
        }
    }

    /// A collector for the file at `path`: relative paths in it (and the defaults that are
    /// paths) resolve against the file's directory, wherever the command runs.
    pub fn for_file(path: &Path) -> Collector {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Absolute when the working directory is known, so logs and `config show` name
        // the place for certain.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Collector {
            base: Some(Rc::from(dir.as_path())),
            ..Collector::new(path.display().to_string())
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
            shown: self.shown.clone(),
            base: self.base.clone(),
        }
    }

    /// Records a problem that is not about a single key (cross-checks).
    pub fn problem(&self, path: impl Into<String>, message: impl Into<String>) {
        self.sink.borrow_mut().push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Every key read so far, in the order read (see [`Setting`]).
    pub fn settings(&self) -> Vec<Setting> {
        self.shown.borrow().clone()
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
        let Some(value) = self.raw(key) else {
            self.show(key, None, false);
            return None;
        };
        match value.clone().try_into::<T>() {
            Ok(v) => {
                // A table is shown key by key, as its own section reads it.
                if !value.is_table() {
                    let shown = if secret(key) {
                        toml::Value::String("(hidden)".into())
                    } else {
                        value.clone()
                    };
                    self.show(key, Some(shown), true);
                }
                Some(v)
            }
            Err(e) => {
                self.problem(key, clean_error(&e.to_string()));
                None
            }
        }
    }

    /// A path, resolved against the file's directory when relative (see
    /// [`Collector::for_file`]). An empty string is returned as is: some keys use it for
    /// "off".
    pub fn get_path(&mut self, key: &str) -> Option<PathBuf> {
        let p = self.get::<PathBuf>(key)?;
        if p.as_os_str().is_empty() {
            return Some(p);
        }
        let p = self.resolve(p);
        let shown = toml::Value::String(p.display().to_string());
        self.show(key, Some(shown), true);
        Some(p)
    }

    /// [`Section::get_path`], or `default` (resolved in the same way) when absent.
    pub fn get_path_or(&mut self, key: &str, default: impl Into<PathBuf>) -> PathBuf {
        self.get_path(key).unwrap_or_else(|| {
            let p = self.resolve(default);
            self.default_is(key, &p.display().to_string());
            p
        })
    }

    /// `p` resolved against the file's directory when it is relative (for defaults).
    pub fn resolve(&self, p: impl Into<PathBuf>) -> PathBuf {
        let p = p.into();
        match &self.base {
            Some(base) if p.is_relative() => base.join(p.strip_prefix(".").unwrap_or(&p)),
            _ => p,
        }
    }

    /// The value of `key`, or `default` when absent or wrong (a wrong value is a problem).
    pub fn get_or<T: DeserializeOwned + Serialize>(&mut self, key: &str, default: T) -> T {
        match self.get(key) {
            Some(v) => v,
            None => {
                self.default_is(key, &default);
                default
            }
        }
    }

    /// Records `value` as the default in force for an absent `key` (for defaults computed
    /// from other keys, which [`Section::get_or`] cannot know).
    pub fn default_is(&self, key: &str, value: &impl Serialize) {
        let path = self.key_path(key);
        let mut shown = self.shown.borrow_mut();
        if let Some(s) = shown
            .iter_mut()
            .find(|s| s.key == path && s.value.is_none())
        {
            s.value = toml::Value::try_from(value).ok();
        }
    }

    fn show(&self, key: &str, value: Option<toml::Value>, given: bool) {
        let key = self.key_path(key);
        let mut shown = self.shown.borrow_mut();
        match shown.iter_mut().find(|s| s.key == key) {
            Some(s) => *s = Setting { key, value, given },
            None => shown.push(Setting { key, value, given }),
        }
    }

    /// Whether the file has this section at all (an absent one reads as empty).
    pub fn is_present(&self) -> bool {
        self.table.is_some()
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
            shown: self.shown.clone(),
            base: self.base.clone(),
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
                        shown: self.shown.clone(),
                        base: self.base.clone(),
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

/// Accepts either one value or a list (`listen = "a"` or `listen = ["a", "b"]`). A wrong
/// value is reported with the element type's own message ("invalid socket address
/// syntax"), not serde's "did not match any variant".
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::Deserialize;
        use serde::de::{self, IntoDeserializer, value};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OneOrMany::One(t) => t.serialize(s),
            OneOrMany::Many(v) => v.serialize(s),
        }
    }
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
