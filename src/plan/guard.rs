//! The guards against emptying or gutting a list (contract §5.6).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::global::GuardConfig;
use crate::error::Hint;
use crate::plan::OutputPlan;

/// A write the guards refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The instance.
    pub instance: String,
    /// The output file.
    pub path: PathBuf,
    /// Entries now.
    pub before: usize,
    /// Entries it would have.
    pub after: usize,
    /// Entries it would lose.
    pub removed: usize,
    /// Which limit, in words.
    pub limit: String,
    /// When the window tripped: the size the output had at the start of the window.
    pub window_start: Option<usize>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instance `{}`: refusing to write {}: it would go from {} to {} entries ({} removed)",
            self.instance,
            self.path.display(),
            self.before,
            self.after,
            self.removed,
        )?;
        if let Some(start) = self.window_start {
            let lost = start.saturating_sub(self.after);
            write!(f, ", and from {start} to {} ({lost} lost) since the start of the window", self.after)?;
        }
        write!(f, ", {}", self.limit)
    }
}

impl std::error::Error for Refusal {}

impl Hint for Refusal {
    fn hint(&self) -> Option<String> {
        Some(format!(
            "nothing of instance `{0}` was written. Check the group's membership in Entra ID; if the change is intended, run `usersync -i {0} --force` once ([guard] max_removed, max_removed_percent and window_hours set the limits)",
            self.instance
        ))
    }
}

/// What each output lost within `[guard] window_hours`: many small runs (a timer every two
/// minutes) must not drain a list that one hourly run would have been refused to.
#[derive(Debug)]
pub struct Window<'a> {
    /// Output path → (Unix time, entries) after each write, oldest first.
    pub sizes: &'a BTreeMap<String, Vec<(u64, u64)>>,
    /// Unix seconds now.
    pub now: u64,
    /// `[guard] window_hours`.
    pub span: std::time::Duration,
}

impl Window<'_> {
    /// The size `path` had at the start of the window: its size after the last write before
    /// then, or after the first write known (a younger history); `None` without history.
    #[must_use]
    pub fn start(&self, path: &Path) -> Option<u64> {
        let samples = self.sizes.get(&path.display().to_string())?;
        let start = self.now.saturating_sub(self.span.as_secs());
        samples.iter().rev().find(|(t, _)| *t <= start).or_else(|| samples.first()).map(|(_, n)| *n)
    }
}

/// A new sample of `path`'s size, `entries` at `now`, in `sizes`; samples older than needed
/// for a window of `span` go, and so do outputs not written within it. With `restart`
/// (`--force`) the history starts over here.
pub fn remember(
    sizes: &mut BTreeMap<String, Vec<(u64, u64)>>,
    path: &Path,
    entries: u64,
    now: u64,
    span: std::time::Duration,
    restart: bool,
) {
    let samples = sizes.entry(path.display().to_string()).or_default();
    if restart {
        samples.clear();
    }
    samples.push((now, entries));
    // Keep the last sample at or before the window's start (its size then), and after it.
    let start = now.saturating_sub(span.as_secs());
    if let Some(keep) = samples.iter().rposition(|(t, _)| *t <= start) {
        samples.drain(..keep);
    }
    // An output not written within the window has the size it had at its start: this run's
    // own check covers it, and its history goes. So paths the gateway's account makes up
    // (a new list name every run) cannot grow the state without bound.
    sizes.retain(|_, s| s.last().is_some_and(|(t, _)| *t > start));
}

/// Whether losing `removed` of `before` entries passes the limits.
fn over(cfg: &GuardConfig, before: usize, removed: usize) -> Option<String> {
    if removed as u64 > cfg.max_removed {
        Some(format!("more than max_removed = {}", cfg.max_removed))
    } else if removed > 10 && (removed as u64) * 100 > (before as u64) * cfg.max_removed_percent {
        Some(format!("more than max_removed_percent = {}% of its entries", cfg.max_removed_percent))
    } else {
        None
    }
}

