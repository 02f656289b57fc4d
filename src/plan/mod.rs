//! The pure core: from the fetched members and the current files, what each output should become.
//!
//! A plan keeps no lines. It holds the instance's entries (a user of a roster, as a config
//! renders it) sorted once, and renders each output's lines from them when it compares
//! them with the current file and when it writes.

pub(crate) mod guard;
pub(crate) mod patch;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::config::entraid::EntraConf;
use crate::config::instance::Instance;
use crate::model::normalize::SkipReason;
use crate::model::output::{AccessRule, Output};
use crate::model::render;
use crate::model::roster::{Note, Roster, When};

/// The current output files, as a plan reads them. The run reads them from the file system;
/// tests hand over bytes ([`CurrentFiles`]).
pub trait Current {
    /// Why a file could not be read.
    type Error;
    /// The file of `output`, as a stream; `None` if there is none.
    fn stream(&mut self, output: Output) -> Result<Option<impl io::BufRead + '_>, Self::Error>;
    /// An error met while streaming the file of `output`.
    fn stream_failed(&self, output: Output, e: io::Error) -> Self::Error;
}

/// The bytes of each output file as it is now; `None` (or no entry) where there is none.
pub type CurrentFiles = BTreeMap<Output, Option<Vec<u8>>>;

impl Current for CurrentFiles {
    type Error = io::Error;

    fn stream(&mut self, output: Output) -> io::Result<Option<impl io::BufRead + '_>> {
        Ok(self.get(&output).and_then(Option::as_deref))
    }

    fn stream_failed(&self, _: Output, e: io::Error) -> io::Error {
        e
    }
}

/// What should happen to one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// Which output.
    pub output: Output,
    /// Its path.
    pub path: PathBuf,
    /// Entries now.
    pub before: usize,
    /// Entries after the write.
    pub after: usize,
    /// How many entries are new.
    pub added: usize,
    /// How many entries go.
    pub removed: usize,
    /// The new and the gone entries themselves, when the comparison was asked for them.
    pub changes: Changes,
    /// Members that gave no entry here, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// The new bytes differ from the current ones (or there is no file yet).
    pub changed: bool,
    /// This output's entries in line order, when that is not the plan's common order
    /// (`access_rules` fed in both rule styles).
    pub(crate) own_order: Option<Vec<Entry>>,
}

/// The entries an output gains and loses, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// New entries.
    pub added: Vec<String>,
    /// Entries that go.
    pub removed: Vec<String>,
}

/// A member that gave no entry to some output, for the log (values already escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The config that fetched it.
    pub config: PathBuf,
    /// The member's object id.
    pub id: String,
    /// Why.
    pub reason: SkipReason,
    /// The offending value (mail or phone), escaped for a log line; empty if none.
    pub value: String,
}

/// One line of some output: user `user` of the roster of config `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    config: u16,
    user: u32,
}

/// Everything one instance's write would do.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// One entry per output of the instance, in `Output` order.
    pub outputs: Vec<OutputPlan>,
    /// Every skip, in directory order.
    pub skips: Vec<Skip>,
    rosters: Vec<&'a Roster>,
    configs: &'a [EntraConf],
    /// Every kept (config, user), sorted by mail, then phone.
    entries: Vec<Entry>,
}

