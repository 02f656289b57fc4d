//! What a person at a terminal sees: the log on stderr and the live progress lines.

pub(crate) mod log;
pub(crate) mod progress;