/// Every guard a changed output of `plan` trips: this run's change, and, with `window`, the
/// loss since the start of the window.
#[must_use]
pub fn check(instance: &str, outputs: &[OutputPlan], cfg: &GuardConfig, window: Option<&Window<'_>>) -> Vec<Refusal> {
    outputs
        .iter()
        .filter(|o| o.changed)
        .filter_map(|o| {
            let refusal = |limit: String, window_start| Refusal {
                instance: instance.to_owned(),
                path: o.path.clone(),
                before: o.before,
                after: o.after,
                removed: o.removed,
                limit,
                window_start,
            };
            if o.after == 0 && o.before > 0 {
                return Some(refusal("which would empty it".to_owned(), None));
            }
            if let Some(limit) = over(cfg, o.before, o.removed) {
                return Some(refusal(limit, None));
            }
            let start = usize::try_from(window.filter(|w| !w.span.is_zero())?.start(&o.path)?).ok()?;
            let lost = start.saturating_sub(o.after);
            over(cfg, start, lost).map(|limit| {
                let hours = cfg.window.as_secs() / 3600;
                refusal(format!("{limit} within [guard] window_hours = {hours}"), Some(start))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::output::Output;

    fn plan_removing(before: usize, removed: usize) -> Vec<OutputPlan> {
        let after = before - removed;
        vec![OutputPlan {
            output: Output::AllowedSenders,
            path: "/f".into(),
            before,
            after,
            added: 0,
            removed,
            changes: crate::plan::Changes::default(),
            skipped: std::collections::BTreeMap::default(),
            changed: removed > 0,
            own_order: None,
        }]
    }

    #[test]
    fn limits() {
        let g = GuardConfig { max_removed: 500, max_removed_percent: 50, window: std::time::Duration::ZERO };
        let trips = |b, r| !check("gw", &plan_removing(b, r), &g, None).is_empty();
        assert!(trips(1, 1), "emptying");
        assert!(!trips(2, 1), "50% of 2 but only 1 removed");
        assert!(!trips(20, 10), "10 removed is never a percentage trip");
        assert!(trips(21, 11), "11 of 21 > 50%");
        assert!(!trips(22, 11), "11 of 22 = 50%");
        assert!(trips(10_000, 501), "max_removed");
        assert!(!trips(10_000, 500));
        let r = &check("gw", &plan_removing(21, 11), &g, None)[0];
        assert_eq!(r.to_string(), "instance `gw`: refusing to write /f: it would go from 21 to 10 entries (11 removed), more than max_removed_percent = 50% of its entries");
    }

    #[test]
    fn the_window_sums_small_losses() {
        let span = std::time::Duration::from_secs(24 * 3600);
        let g = GuardConfig { max_removed: 500, max_removed_percent: 50, window: span };
        let mut sizes = BTreeMap::new();
        // 3,000 entries a day ago, then 100 fewer every two minutes.
        remember(&mut sizes, Path::new("/f"), 3000, 1_000, span, false);
        let mut size = 3000;
        let mut now = 1_000 + 86_400;
        for _ in 0..4 {
            size -= 100;
            remember(&mut sizes, Path::new("/f"), size, now, span, false);
            now += 120;
        }
        let w = Window { sizes: &sizes, now, span };
        assert_eq!(w.start(Path::new("/f")), Some(3000));
        let trips = |before, removed| !check("gw", &plan_removing(before, removed), &g, Some(&w)).is_empty();
        assert!(!trips(2600, 100), "500 lost in the window: at the limit");
        assert!(trips(2600, 101), "501 lost in the window");
        let r = &check("gw", &plan_removing(2600, 101), &g, Some(&w))[0];
        assert_eq!(
            r.to_string(),
            "instance `gw`: refusing to write /f: it would go from 2600 to 2499 entries (101 removed), and from 3000 to 2499 (501 lost) since the start of the window, more than max_removed = 500 within [guard] window_hours = 24"
        );
        // --force starts the window over.
        remember(&mut sizes, Path::new("/f"), 2499, now, span, true);
        let w = Window { sizes: &sizes, now, span };
        assert_eq!(w.start(Path::new("/f")), Some(2499));
    }

    #[test]
    fn outputs_not_written_within_the_window_are_forgotten() {
        let span = std::time::Duration::from_secs(3600);
        let mut sizes = BTreeMap::new();
        // A new made-up list name every run for a day: the history keeps the last hour's.
        for run in 0..1_000u64 {
            remember(&mut sizes, Path::new(&format!("/made-up/{run}")), 10, run * 90, span, false);
        }
        assert_eq!(sizes.len(), 40, "{:?}", sizes.keys().next());
        // A list last written before the window: its size then is its size now.
        remember(&mut sizes, Path::new("/f"), 5, 1_000 * 90 + 3_600, span, false);
        assert_eq!(sizes.len(), 1);
    }
}
