//! What an instance's lists were last written (or found equal) from: its configs, the
//! generation of each group's delta state, and each output file as it was left. A run in
//! which all three are as remembered has nothing to plan: the lists are what a plan would
//! write, so neither the members nor the files are read.
//!
//! One small JSON file per instance in `<state_dir>/instances/`, mode 0600, written
//! atomically and only when it changes, under the instance's lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustix::fs::Stat;
use serde::{Deserialize, Serialize};

use crate::config::instance::Instance;
use crate::model::normalize::SkipReason;
use crate::model::output::Output;
use crate::run::report::{Action, InstanceOutcome, InstanceReport, OutputReport};

/// The format this build reads and writes (with the build's version: a memo of another
/// build is none, as its plan may differ).
const FORMAT: u32 = 1;
/// The most a memo may hold (three outputs, a few configs: a few kilobytes).
const CAP: u64 = 1 << 20;

/// An output file as left by a write or a plan that found it equal: everything that
/// changes when anyone changes its content, name, links, owner or mode. `ctime` cannot be
/// set back by anyone but the clock's owner; a content change moves it, and so does a
/// `touch`, a `chmod` or a new link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, u64),
    ctime: (i64, u64),
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
}

impl FileMark {
    /// The file's size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0)
    }

    /// The mark of a file's status.
    #[must_use]
    pub fn of(st: &Stat) -> Self {
        #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss, reason = "nanoseconds are u64 or i64 by target")]
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec as u64),
            ctime: (st.st_ctime, st.st_ctime_nsec as u64),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            #[allow(clippy::useless_conversion, reason = "nlink_t is u32 on some targets")]
            nlink: u64::from(st.st_nlink),
        }
    }
}

/// One output, as its report said, and its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OutputMemo {
    output: Output,
    path: PathBuf,
    entries: usize,
    skipped: BTreeMap<SkipReason, u64>,
    file: FileMark,
}

/// An instance's memo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memo {
    format: u32,
    build: String,
    /// A digest of the instance as loaded (configs, outputs): a config that changes
    /// anything the plan reads changes it.
    instance: String,
    /// Per config, in the instance's order: the generation of its group's delta state.
    groups: Vec<u64>,
    outputs: Vec<OutputMemo>,
    skipped: BTreeMap<SkipReason, u64>,
}

/// A digest of everything the plan reads of `inst`.
fn digest(inst: &Instance) -> String {
    let text = format!("{inst:?}");
    crate::model::ids::hex(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..16])
}

/// `<state_dir>/instances/<digest of the instance directory>.json`
#[must_use]
pub fn path(state_dir: &Path, inst: &Instance) -> PathBuf {
    let d = ring::digest::digest(&ring::digest::SHA256, inst.dir.as_os_str().as_encoded_bytes());
    state_dir.join("instances").join(format!("{}.json", crate::model::ids::hex(&d.as_ref()[..12])))
}

impl Memo {
    /// What `report` (an instance that ended `ok`, every output written or unchanged) leaves
    /// behind, from the groups at `generations` and its outputs' files now (`marks`, by
    /// output); `None` when something of it cannot be remembered.
    #[must_use]
    pub fn after(
        inst: &Instance,
        generations: &[Option<u64>],
        report: &InstanceReport,
        marks: &BTreeMap<Output, FileMark>,
    ) -> Option<Self> {
        if report.outcome != InstanceOutcome::Ok || !report.errors.is_empty() {
            return None;
        }
        let groups = generations.iter().copied().collect::<Option<Vec<u64>>>()?;
        let mut outputs = Vec::new();
        for o in &report.outputs {
            if !matches!(o.action, Action::Written | Action::Unchanged) {
                return None;
            }
            outputs.push(OutputMemo {
                output: o.output,
                path: o.path.clone(),
                entries: o.after?,
                skipped: o.skipped.clone(),
                file: marks.get(&o.output)?.clone(),
            });
        }
        Some(Self {
            format: FORMAT,
            build: env!("CARGO_PKG_VERSION").to_owned(),
            instance: digest(inst),
            groups,
            outputs,
            skipped: report.skipped.clone(),
        })
    }

    /// The mark of `output`'s file as it was left.
    #[must_use]
    pub fn mark(&self, output: Output) -> Option<&FileMark> {
        self.outputs.iter().find(|o| o.output == output).map(|o| &o.file)
    }

    /// The memo at `path`, if there is a usable one.
    #[must_use]
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = match crate::files::judged::open(path).and_then(|(f, _)| crate::files::trust::read_capped(f, CAP)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "the instance memo is unreadable; planning");
                return None;
            }
        };
        let memo: Self = serde_json::from_slice(&bytes).ok()?;
        (memo.format == FORMAT && memo.build == env!("CARGO_PKG_VERSION")).then_some(memo)
    }

    /// Writes it to `path` (creating `instances/`, mode 0700), unless the file says the same.
    pub fn save(&self, path: &Path) -> Result<(), crate::files::write::WriteError> {
        if Self::load(path).as_ref() == Some(self) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| crate::files::write::WriteError { path: dir.to_owned(), action: "create", source })?;
        }
        let json = serde_json::to_vec(self).map_err(|e| crate::files::write::WriteError {
            path: path.to_owned(),
            action: "write",
            source: std::io::Error::other(e),
        })?;
        crate::files::write::write_file(path, 0o600, &json)
    }

    /// The report of an instance whose lists are as remembered: nothing to plan. `None`
    /// unless its configs, every group's generation (`generations`, per config: `None` for
    /// a group read this run) and every output's file (`mark`) are what the memo says.
    pub fn unchanged(
        &self,
        inst: &Instance,
        generations: &[Option<u64>],
        mut mark: impl FnMut(Output) -> Option<FileMark>,
    ) -> Option<InstanceReport> {
        if self.instance != digest(inst) || generations.len() != self.groups.len() {
            return None;
        }
        if generations.iter().zip(&self.groups).any(|(g, m)| *g != Some(*m)) {
            return None;
        }
        let mut outputs = Vec::new();
        for o in &self.outputs {
            if mark(o.output).as_ref() != Some(&o.file) {
                return None;
            }
            outputs.push(OutputReport {
                output: o.output,
                path: o.path.clone(),
                before: Some(o.entries),
                after: Some(o.entries),
                added_count: 0,
                removed_count: 0,
                added: vec![],
                removed: vec![],
                skipped: o.skipped.clone(),
                action: Action::Unchanged,
            });
        }
        Some(InstanceReport {
            name: inst.name.clone(),
            outcome: InstanceOutcome::Ok,
            outputs,
            skipped: self.skipped.clone(),
            errors: vec![],
            reads: vec![],
            locked_since: None,
        })
    }
}