/// What instance `instance` should write: its entries from `fetched` (`fetched[i]` holds
/// the members of `instance.configs[i]`), each output compared with its `current` file.
/// With `detail`, the added and removed entries are listed too. Every output that cannot
/// be read gives an error, and then there is no plan.
pub fn plan<'a, C: Current>(
    current: &mut C,
    fetched: &[&'a Roster],
    instance: &'a Instance,
    detail: bool,
) -> Result<Plan<'a>, Vec<C::Error>> {
    let mut p = Plan::new(fetched, instance);
    let mut errors = Vec::new();
    for i in 0..p.outputs.len() {
        if let Err(e) = p.compare(i, current, detail) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

impl<'a> Plan<'a> {
    /// The entries of every output, sorted, before any comparison: each output's counts
    /// are set by [`Plan::compare`], and until then it counts as changed.
    /// `fetched[i]` holds the members fetched for `instance.configs[i]`.
    #[must_use]
    fn new(fetched: &[&'a Roster], instance: &'a Instance) -> Self {
        let configs = instance.configs.as_slice();
        let rosters: Vec<&Roster> = fetched.iter().copied().take(configs.len()).collect();
        let mut entries = Vec::new();
        for (config, (c, r)) in configs.iter().zip(&rosters).enumerate() {
            // An instance has a handful of configs.
            let config = u16::try_from(config).unwrap_or(u16::MAX);
            let users = (0..r.len()).filter_map(|u| u32::try_from(u).ok());
            entries.extend(users.filter(|u| keeps(c, r.disabled(*u))).map(|user| Entry { config, user }));
        }
        let mut p = Self { outputs: Vec::new(), skips: Vec::new(), rosters, configs, entries };
        // Each roster is sorted already (`Roster::finish`): one config needs no sort, and
        // several are merged as runs by the stable sort.
        let mut entries = std::mem::take(&mut p.entries);
        if configs.len() > 1 && !entries.is_sorted_by(|a, b| p.key_cmp(*a, *b).is_le()) {
            entries.sort_by(|a, b| p.key_cmp(*a, *b));
        }
        p.entries = entries;
        let mut skipped = p.skip_notes();
        for (output, path) in &instance.outputs {
            let feeding = |c: &&EntraConf| c.feeds.contains(output);
            let mixed = *output == Output::AccessRules
                && configs.iter().filter(feeding).any(|c| c.access_rule != AccessRule::Registration)
                && configs.iter().filter(feeding).any(|c| c.access_rule == AccessRule::Registration);
            let own_order = mixed.then(|| {
                let mut own: Vec<Entry> = p.entries.iter().copied().filter(|e| p.feeds(*e, *output)).collect();
                own.sort_by(|a, b| p.line_cmp(*output, *a, *b));
                own
            });
            p.outputs.push(OutputPlan {
                output: *output,
                path: path.path.clone(),
                before: 0,
                after: 0,
                added: 0,
                removed: 0,
                changes: Changes::default(),
                skipped: skipped.remove(output).unwrap_or_default(),
                changed: true,
                own_order,
            });
        }
        p
    }

    /// Skips by reason; a member skipped for `gsm_list` only (no phone) counts too.
    #[must_use]
    pub fn skip_counts(&self) -> BTreeMap<SkipReason, u64> {
        let mut counts = BTreeMap::new();
        for s in &self.skips {
            *counts.entry(s.reason).or_default() += 1;
        }
        counts
    }

    /// Compares output `i` with its current file: sets `before`, `after`, `added`,
    /// `removed` and `changed`, and with `detail` the changed entries. The file is streamed:
    /// when it is already right (the hourly common case) the first pass ends there; when
    /// it differs, a second pass diffs it as it streams by if its entries come sorted (as
    /// usersync writes them). Only a file out of order (edited by hand) is read whole.
    fn compare<C: Current>(&mut self, i: usize, current: &mut C, detail: bool) -> Result<(), C::Error> {
        let output = self.outputs[i].output;
        let same = match current.stream(output)? {
            None => {
                self.diff_new(i, detail);
                return Ok(());
            }
            Some(r) => self.unchanged_in(i, r),
        };
        let diffed = match same {
            Ok(true) => return Ok(()),
            Ok(false) => match current.stream(output)? {
                Some(r) => self.diff_sorted(i, r, detail),
                None => Ok(false),
            },
            Err(e) => Err(e),
        };
        match diffed {
            Ok(true) => Ok(()),
            // Out of order (edited by hand): its lines are looked up among the new ones.
            Ok(false) => {
                let done = if let Some(r) = current.stream(output)? {
                    self.diff_unsorted(i, r, detail)
                } else {
                    self.diff_new(i, detail);
                    Ok(())
                };
                done.map_err(|e| current.stream_failed(output, e))
            }
            Err(e) => Err(current.stream_failed(output, e)),
        }
    }

    /// Sets the changes of output `i` in one pass over a current file read as a stream,
    /// holding one entry of it at a time. Returns false, with nothing set, at the first entry
    /// out of order: then only sorting the whole file tells what was added and removed.
    fn diff_sorted(&mut self, i: usize, current: impl io::BufRead, detail: bool) -> io::Result<bool> {
        let mut old = SortedEntries { r: current, buf: Vec::new(), entry: Vec::new(), started: false };
        let (mut before, mut added, mut removed, mut after, mut changes) = (0, 0, 0, 0, Changes::default());
        let mut lines = self.lines(i);
        let mut new = lines.next();
        let mut at = old.advance()?;
        loop {
            let ord = match (new, at) {
                (_, Next::Unsorted) => return Ok(false),
                (None, Next::End) => break,
                (Some(_), Next::End) => Ordering::Less,
                (None, Next::Entry) => Ordering::Greater,
                (Some(n), Next::Entry) => n.cmp(&old.entry[..]),
            };
            match (ord, new) {
                (Ordering::Equal, _) => {
                    (before, after) = (before + 1, after + 1);
                    at = old.advance()?;
                    new = lines.next();
                }
                (Ordering::Less, Some(n)) => {
                    (added, after) = (added + 1, after + 1);
                    if detail {
                        changes.added.push(String::from_utf8_lossy(n).into_owned());
                    }
                    new = lines.next();
                }
                _ => {
                    (before, removed) = (before + 1, removed + 1);
                    if detail && changes.removed.len() < MAX_LISTED {
                        changes.removed.push(String::from_utf8_lossy(&old.entry).into_owned());
                    }
                    at = old.advance()?;
                }
            }
        }
        let o = &mut self.outputs[i];
        (o.before, o.after, o.added, o.removed, o.changes, o.changed) = (before, after, added, removed, changes, true);
        Ok(true)
    }

    /// For a current file out of order (edited by hand): each of its lines is looked up
    /// among output `i`'s new lines (rendered on demand, by binary search), so that memory
    /// stays one flag a new line whatever the file holds. A line the file holds twice is
    /// one entry; a line it holds twice that is not among the new ones counts as removed
    /// twice (the guard errs on the safe side).
    fn diff_unsorted(&mut self, i: usize, mut current: impl io::BufRead, detail: bool) -> io::Result<()> {
        let output = self.outputs[i].output;
        let distinct = self.distinct_lines(i);
        let mut matched = vec![false; distinct.len()];
        let (mut before, mut removed, mut changes) = (0, 0, Changes::default());
        let (mut line, mut probe) = (Vec::new(), Vec::new());
        while next_line(&mut current, &mut line)? {
            before += 1;
            let found = distinct.binary_search_by(|e| {
                probe.clear();
                self.render(output, *e, &mut probe);
                probe.as_slice().cmp(&line)
            });
            match found {
                Ok(k) if !matched[k] => matched[k] = true,
                Ok(_) => before -= 1,
                Err(_) => {
                    removed += 1;
                    if detail && changes.removed.len() < MAX_LISTED {
                        changes.removed.push(String::from_utf8_lossy(&line).into_owned());
                    }
                }
            }
        }
        let mut added = 0;
        for (e, _) in distinct.iter().zip(&matched).filter(|(_, m)| !**m) {
            added += 1;
            if detail {
                probe.clear();
                self.render(output, *e, &mut probe);
                changes.added.push(String::from_utf8_lossy(&probe).into_owned());
            }
        }
        changes.removed.sort();
        let after = distinct.len();
        let o = &mut self.outputs[i];
        (o.before, o.after, o.added, o.removed, o.changes, o.changed) = (before, after, added, removed, changes, true);
        Ok(())
    }

    /// Output `i`'s entries in line order, one for each distinct line.
    fn distinct_lines(&self, i: usize) -> Vec<Entry> {
        let output = self.outputs[i].output;
        let order = self.outputs[i].own_order.as_deref().unwrap_or(&self.entries);
        let (mut out, mut last, mut cur) = (Vec::new(), Vec::new(), Vec::new());
        for e in order.iter().copied().filter(|e| self.feeds(*e, output)) {
            cur.clear();
            self.render(output, e, &mut cur);
            if out.is_empty() || cur != last {
                out.push(e);
                std::mem::swap(&mut last, &mut cur);
            }
        }
        out
    }

    /// For no current file: counts, and with `detail` lists, what is added.
    fn diff_new(&mut self, i: usize, detail: bool) {
        let mut changes = Changes::default();
        let after = if detail {
            let mut lines = self.lines(i);
            while let Some(l) = lines.next() {
                changes.added.push(String::from_utf8_lossy(l).into_owned());
            }
            changes.added.len()
        } else {
            // No list asked for: counting needs no rendering.
            self.count(i)
        };
        let o = &mut self.outputs[i];
        (o.before, o.after, o.added, o.removed, o.changes, o.changed) = (0, after, after, 0, changes, true);
    }

    /// The hourly common case without holding the file: if `current` (the file, read as a
    /// stream) holds exactly output `i`'s lines, marks the output unchanged and returns
    /// true. Otherwise nothing is set (and reading stopped at the first difference).
    fn unchanged_in(&mut self, i: usize, mut current: impl io::BufRead) -> io::Result<bool> {
        let mut lines = self.lines(i);
        let mut n = 0;
        while let Some(l) = lines.next() {
            if !take_exactly(&mut current, l)? || !take_exactly(&mut current, b"\n")? {
                return Ok(false);
            }
            n += 1;
        }
        if !current.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let o = &mut self.outputs[i];
        (o.before, o.after, o.added, o.removed, o.changes, o.changed) = (n, n, 0, 0, Changes::default(), false);
        Ok(true)
    }

    /// Writes output `i`'s content: its lines, `\n` after each.
    pub fn write_to(&self, i: usize, w: &mut impl io::Write) -> io::Result<()> {
        let mut lines = self.lines(i);
        while let Some(l) = lines.next() {
            w.write_all(l)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// How many lines output `i` has. In the common order, equal lines are neighbours
    /// with equal addresses (and, for `gsm_list`, equal numbers), so nothing is rendered.
    fn count(&self, i: usize) -> usize {
        let o = &self.outputs[i];
        if o.own_order.is_some() {
            let mut lines = self.lines(i);
            let mut n = 0;
            while lines.next().is_some() {
                n += 1;
            }
            return n;
        }
        let gsm = o.output == Output::GsmList;
        let mut n = 0;
        let mut last: Option<Entry> = None;
        for e in self.entries.iter().copied().filter(|e| self.feeds(*e, o.output)) {
            let same = last.is_some_and(|l| self.mail(l) == self.mail(e) && (!gsm || self.phone(l) == self.phone(e)));
            if !same {
                n += 1;
            }
            last = Some(e);
        }
        n
    }

    /// Output `i`'s lines in order, without duplicates.
    fn lines(&self, i: usize) -> Lines<'_, 'a> {
        let o = &self.outputs[i];
        let order = o.own_order.as_deref().unwrap_or(&self.entries);
        Lines { plan: self, output: o.output, order, line: Vec::new(), next: Vec::new(), started: false }
    }

    fn mail(&self, e: Entry) -> &[u8] {
        self.rosters[usize::from(e.config)].mail(e.user)
    }

    fn phone(&self, e: Entry) -> &[u8] {
        self.rosters[usize::from(e.config)].phone(e.user)
    }

    /// The common order: by mail, then phone. For any output whose configs share one
    /// rule style it is the order of the lines, as no address byte sorts below the space
    /// that ends an address on a line.
    fn key_cmp(&self, a: Entry, b: Entry) -> Ordering {
        self.mail(a).cmp(self.mail(b)).then_with(|| self.phone(a).cmp(self.phone(b))).then(a.config.cmp(&b.config))
    }

    fn line_cmp(&self, output: Output, a: Entry, b: Entry) -> Ordering {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        self.render(output, a, &mut x);
        self.render(output, b, &mut y);
        x.cmp(&y)
    }

    fn render(&self, output: Output, e: Entry, out: &mut Vec<u8>) {
        let style = self.configs[usize::from(e.config)].access_rule;
        render::line(out, output, style, self.mail(e), self.phone(e));
    }

    /// Entry `e` gives a line of `output`.
    fn feeds(&self, e: Entry, output: Output) -> bool {
        gives(&self.configs[usize::from(e.config)], output, self.phone(e))
    }

    /// Every note of every roster that applies to its config, as skips and counts per output.
    fn skip_notes(&mut self) -> BTreeMap<Output, BTreeMap<SkipReason, u64>> {
        let mut skipped: BTreeMap<Output, BTreeMap<SkipReason, u64>> = BTreeMap::new();
        for (c, r) in self.configs.iter().zip(&self.rosters) {
            for n in r.notes() {
                let Some(gsm_only) = note_applies(c, n) else { continue };
                self.skips.push(Skip {
                    config: c.path.clone(),
                    id: n.id.to_string(),
                    reason: n.reason,
                    value: n.value.to_string(),
                });
                for o in c.feeds.iter().filter(|o| !gsm_only || **o == Output::GsmList) {
                    *skipped.entry(*o).or_default().entry(n.reason).or_default() += 1;
                }
            }
        }
        skipped
    }
}

/// Config `c` keeps a user that is `disabled` (or not).
fn keeps(c: &EntraConf, disabled: bool) -> bool {
    c.include_disabled || !disabled
}

/// Config `c` gives `output` a line for a user it keeps whose phone is `phone`.
fn gives(c: &EntraConf, output: Output, phone: &[u8]) -> bool {
    c.feeds.contains(&output) && (output != Output::GsmList || !phone.is_empty())
}

/// The line user `u` of `r` gives `output` under config `c`, appended to `out`; false
/// (nothing appended) if it gives none.
pub(crate) fn line_of(c: &EntraConf, r: &Roster, u: u32, output: Output, out: &mut Vec<u8>) -> bool {
    if !keeps(c, r.disabled(u)) || !gives(c, output, r.phone(u)) {
        return false;
    }
    render::line(out, output, c.access_rule, r.mail(u), r.phone(u));
    true
}

/// Whether note `n` is a skip under config `c`: `Some(true)` when for `gsm_list` only (the
/// user has no usable phone), `Some(false)` for every output `c` feeds.
pub(crate) fn note_applies(c: &EntraConf, n: &Note) -> Option<bool> {
    match n.when {
        When::Always => Some(false),
        When::ExcludingDisabled if !c.include_disabled => Some(false),
        When::IncludingDisabled if c.include_disabled => Some(false),
        When::Phone { disabled } if (!disabled || c.include_disabled) && c.feeds.contains(&Output::GsmList) => {
            Some(true)
        }
        _ => None,
    }
}

/// Consumes `want` from `r` if the stream continues with exactly those bytes.
fn take_exactly(r: &mut impl io::BufRead, mut want: &[u8]) -> io::Result<bool> {
    while !want.is_empty() {
        let buf = r.fill_buf()?;
        let n = buf.len().min(want.len());
        if n == 0 || buf[..n] != want[..n] {
            return Ok(false);
        }
        r.consume(n);
        want = &want[n..];
    }
    Ok(true)
}

/// Where [`SortedEntries::advance`] got to.
#[derive(Clone, Copy)]
enum Next {
    /// The next entry is in `entry`.
    Entry,
    /// The file ended.
    End,
    /// An entry came before the one before it.
    Unsorted,
}

/// A current file's entries, read one at a time (non-blank lines, a trailing `\r` dropped,
/// duplicates once, none longer than [`MAX_LINE`]), while they come sorted.
struct SortedEntries<R> {
    r: R,
    buf: Vec<u8>,
    entry: Vec<u8>,
    started: bool,
}

impl<R: io::BufRead> SortedEntries<R> {
    fn advance(&mut self) -> io::Result<Next> {
        loop {
            if !next_line(&mut self.r, &mut self.buf)? {
                return Ok(Next::End);
            }
            let l = &self.buf[..];
            if self.started {
                match l.cmp(&self.entry[..]) {
                    Ordering::Less => return Ok(Next::Unsorted),
                    Ordering::Equal => continue,
                    Ordering::Greater => {}
                }
            }
            self.entry.clear();
            self.entry.extend_from_slice(l);
            self.started = true;
            return Ok(Next::Entry);
        }
    }
}

/// No line of a list usersync writes is near this long (an address is at most 254 bytes):
/// a current file with a longer one is not read on (the gateway's account may write it).
pub const MAX_LINE: usize = 4096;

/// At most this many entries a current file loses are listed (the counts stay exact): the
/// file may be anyone's, and any size up to the read cap.
pub const MAX_LISTED: usize = 100_000;

/// The next line of `r` that is not blank, without its `\n` or `\r\n`, into `line`; false
/// at the end. A line longer than [`MAX_LINE`] is an error, found without holding it.
fn next_line(r: &mut impl io::BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        line.clear();
        let mut any = false;
        loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            any = true;
            let (take, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(n) => (n + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            r.consume(take);
            if line.len() > MAX_LINE + 2 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("it holds a line longer than {MAX_LINE} bytes, so it is no list usersync wrote"),
                ));
            }
            if end {
                break;
            }
        }
        if !any {
            return Ok(false);
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Ok(true);
        }
    }
}

/// A cursor over one output's lines, rendered one at a time into a reused buffer.
struct Lines<'p, 'a> {
    plan: &'p Plan<'a>,
    output: Output,
    order: &'p [Entry],
    line: Vec<u8>,
    next: Vec<u8>,
    started: bool,
}

impl Lines<'_, '_> {
    fn next(&mut self) -> Option<&[u8]> {
        while let Some((e, rest)) = self.order.split_first() {
            self.order = rest;
            if !self.plan.feeds(*e, self.output) {
                continue;
            }
            self.next.clear();
            self.plan.render(self.output, *e, &mut self.next);
            // Equal lines are neighbours in line order.
            if self.started && self.next == self.line {
                continue;
            }
            std::mem::swap(&mut self.line, &mut self.next);
            self.started = true;
            return Some(&self.line);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::entraid::Env;
    use crate::config::instance::OutputPath;
    use crate::files::trust::Trust;
    use crate::model::page::{parse as parse_page, Member, MemberView, ObjectKind};
    use std::path::Path;

    fn sample(name: &str) -> Roster {
        let body = std::fs::read(format!("{}/tests/fixtures/graph/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        roster(&parse_page(&body).unwrap().members)
    }

    fn roster(members: &[Member]) -> Roster {
        Roster::of(true, members.iter().map(MemberView::from))
    }

    fn conf(name: &str, extra: &str) -> EntraConf {
        let text = format!(
            "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"66666666-7777-8888-9999-000000000000\"\nclient_secret = \"x\"\ngroup_id = \"02bd9fd6-8f93-4758-87c3-1fb73740a315\"\n{extra}"
        );
        EntraConf::parse(&text, Path::new(name), &Env::default(), Trust::Trusted).unwrap()
    }

    /// An instance of `configs`, with each output some config feeds at its default path.
    pub(crate) fn instance(configs: Vec<EntraConf>) -> Instance {
        let mut outputs = BTreeMap::new();
        for o in Output::ALL {
            if configs.iter().any(|c| c.feeds.contains(&o)) {
                outputs.insert(o, OutputPath { path: PathBuf::from(o.default_path()), confined: true });
            }
        }
        Instance { name: "gw".into(), dir: PathBuf::from("/server/gw"), configs, outputs, cfg_files: vec![] }
    }

    /// The plan against no current files, with the changed entries listed.
    pub(super) fn full<'a>(fetched: &[&'a Roster], i: &'a Instance) -> Plan<'a> {
        plan(&mut CurrentFiles::new(), fetched, i, true).unwrap()
    }

    /// Output `i` as it would be written.
    pub(super) fn text(p: &Plan, i: usize) -> String {
        let mut v = Vec::new();
        p.write_to(i, &mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn users_list_sample_gives_lower_cased_sorted_lines() {
        // Microsoft's sample selects no accountEnabled: without include_disabled nobody is
        // kept, and the fetch would fail as the limited-information answer.
        let members = sample("users_list_app_only.json");
        assert_eq!(members.limited(), Some("accountEnabled"));
        let i = instance(vec![conf("a", "feeds = [\"allowed_senders\", \"access_rules\"]\n")]);
        let p = full(&[&members], &i);
        assert_eq!(p.outputs[0].after, 0);
        assert_eq!(p.outputs[0].skipped, BTreeMap::from([(SkipReason::EnabledUnknown, 2)]));
        let i = instance(vec![conf("a", "feeds = [\"allowed_senders\", \"access_rules\"]\ninclude_disabled = true\n")]);
        let p = full(&[&members], &i);
        assert_eq!(p.outputs.len(), 2);
        assert_eq!(text(&p, 0), "adams@contoso.com\nadelev@contoso.com\n");
        assert_eq!(text(&p, 1), "* adams@contoso.com <reg> - 0\n* adelev@contoso.com <reg> - 0\n");
        assert!(p.outputs.iter().all(|o| o.changed && o.before == 0 && o.after == 2));
    }

    #[test]
    fn limited_info_sample_skips_by_reason() {
        let i = instance(vec![conf("a", "")]);
        let members = sample("group_members_limited_info_permissions_overview.json");
        let p = full(&[&members], &i);
        let o = &p.outputs[0];
        assert_eq!(o.after, 0);
        assert_eq!(
            o.skipped,
            BTreeMap::from([(SkipReason::Group, 1), (SkipReason::Device, 1), (SkipReason::EnabledUnknown, 1)])
        );
        assert_eq!(members.limited(), Some("mail, mobilePhone or accountEnabled"));
    }

    #[test]
    fn union_of_configs_with_both_rule_styles_and_phones() {
        let a = conf("a", "feeds = [\"access_rules\", \"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n");
        let b = conf("b", "feeds = [\"access_rules\"]\naccess_rule = \"sms\"\ninclude_disabled = true\n");
        let ma = roster(&[
            user("1", Some("Zed@X.com"), Some("+44 (0)20 7946 0958"), Some(true)),
            user("2", Some("amy@x.com"), None, Some(true)),
            user("3", Some("off@x.com"), Some("040-123 1234"), Some(false)),
            user("4", Some("bad\n* evil@x <reg> - 0"), Some("12345"), Some(true)),
            user("5", Some("ph@x.com"), Some("call me"), Some(true)),
        ]);
        let mb =
            roster(&[user("3", Some("off@x.com"), None, Some(false)), user("1", Some("zed@x.com"), None, Some(true))]);
        let i = instance(vec![a, b]);
        let p = full(&[&ma, &mb], &i);
        let gsm = &p.outputs[0];
        assert_eq!(gsm.output, Output::GsmList);
        assert_eq!(text(&p, 0), "zed@x.com +442079460958\n");
        assert_eq!(
            gsm.skipped,
            BTreeMap::from([
                (SkipReason::Disabled, 1),
                (SkipReason::InvalidMail, 1),
                (SkipReason::NoPhone, 1),
                (SkipReason::InvalidPhone, 1)
            ])
        );
        assert_eq!(p.outputs[1].output, Output::AccessRules);
        // Counting without rendering agrees with the lines.
        let counted = plan(&mut CurrentFiles::new(), &[&ma, &mb], &i, false).unwrap();
        for out in 0..counted.outputs.len() {
            let got = &counted.outputs[out];
            assert_eq!(got.after, text(&p, out).lines().count(), "{}", got.output);
            assert_eq!(got.added, got.after);
        }
        assert_eq!(
            text(&p, 1),
            "* amy@x.com <reg> - 0\n* ph@x.com <reg> - 0\n* zed@x.com <reg> - 0\noff@x.com * <sms> - 0\nzed@x.com * <sms> - 0\n"
        );
        let invalid: Vec<&Skip> =
            p.skips.iter().filter(|s| matches!(s.reason, SkipReason::InvalidMail | SkipReason::InvalidPhone)).collect();
        assert_eq!(invalid.len(), 2);
        assert_eq!(invalid[0].value, "bad\\n* evil@x <reg> - 0");
        assert_eq!(invalid[1].value, "call me");
        assert_eq!(p.skips.len(), 4, "plus one disabled, one without a phone");
    }

    #[test]
    fn counts_without_rendering_dedup_across_configs() {
        let a = conf("a", "feeds = [\"allowed_senders\", \"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n");
        let b = conf("b", "feeds = [\"allowed_senders\", \"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n");
        let on = Some(true);
        let ra = roster(&[user("1", Some("x@y.z"), Some("12345"), on), user("2", Some("w@y.z"), None, on)]);
        let rb = roster(&[user("1", Some("X@y.z"), Some("99999"), on), user("3", Some("w@y.z"), Some("12345"), on)]);
        let i = instance(vec![a, b]);
        let full = full(&[&ra, &rb], &i);
        let counted = plan(&mut CurrentFiles::new(), &[&ra, &rb], &i, false).unwrap();
        for k in 0..counted.outputs.len() {
            assert_eq!(counted.outputs[k].after, text(&full, k).lines().count(), "{}", counted.outputs[k].output);
        }
        assert_eq!(text(&full, 0), "w@y.z\nx@y.z\n");
        assert_eq!(text(&full, 1), "w@y.z 12345\nx@y.z 12345\nx@y.z 99999\n");
    }

    #[test]
    fn diff_against_current_and_unchanged() {
        // The sample selects no accountEnabled.
        let i = instance(vec![conf("a", "include_disabled = true\n")]);
        let members = sample("group_transitivemembers_example1.json");
        let mut cur = CurrentFiles::new();
        cur.insert(Output::AllowedSenders, Some(b"old@contoso.com\n".to_vec()));
        let p = plan(&mut cur, &[&members], &i, true).unwrap();
        let o = &p.outputs[0];
        assert_eq!((o.before, o.after), (1, 1));
        assert_eq!((o.added, o.removed), (1, 1));
        assert_eq!(o.changes.added, ["group1@contoso.com"]);
        assert_eq!(o.changes.removed, ["old@contoso.com"]);
        cur.insert(Output::AllowedSenders, Some(b"group1@contoso.com\n".to_vec()));
        assert!(!plan(&mut cur, &[&members], &i, true).unwrap().outputs[0].changed);
    }

    #[test]
    fn a_streamed_current_file_is_unchanged_only_when_it_is_exactly_the_lines() {
        let i = instance(vec![conf("a", "")]);
        let members = [user("1", Some("b@x.com"), None, Some(true)), user("2", Some("a@x.com"), None, Some(true))];
        let roster = Roster::of(false, members.iter().map(MemberView::from));
        let mut p = Plan::new(&[&roster], &i);
        // A 3-byte buffer: every line crosses buffer boundaries.
        let mut same = |bytes: &[u8]| p.unchanged_in(0, std::io::BufReader::with_capacity(3, bytes)).unwrap();
        for differs in [&b""[..], b"a@x.com\n", b"a@x.com\nb@x.com", b"a@x.com\nb@x.com\n\n", b"a@x.com\nb@x.co\n"] {
            assert!(!same(differs), "{:?}", String::from_utf8_lossy(differs));
        }
        assert!(same(b"a@x.com\nb@x.com\n"));
        let o = &p.outputs[0];
        assert_eq!((o.before, o.after, o.added, o.removed, o.changed), (2, 2, 0, 0, false));
    }

    #[test]
    fn a_sorted_current_file_is_diffed_as_a_stream_exactly_as_by_lookup() {
        let i = instance(vec![conf("a", "")]);
        let members = [
            user("1", Some("b@x.com"), None, Some(true)),
            user("2", Some("d@x.com"), None, Some(true)),
            user("3", Some("f@x.com"), None, Some(true)),
        ];
        let roster = Roster::of(false, members.iter().map(MemberView::from));
        let files: [&[u8]; 6] = [
            b"a@x.com\nb@x.com\nc@x.com\n",
            b"b@x.com\r\nb@x.com\n\n  \nd@x.com\ng@x.com",
            b"",
            b"\n",
            b"z@x.com\na@x.com\nb@x.com\n",
            b"b@x.com\nd@x.com\nf@x.com\nf@x.com\n",
        ];
        for bytes in files {
            // The lookup a file out of order gets agrees with the stream on any file.
            let mut whole = Plan::new(&[&roster], &i);
            whole.diff_unsorted(0, std::io::BufReader::with_capacity(3, bytes), true).unwrap();
            let mut streamed = Plan::new(&[&roster], &i);
            let sorted = streamed.diff_sorted(0, std::io::BufReader::with_capacity(3, bytes), true).unwrap();
            let unsorted = bytes.starts_with(b"z");
            assert_eq!(sorted, !unsorted, "{:?}", String::from_utf8_lossy(bytes));
            if sorted {
                assert_eq!(streamed.outputs[0], whole.outputs[0], "{:?}", String::from_utf8_lossy(bytes));
            }
            // Through `plan`, whichever way it takes.
            let mut cur = CurrentFiles::new();
            cur.insert(Output::AllowedSenders, Some(bytes.to_vec()));
            assert_eq!(plan(&mut cur, &[&roster], &i, true).unwrap().outputs[0], whole.outputs[0]);
        }
    }

    fn user(id: &str, mail: Option<&str>, phone: Option<&str>, enabled: Option<bool>) -> Member {
        Member {
            id: id.into(),
            kind: ObjectKind::User,
            mail: mail.map(Into::into),
            mobile_phone: phone.map(Into::into),
            account_enabled: enabled,
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Hostile directory values: whatever `mail` and `mobilePhone` hold, every
    //! output line matches its strict format, and no other line changes.
    use super::*;
    use crate::config::entraid::Env;
    use crate::config::instance::OutputPath;
    use crate::files::trust::Trust;
    use crate::model::page::{Member, MemberView, ObjectKind, Text};
    use proptest::prelude::*;
    use std::path::Path;
    use std::sync::LazyLock;

    const C: &str = r"[!#$%&'+\-./0-9=?^_`a-z{|}~]+";
    static EMAIL: LazyLock<String> = LazyLock::new(|| format!("{C}@{C}"));
    static SENDER: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(&format!("^{}$", *EMAIL)).unwrap());
    static GSM: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(&format!(r"^{} \+?[0-9]{{5,20}}$", *EMAIL)).unwrap());
    static RULE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(&format!(r"^(\* {0} <reg> - 0|{0} \* <sms> - 0)$", *EMAIL)).unwrap());

    fn hostile() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just("\0".to_owned()),
            Just(" ".to_owned()),
            Just("*".to_owned()),
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("@".to_owned()),
            Just("* evil@example.com <reg> - 0".to_owned()),
            Just("evil@example.com * <sms> - 0\n".to_owned()),
            Just("x".repeat(10_000)),
            Just("Jörg".to_owned()),
            Just("bücher.example".to_owned()),
            Just("\u{2028}".to_owned()),
            Just("+358 40".to_owned()),
            "[a-z]{1,6}".prop_map(|s| s),
            any::<String>(),
        ];
        prop::collection::vec(pieces, 0..6).prop_map(|v| v.concat())
    }

    fn member(id: &str, mail: Option<Text>, phone: Option<Text>) -> Member {
        Member { id: id.into(), kind: ObjectKind::User, mail, mobile_phone: phone, account_enabled: Some(true) }
    }

    fn text() -> impl Strategy<Value = Option<Text>> {
        prop_oneof![
            Just(None),
            hostile().prop_map(|s| Some(Text::Str(s))),
            hostile().prop_map(|s| Some(Text::Undecodable(s))),
        ]
    }

    fn instance(sms: bool) -> Instance {
        let rule = if sms { "sms" } else { "registration" };
        let text = format!(
            "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"66666666-7777-8888-9999-000000000000\"\nclient_secret = \"x\"\ngroup_id = \"02bd9fd6-8f93-4758-87c3-1fb73740a315\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\naccess_rule = \"{rule}\"\n"
        );
        let c = EntraConf::parse(&text, Path::new("p.entraidconf"), &Env::default(), Trust::Trusted).unwrap();
        let outputs = Output::ALL
            .iter()
            .map(|o| (*o, OutputPath { path: PathBuf::from(o.default_path()), confined: true }))
            .collect();
        Instance { name: "gw".into(), dir: PathBuf::from("/server/gw"), configs: vec![c], outputs, cfg_files: vec![] }
    }

    fn lines(members: &[Member], inst: &Instance) -> Vec<(Output, Vec<String>)> {
        let r = Roster::of(true, members.iter().map(MemberView::from));
        let p = super::tests::full(&[&r], inst);
        p.outputs
            .iter()
            .enumerate()
            .map(|(i, o)| (o.output, super::tests::text(&p, i).lines().map(str::to_owned).collect()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn hostile_values_never_add_a_malformed_line_or_change_another(
            mail in text(),
            phone in text(),
            sms in any::<bool>(),
            normal in prop::collection::vec(("[a-z]{1,8}@[a-z]{1,8}\\.com", "\\+?[0-9]{5,12}"), 0..4),
        ) {
            let inst = instance(sms);
            let good: Vec<Member> = normal
                .iter()
                .enumerate()
                .map(|(i, (m, p))| member(&i.to_string(), Some(Text::Str(m.clone())), Some(Text::Str(p.clone()))))
                .collect();
            let mut all = good.clone();
            all.push(member("hostile", mail, phone));
            let before = lines(&good, &inst);
            let after = lines(&all, &inst);
            for ((output, old), (_, new)) in before.iter().zip(&after) {
                for l in new {
                    let re = match output {
                        Output::AllowedSenders => &*SENDER,
                        Output::GsmList => &*GSM,
                        Output::AccessRules => &*RULE,
                    };
                    prop_assert!(re.is_match(l) && l.len() <= 300, "{output}: {l:?}");
                }
                for l in old {
                    prop_assert!(new.contains(l), "{output}: lost {l:?}");
                }
                prop_assert!(new.len() <= old.len() + 1, "{output}: more than one new line: {new:?}");
            }
        }
    }
}
