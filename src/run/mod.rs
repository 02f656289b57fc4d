//! One run: what it starts from, the node check, fetching every group, what each
//! instance's lists were last written from, and what the run says (stdout, the metrics
//! textfile, the alert mail).

pub mod alert;
pub(crate) mod fetch;
pub(crate) mod memo;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod report;
pub(crate) mod start;
