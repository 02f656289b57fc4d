//! Lists patched by what changed: when an instance's files are exactly what its last plan
//! wrote from its groups' old states, each new list is the old one less the lines that only
//! changed members gave, plus the lines they give now. Found without reading every member:
//! whether anyone else gives a line is asked of the old state's index by mail.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead as _, Read as _};

use crate::config::entraid::EntraConf;
use crate::config::instance::Instance;
use crate::files::delta_state::{Opened, Overlay, Record, Unusable};
use crate::model::normalize::SkipReason;
use crate::model::output::Output;
use crate::model::roster::Roster;
use crate::plan::{self, Changes, OutputPlan, Skip};

/// A group's members before the run, as a patch asks about them.
pub trait Members {
    /// The member `id` as it was, if it was one.
    fn lookup(&self, id: &str) -> Result<Option<Record>, Unusable>;
    /// The members that had normalised mail `mail`, except those `except` names.
    fn with_mail(&self, mail: &[u8], except: &Overlay) -> Result<Vec<Record>, Unusable>;
}

impl Members for Opened {
    fn lookup(&self, id: &str) -> Result<Option<Record>, Unusable> {
        Opened::lookup(self, id)
    }

    fn with_mail(&self, mail: &[u8], except: &Overlay) -> Result<Vec<Record>, Unusable> {
        Opened::with_mail(self, mail, except)
    }
}

/// The group of one config: its members before the run, and what changed.
pub struct Group<'a> {
    /// Its members before the run.
    pub old: &'a dyn Members,
    /// What each member that changed is now (`None`: gone).
    pub changes: &'a Overlay,
    /// Whether its state keeps phones (a roster of it notes users without one).
    pub phones: bool,
}

/// What the lists were: per output its entries and skips, and the instance's skips (as the
/// last run's report said them).
#[derive(Debug, Clone, Default)]
pub struct Base {
    /// Per output: entries, and skips by reason.
    pub outputs: BTreeMap<Output, (usize, BTreeMap<SkipReason, u64>)>,
    /// The instance's skips by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

/// The lines an output gains and loses, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Edit {
    added: Vec<Vec<u8>>,
    removed: Vec<Vec<u8>>,
}

/// An instance's lists, patched.
#[derive(Debug, Clone)]
pub struct Patch {
    /// One entry per output of the instance, in `Output` order.
    pub outputs: Vec<OutputPlan>,
    /// Skips by reason, over the instance.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// The skips of the changed members as they are now.
    pub skips: Vec<Skip>,
    edits: Vec<Edit>,
}

/// What one member gives under one config: lines (with their mail) and skips.
#[derive(Default)]
struct Gives {
    lines: Vec<(Output, Vec<u8>, Vec<u8>)>,
    /// (reason, only `gsm_list`), and the note for the log.
    notes: Vec<(SkipReason, bool, crate::model::roster::Note)>,
}

fn gives(c: &EntraConf, phones: bool, rec: Option<&Record>) -> Gives {
    let mut g = Gives::default();
    let Some(rec) = rec else { return g };
    let r = Roster::of(phones, [rec.view()]);
    if r.len() == 1 {
        for o in &c.feeds {
            let mut line = Vec::new();
            if plan::line_of(c, &r, 0, *o, &mut line) {
                g.lines.push((*o, line, r.mail(0).to_vec()));
            }
        }
    }
    for n in r.notes() {
        if let Some(gsm_only) = plan::note_applies(c, n) {
            g.notes.push((n.reason, gsm_only, n.clone()));
        }
    }
    g
}

/// Whether a line of `output` is given by changed members before and after.
#[derive(Default)]
struct Affected {
    mail: Vec<u8>,
    before: bool,
    after: bool,
}

/// Counts by reason, moved by signed amounts.
type Moves = BTreeMap<SkipReason, i64>;

fn moved(base: &BTreeMap<SkipReason, u64>, moves: &Moves) -> Option<BTreeMap<SkipReason, u64>> {
    let mut out = base.clone();
    for (r, d) in moves {
        let n = i64::try_from(out.get(r).copied().unwrap_or(0)).ok()?.checked_add(*d)?;
        out.insert(*r, u64::try_from(n).ok()?);
    }
    out.retain(|_, n| *n > 0);
    Some(out)
}

