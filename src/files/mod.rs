//! Files on disk: whose word a file is, opening paths without symlinks, atomic writes, the
//! instance lock, and the run and delta state in `state_dir`.

pub(crate) mod delta_state;
pub mod judged;
pub mod lock;
pub(crate) mod resolve;
pub mod state;
pub mod trust;
pub(crate) mod write;
