//! The guards against emptying or gutting a list (contract §5.6).

use std::fmt;
use std::path::PathBuf;

use crate::config::GuardConfig;
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
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instance `{}`: refusing to write {}: it would go from {} to {} entries ({} removed), {}",
            self.instance,
            self.path.display(),
            self.before,
            self.after,
            self.removed,
            self.limit
        )
    }
}

impl std::error::Error for Refusal {}

impl Hint for Refusal {
    fn hint(&self) -> Option<String> {
        Some(format!(
            "nothing of instance `{0}` was written. Check the group's membership in Entra ID; if the change is intended, run `usersync -i {0} --force` once ([guard] max_removed and max_removed_percent set the limits)",
            self.instance
        ))
    }
}

/// Every guard a changed output of `plan` trips.
#[must_use]
pub fn check(instance: &str, outputs: &[OutputPlan], cfg: &GuardConfig) -> Vec<Refusal> {
    outputs
        .iter()
        .filter(|o| o.changed)
        .filter_map(|o| {
            let removed = o.removed;
            let limit = if o.after == 0 && o.before > 0 {
                "which would empty it".to_owned()
            } else if removed as u64 > cfg.max_removed {
                format!("more than max_removed = {}", cfg.max_removed)
            } else if removed > 10 && (removed as u64) * 100 > (o.before as u64) * cfg.max_removed_percent {
                format!("more than max_removed_percent = {}% of its entries", cfg.max_removed_percent)
            } else {
                return None;
            };
            Some(Refusal {
                instance: instance.to_owned(),
                path: o.path.clone(),
                before: o.before,
                after: o.after,
                removed,
                limit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Output;

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
        let g = GuardConfig { max_removed: 500, max_removed_percent: 50 };
        let trips = |b, r| !check("gw", &plan_removing(b, r), &g).is_empty();
        assert!(trips(1, 1), "emptying");
        assert!(!trips(2, 1), "50% of 2 but only 1 removed");
        assert!(!trips(20, 10), "10 removed is never a percentage trip");
        assert!(trips(21, 11), "11 of 21 > 50%");
        assert!(!trips(22, 11), "11 of 22 = 50%");
        assert!(trips(10_000, 501), "max_removed");
        assert!(!trips(10_000, 500));
        let r = &check("gw", &plan_removing(21, 11), &g)[0];
        assert_eq!(r.to_string(), "instance `gw`: refusing to write /f: it would go from 21 to 10 entries (11 removed), more than max_removed_percent = 50% of its entries");
    }
}
