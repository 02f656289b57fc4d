//! The commands, side by side: sync, `check`, `test`, `alert-test`, and the generated man
//! page and completions.

pub(crate) mod alert_test;
pub(crate) mod check;
pub(crate) mod generate;
pub(crate) mod sync;
pub(crate) mod test_query;
