//! What an operator does to many messages at once, and the holds that outlive a restart:
//! `queue retry --all` (optionally one site's or one account's mail), `queue hold` and
//! `queue release` (one message, an account's, or all), and the queue's age by site
//! (`queue shape`, Postfix's `qshape`).
//!
//! A held message is left alone by delivery (bounce and delete still apply) until it is
//! released. Holds are kept in `held.json` in the spool directory (0600, written whole and
//! atomically on every change), so a restart keeps them; a damaged file is set aside as
//! `held.json.damaged` and logged, and its holds are lost — never silently.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use super::queue::Progress;
use super::{Entry, Scheduler};
use crate::envelope::QueueId;

/// The messages a bulk command concerns: all, or those of an account, or those with a
/// recipient at a site (its name as `queue summary` shows it, or a recipient domain).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account: Option<String>,
    pub site: Option<String>,
}

/// What a bulk command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    /// Every waiting recipient is tried now.
    Retry,
    Hold,
    Release,
}

/// The operator holds, and their file.
#[derive(Debug, Default)]
pub(super) struct Holds {
    path: Option<PathBuf>,
    ids: HashSet<QueueId>,
}

impl Holds {
    /// Reads the holds file (none yet: no holds).
    pub fn load(path: Option<PathBuf>) -> Holds {
        let Some(file) = &path else {
            return Holds::default();
        };
        let ids = match std::fs::read(file) {
            Ok(raw) => match serde_json::from_slice::<Vec<String>>(&raw) {
                Ok(list) => list.iter().filter_map(|s| QueueId::parse(s)).collect(),
                Err(e) => {
                    let aside = file.with_extension("json.damaged");
                    let _ = std::fs::rename(file, &aside);
                    tracing::error!(file = %file.display(), aside = %aside.display(), error = %e, "the operator holds file is damaged: set aside, its messages are no longer held");
                    HashSet::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot read the operator holds");
                HashSet::new()
            }
        };
        Holds { path, ids }
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.ids.contains(&id)
    }

    /// Holds or releases `ids`; writes the file (keeping only messages still queued).
    fn set(&mut self, ids: &[QueueId], held: bool, queued: &HashMap<QueueId, Entry>) {
        for id in ids {
            if held {
                self.ids.insert(*id);
            } else {
                self.ids.remove(id);
            }
        }
        self.ids.retain(|id| queued.contains_key(id));
        let Some(path) = &self.path else { return };
        let mut list: Vec<String> = self.ids.iter().map(ToString::to_string).collect();
        list.sort();
        let json = serde_json::to_vec(&list).expect("strings serialise");
        if let Err(e) = crate::files::write_atomically(path, &json) {
            tracing::error!(file = %path.display(), error = %e, "cannot write the operator holds (they hold until a restart)");
        }
    }
}

/// The queue's age by site (`queue shape`): recipients not yet done, by how long ago their
/// message was accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    /// The upper bound of each age column, in minutes; the last column is everything older
    /// than the last bound.
    pub columns_min: Vec<u64>,
    /// The busiest sites first (the rest as `other`), with a `TOTAL` row first.
    pub sites: Vec<ShapeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeRow {
    pub site: String,
    pub total: usize,
    /// One count per column of [`Shape::columns_min`], plus the older-than-all column.
    pub counts: Vec<usize>,
}

/// qshape's columns: 5 10 20 40 80 160 320 640 1280 minutes, and older.
const SHAPE_COLUMNS_MIN: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

impl Scheduler {
    fn matches(&self, entry: &Entry, filter: &Filter, now: tokio::time::Instant) -> bool {
        if let Some(a) = &filter.account
            && self.names.name(entry.account) != a
        {
            return false;
        }
        let Some(site) = &filter.site else {
            return true;
        };
        entry
            .rcpts
            .iter()
            .filter(|r| r.status() != Progress::Done)
            .any(|r| {
                self.names.name(r.domain).eq_ignore_ascii_case(site)
                    || self.site_name(r.domain, now) == *site
            })
    }

