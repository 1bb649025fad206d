//! What frameworks run, as they report it (`Call.Workloads`): the dashboard's "Apps & jobs"
//! page. Kept at the edge, in memory, the latest report per framework: each report replaces
//! the previous one, the framework's removal drops it, and a new leader hears it again when
//! the frameworks re-subscribe (they report after every SUBSCRIBED). None of it is the
//! allocator's business: the core never sees it, and nothing is fetched from frameworks.
//!
//! Invariants: a report is checked whole before anything of it is kept ([`check`]: at most
//! [`MAX_WORKLOADS`] workloads, each string at most [`MAX_WORKLOAD_STRING`] bytes, ids as
//! task ids, kinds `app` or `job`); only the actor writes the book; every change of the book
//! is broadcast (for the dashboard's streams), a removal as an empty list.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use strata_proto::Workload;
use tokio::sync::broadcast;

/// The most workloads one report may hold.
pub const MAX_WORKLOADS: usize = 1000;
/// The most bytes of any string of a workload.
pub const MAX_WORKLOAD_STRING: usize = 256;
/// Changes buffered per dashboard stream before a slow one lags (and starts over).
const CHANGE_BUFFER: usize = 256;

/// Why a report was refused (nothing of it is kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadsError {
    /// Too many workloads.
    #[error(
        "the workloads report holds {count} workloads, more than the {MAX_WORKLOADS} allowed: \
         report at most {MAX_WORKLOADS}"
    )]
    TooMany {
        /// How many it held.
        count: usize,
    },
    /// A string over the limit.
    #[error(
        "workload {index}'s {field} is {len} bytes, more than the {MAX_WORKLOAD_STRING} \
         allowed: shorten it"
    )]
    TooLong {
        /// Its place in the report.
        index: usize,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A bad id.
    #[error("workload {index}'s id is invalid: {source}")]
    Id {
        /// Its place in the report.
        index: usize,
        /// Why.
        source: strata_proto::ids::IdError,
    },
    /// An unknown kind.
    #[error("workload {index}'s kind {kind:?} is unknown: \"app\" or \"job\"")]
    Kind {
        /// Its place in the report.
        index: usize,
        /// The kind given (shortened).
        kind: String,
    },
    /// The same id twice.
    #[error("workload {index}'s id {id:?} is reported twice for kind {kind}")]
    Duplicate {
        /// Its place in the report.
        index: usize,
        /// The kind.
        kind: String,
        /// The id.
        id: String,
    },
}