/// The lists of `instance` patched: `groups[i]` is the group of `instance.configs[i]`, and
/// `base` what its lists were, written from exactly the groups' old members. `None` when
/// the counts do not add up (then only a full plan can say).
pub fn patch(instance: &Instance, groups: &[Group<'_>], base: &Base, detail: bool) -> Result<Option<Patch>, Unusable> {
    let configs = &instance.configs;
    let mut affected: BTreeMap<Output, BTreeMap<Vec<u8>, Affected>> = BTreeMap::new();
    let (mut per_output, mut total): (BTreeMap<Output, Moves>, Moves) = Default::default();
    let mut skips = Vec::new();
    for (c, g) in configs.iter().zip(groups) {
        let mut ids: Vec<(&String, &Option<Record>)> = g.changes.iter().collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        for (id, now) in ids {
            let was = g.old.lookup(id)?;
            for (rec, after) in [(was.as_ref(), false), (now.as_ref(), true)] {
                let given = gives(c, g.phones, rec);
                let sign = if after { 1 } else { -1 };
                for (o, line, mail) in given.lines {
                    let a = affected.entry(o).or_default().entry(line).or_default();
                    a.mail = mail;
                    if after {
                        a.after = true;
                    } else {
                        a.before = true;
                    }
                }
                for (reason, gsm_only, note) in given.notes {
                    *total.entry(reason).or_default() += sign;
                    for o in c.feeds.iter().filter(|o| !gsm_only || **o == Output::GsmList) {
                        *per_output.entry(*o).or_default().entry(reason).or_default() += sign;
                    }
                    if after {
                        let (id, value) = (note.id.to_string(), note.value.to_string());
                        skips.push(Skip { config: c.path.clone(), id, reason, value });
                    }
                }
            }
        }
    }
    // Whether a member no change names gives the line: asked once per (config, mail).
    let mut others: HashMap<(usize, Vec<u8>), Vec<Record>> = HashMap::new();
    let mut given_by_others = |o: Output, line: &[u8], mail: &[u8]| -> Result<bool, Unusable> {
        for (i, (c, g)) in configs.iter().zip(groups).enumerate().filter(|(_, (c, _))| c.feeds.contains(&o)) {
            let key = (i, mail.to_vec());
            if !others.contains_key(&key) {
                let found = g.old.with_mail(mail, g.changes)?;
                others.insert(key.clone(), found);
            }
            for r in others.get(&key).into_iter().flatten() {
                if gives(c, g.phones, Some(r)).lines.iter().any(|(lo, l, _)| *lo == o && l == line) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    };
    let mut outputs = Vec::new();
    let mut edits = Vec::new();
    for output in instance.outputs.keys() {
        let Some((entries, skipped)) = base.outputs.get(output) else { return Ok(None) };
        let mut edit = Edit::default();
        for (line, a) in affected.remove(output).unwrap_or_default() {
            if a.before == a.after || given_by_others(*output, &line, &a.mail)? {
                continue;
            }
            if a.after {
                edit.added.push(line);
            } else {
                edit.removed.push(line);
            }
        }
        let Some(after) = (entries + edit.added.len()).checked_sub(edit.removed.len()) else { return Ok(None) };
        let Some(skipped) = moved(skipped, &per_output.remove(output).unwrap_or_default()) else { return Ok(None) };
        let text = |l: &Vec<u8>| String::from_utf8_lossy(l).into_owned();
        let changes = if detail {
            let removed = edit.removed.iter().take(plan::MAX_LISTED).map(text).collect();
            Changes { added: edit.added.iter().map(text).collect(), removed }
        } else {
            Changes::default()
        };
        outputs.push(OutputPlan {
            output: *output,
            path: instance.outputs[output].path.clone(),
            before: *entries,
            after,
            added: edit.added.len(),
            removed: edit.removed.len(),
            changes,
            skipped,
            changed: !(edit.added.is_empty() && edit.removed.is_empty()),
            own_order: None,
        });
        edits.push(edit);
    }
    let Some(skipped) = moved(&base.skipped, &total) else { return Ok(None) };
    Ok(Some(Patch { outputs, skipped, skips, edits }))
}

impl Patch {
    /// Writes output `i`'s new content: the lines of `old` (its file as the last run left
    /// it), less those removed, with those added in their places. An error, and nothing
    /// kept, if `old` is not such a file: out of order, a removed line missing, an added
    /// line there already, a line too long, or another number of lines than it had.
    pub fn write_to(&self, i: usize, mut old: impl io::BufRead, w: &mut impl io::Write) -> io::Result<()> {
        let not_ours = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("it is not the list the last run left ({what})"))
        };
        let edit = &self.edits[i];
        let (mut added, mut removed) = (edit.added.iter().peekable(), edit.removed.iter().peekable());
        let (mut line, mut last) = (Vec::new(), Vec::new());
        let mut read = 0;
        loop {
            line.clear();
            if (&mut old).take(plan::MAX_LINE as u64 + 1).read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.pop() != Some(b'\n') {
                return Err(not_ours("a line too long, or cut short"));
            }
            if read > 0 && line <= last {
                return Err(not_ours("a line out of order"));
            }
            read += 1;
            while let Some(a) = added.next_if(|a| **a < line) {
                w.write_all(a)?;
                w.write_all(b"\n")?;
            }
            if added.peek().is_some_and(|a| **a == line) {
                return Err(not_ours("a line to add is there already"));
            }
            match removed.peek() {
                Some(r) if **r == line => {
                    removed.next();
                }
                Some(r) if **r < line => return Err(not_ours("a line to remove is missing")),
                _ => {
                    w.write_all(&line)?;
                    w.write_all(b"\n")?;
                }
            }
            std::mem::swap(&mut line, &mut last);
        }
        if removed.next().is_some() {
            return Err(not_ours("a line to remove is missing"));
        }
        if self.outputs.get(i).is_some_and(|o| o.before != read) {
            return Err(not_ours("another number of lines"));
        }
        for a in added {
            w.write_all(a)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
