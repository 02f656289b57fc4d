//! The checked configuration: the global `usersync.toml` (with its `[alert]` table), each
//! `.entraidconf`, the gateway's `.cfg` files, instances, secrets, credentials and clouds.

pub(crate) mod alert;
pub mod cfgfile;
pub(crate) mod credential;
pub(crate) mod endpoints;
pub mod entraid;
#[cfg(test)]
pub(crate) mod example;
pub mod global;
pub mod instance;
pub(crate) mod secret;
