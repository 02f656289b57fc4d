//! The values usersync works with, none of them doing I/O: checked ids and dates, the
//! outputs and their line formats, a Graph page parsed, a group's members normalised.

pub mod date;
pub(crate) mod ids;
pub mod normalize;
pub mod output;
pub mod page;
pub(crate) mod render;
pub(crate) mod roster;
