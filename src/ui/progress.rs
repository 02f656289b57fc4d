//! Live progress on a terminal: one line per group being read (its configs, pages, members so
//! far, elapsed time), replaced by a summary when it ends. Drawn only when stderr is a
//! terminal and `-q` is not given; otherwise every function here does nothing, so cron, the
//! unit, pipes and the tests see exactly the log they always did.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The bars of this process, once [`enable`] was called.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Draws progress lines on stderr from now on. Call once, before any [`Line`], and only when
/// stderr is a terminal.
pub fn enable() {
    let _ = BARS.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
}

/// Writes `bytes` to stderr without tearing the bars: they are cleared, the bytes written,
/// and the bars drawn again below. Without bars, a plain write.
pub fn write_stderr(bytes: &[u8]) -> std::io::Result<()> {
    let write = || std::io::stderr().lock().write_all(bytes);
    match BARS.get() {
        Some(bars) => bars.suspend(write),
        None => write(),
    }
}

/// One group's live line. Cloning gives another handle to the same line; without bars it
/// is inert.
#[derive(Clone)]
pub struct Line {
    bar: Option<ProgressBar>,
    prefix: String,
    started: Instant,
}

impl Line {
    /// A line for the group `group` read for `label` (the configs that name it).
    #[must_use]
    pub fn start(label: &str, group: &str) -> Self {
        let started = Instant::now();
        // The group's first eight hex digits: enough to tell groups apart on one screen,
        // short enough that the line fits 80 columns. The log and the report give it whole.
        let short = group.get(..8).map_or_else(|| group.to_owned(), |g| format!("{g}…"));
        let prefix = format!("{label} group {short}");
        let Some(bars) = BARS.get() else { return Self { bar: None, prefix, started } };
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = bars.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(prefix.clone())
                .with_message("asking Graph")
                // A line its task never finished (the deadline aborted it) goes away.
                .with_finish(ProgressFinish::AndClear),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Self { bar: Some(bar), prefix, started }
    }

    /// `pages` pages read so far, holding `members` objects.
    pub fn page(&self, pages: u64, members: u64) {
        if let Some(bar) = &self.bar {
            let noun = if pages == 1 { "page" } else { "pages" };
            bar.set_message(format!("{} {noun}, {} members", thousands(pages), thousands(members)));
        }
    }

    /// What the line is doing now, when it is not reading pages.
    pub fn status(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_owned());
        }
    }

    /// Replaces the line with its summary (`done`: read, or failed), printed above the
    /// lines still running, so that nothing is left drawn once every group has ended.
    pub fn finish(&self, done: bool, summary: &str) {
        let (Some(bar), Some(bars)) = (&self.bar, BARS.get()) else { return };
        bar.finish_and_clear();
        bars.remove(bar);
        let mark = if done { "✓" } else { "✗" };
        let seconds = self.started.elapsed().as_secs_f64();
        let text = format!("{mark} {}: {summary} in {seconds:.1} s\n", self.prefix);
        let _ = write_stderr(text.as_bytes());
    }
}

/// `12345` as `12,345`.
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn without_bars_a_line_is_inert() {
        let l = Line::start("gw/staff", "g");
        assert!(l.bar.is_none());
        l.page(1, 2);
        l.finish(true, "done");
    }
}