    /// Applies a bulk command; returns how many messages it concerned.
    pub(super) fn bulk(&mut self, filter: &Filter, what: Bulk) -> usize {
        let tnow = tokio::time::Instant::now();
        // A retry leaves held messages held (and does not count them).
        let ids: Vec<QueueId> = self
            .entries
            .iter()
            .filter(|(_, e)| !(what == Bulk::Retry && e.operator_hold))
            .filter(|(_, e)| self.matches(e, filter, tnow))
            .map(|(id, _)| *id)
            .collect();
        self.operate(&ids, what);
        tracing::info!(messages = ids.len(), action = ?what, account = ?filter.account, site = ?filter.site, "operator action on many messages");
        ids.len()
    }

    /// Retries, holds or releases the messages `ids` (all in the queue).
    pub(super) fn operate(&mut self, ids: &[QueueId], what: Bulk) {
        let now = self.clock.now_ms();
        match what {
            Bulk::Retry => {
                for id in ids {
                    if let Some(e) = self.entries.get_mut(id) {
                        for r in e.rcpts.iter_mut() {
                            if matches!(r.status(), Progress::Waiting { .. }) {
                                r.set(Progress::Waiting { due: now });
                            }
                        }
                    }
                    self.dispatch(*id);
                }
            }
            Bulk::Hold | Bulk::Release => {
                let held = what == Bulk::Hold;
                for id in ids {
                    if let Some(e) = self.entries.get_mut(id) {
                        e.operator_hold = held;
                    }
                }
                self.holds.set(ids, held, &self.entries);
                if !held {
                    for id in ids {
                        self.dispatch(*id);
                    }
                }
            }
        }
    }

    /// The queue's age by site (see [`Shape`]).
    pub(super) fn shape(&self) -> Shape {
        let now_s = self.clock.now_ms() / 1000;
        let tnow = tokio::time::Instant::now();
        let width = SHAPE_COLUMNS_MIN.len() + 1;
        let mut site_of: HashMap<u32, String> = HashMap::new();
        let mut rows: HashMap<String, Vec<usize>> = HashMap::new();
        for e in self.entries.values() {
            let age_min = now_s.saturating_sub(e.received_s as u64) / 60;
            let column = SHAPE_COLUMNS_MIN
                .iter()
                .position(|&bound| age_min < bound)
                .unwrap_or(SHAPE_COLUMNS_MIN.len());
            for r in e.rcpts.iter().filter(|r| r.status() != Progress::Done) {
                let site = site_of
                    .entry(r.domain)
                    .or_insert_with(|| self.site_name(r.domain, tnow));
                rows.entry(site.clone()).or_insert_with(|| vec![0; width])[column] += 1;
            }
        }
        let mut sites: Vec<ShapeRow> = rows
            .into_iter()
            .map(|(site, counts)| ShapeRow {
                site,
                total: counts.iter().sum(),
                counts,
            })
            .collect();
        sites.sort_by(|a, b| b.total.cmp(&a.total).then(a.site.cmp(&b.site)));
        if sites.len() > super::sites::NAMED_SITES {
            let rest = sites.split_off(super::sites::NAMED_SITES);
            let mut counts = vec![0; width];
            for r in &rest {
                for (c, n) in counts.iter_mut().zip(&r.counts) {
                    *c += n;
                }
            }
            sites.push(ShapeRow {
                site: "other".into(),
                total: counts.iter().sum(),
                counts,
            });
        }
        let mut total = vec![0; width];
        for r in &sites {
            for (c, n) in total.iter_mut().zip(&r.counts) {
                *c += n;
            }
        }
        sites.insert(
            0,
            ShapeRow {
                site: "TOTAL".into(),
                total: total.iter().sum(),
                counts: total,
            },
        );
        Shape {
            columns_min: SHAPE_COLUMNS_MIN.to_vec(),
            sites,
        }
    }
}