/// Checks a report whole: bounds, ids, kinds, duplicates.
pub fn check(workloads: &[Workload]) -> Result<(), WorkloadsError> {
    if workloads.len() > MAX_WORKLOADS {
        return Err(WorkloadsError::TooMany {
            count: workloads.len(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(workloads.len());
    for (index, w) in workloads.iter().enumerate() {
        for (field, value) in [
            ("kind", &w.kind),
            ("id", &w.id),
            ("state", &w.state),
            ("version", &w.version),
            ("schedule", &w.schedule),
            ("last_run", &w.last_run),
            ("next_run", &w.next_run),
            ("message", &w.message),
        ] {
            if value.len() > MAX_WORKLOAD_STRING {
                return Err(WorkloadsError::TooLong {
                    index,
                    field,
                    len: value.len(),
                });
            }
        }
        if !matches!(w.kind.as_str(), "app" | "job") {
            return Err(WorkloadsError::Kind {
                index,
                kind: strata_proto::ids::shorten(&w.kind, 32),
            });
        }
        strata_proto::ids::check_id("workload id", &w.id)
            .map_err(|source| WorkloadsError::Id { index, source })?;
        if !seen.insert((w.kind.as_str(), w.id.as_str())) {
            return Err(WorkloadsError::Duplicate {
                index,
                kind: w.kind.clone(),
                id: w.id.clone(),
            });
        }
    }
    Ok(())
}

/// One framework's workloads changed (an empty list once it is removed).
#[derive(Debug, Clone)]
pub(crate) struct WorkloadsChanged {
    pub(crate) framework_id: String,
    pub(crate) workloads: Arc<Vec<Workload>>,
}

/// The latest report of each framework, shared by the actor (which writes) and the
/// dashboard (which reads and follows).
#[derive(Debug, Clone)]
pub(crate) struct WorkloadBook {
    reports: Arc<Mutex<BTreeMap<String, Arc<Vec<Workload>>>>>,
    changes: broadcast::Sender<WorkloadsChanged>,
}

impl Default for WorkloadBook {
    fn default() -> Self {
        Self {
            reports: Arc::default(),
            changes: broadcast::channel(CHANGE_BUFFER).0,
        }
    }
}

impl WorkloadBook {
    /// Replaces `framework_id`'s report with `workloads`, once checked.
    pub(crate) fn report(
        &self,
        framework_id: &str,
        workloads: Vec<Workload>,
    ) -> Result<(), WorkloadsError> {
        check(&workloads)?;
        let workloads = Arc::new(workloads);
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        if reports.get(framework_id) == Some(&workloads) {
            return Ok(());
        }
        reports.insert(framework_id.to_owned(), Arc::clone(&workloads));
        drop(reports);
        // No receiver: no dashboard open, nobody to tell.
        let _ = self.changes.send(WorkloadsChanged {
            framework_id: framework_id.to_owned(),
            workloads,
        });
        Ok(())
    }

    /// Drops the reports of frameworks for which `known` is false.
    pub(crate) fn retain(&self, known: impl Fn(&str) -> bool) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        if reports.is_empty() {
            return;
        }
        let gone: Vec<String> = reports.keys().filter(|id| !known(id)).cloned().collect();
        for id in gone {
            reports.remove(&id);
            let _ = self.changes.send(WorkloadsChanged {
                framework_id: id,
                workloads: Arc::default(),
            });
        }
    }

    /// Every framework's latest report, by framework id.
    pub(crate) fn all(&self) -> BTreeMap<String, Arc<Vec<Workload>>> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Follows the changes (subscribe before reading [`Self::all`]: a change between the two
    /// comes twice, harmlessly, since each replaces a framework's whole list).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<WorkloadsChanged> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> Workload {
        Workload {
            kind: "app".into(),
            id: id.into(),
            state: "running".into(),
            instances_wanted: 2,
            instances_running: 1,
            ..Workload::default()
        }
    }

    #[test]
    fn reports_are_bounded_and_checked_whole() {
        check(&[app("web"), app("api")]).expect("valid");
        let many: Vec<Workload> = (0..=MAX_WORKLOADS).map(|i| app(&format!("a{i}"))).collect();
        let err = check(&many).unwrap_err();
        assert_eq!(err, WorkloadsError::TooMany { count: 1001 });
        assert!(err.to_string().contains("at most 1000"), "{err}");
        check(&many[..MAX_WORKLOADS]).expect("exactly the limit");

        let mut long = app("web");
        long.message = "x".repeat(MAX_WORKLOAD_STRING + 1);
        let err = check(&[app("ok"), long]).unwrap_err();
        assert!(
            err.to_string()
                .contains("workload 1's message is 257 bytes, more than the 256 allowed"),
            "{err}"
        );
        let mut long = app("web");
        long.message = "x".repeat(MAX_WORKLOAD_STRING);
        check(&[long]).expect("exactly the limit");

        for bad in ["", "..", "a/b"] {
            let err = check(&[app(bad)]).unwrap_err();
            assert!(
                matches!(err, WorkloadsError::Id { index: 0, .. }),
                "{bad}: {err}"
            );
        }
        let mut odd = app("web");
        odd.kind = "<script>".into();
        assert!(matches!(check(&[odd]), Err(WorkloadsError::Kind { .. })));
        let err = check(&[app("web"), app("web")]).unwrap_err();
        assert!(
            matches!(err, WorkloadsError::Duplicate { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_book_keeps_the_latest_report_and_tells_its_followers() {
        let book = WorkloadBook::default();
        let mut changes = book.subscribe();
        book.report("f1", vec![app("web")]).expect("kept");
        let c = changes.try_recv().expect("a change");
        assert_eq!((c.framework_id.as_str(), c.workloads.len()), ("f1", 1));
        // The same report again: no change.
        book.report("f1", vec![app("web")]).expect("kept");
        assert!(changes.try_recv().is_err());
        // A refused report keeps the previous one and tells nobody.
        let mut bad = app("web");
        bad.version = "v".repeat(MAX_WORKLOAD_STRING + 1);
        assert!(book.report("f1", vec![bad]).is_err());
        assert_eq!(book.all()["f1"].as_slice(), &[app("web")]);
        assert!(changes.try_recv().is_err());
        // A new report replaces the old one.
        book.report("f1", vec![app("api"), app("db")])
            .expect("kept");
        assert_eq!(changes.try_recv().expect("a change").workloads.len(), 2);
        book.report("f2", vec![]).expect("kept");
        let _ = changes.try_recv();
        // Removed frameworks' reports go, as an empty list.
        book.retain(|id| id == "f2");
        let c = changes.try_recv().expect("a removal");
        assert_eq!(c.framework_id, "f1");
        assert!(c.workloads.is_empty());
        assert_eq!(book.all().keys().collect::<Vec<_>>(), vec!["f2"]);
    }
}
