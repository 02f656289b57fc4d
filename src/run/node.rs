//! The active/passive check: runs the gateway's status command (contract §5.1).

use std::process::Stdio;
use std::time::Duration;

use crate::config::global::NodeConfig;

/// How long the status command may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the status command said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Its trimmed output is one of `active_states`.
    Active(String),
    /// Anything else.
    Passive(String),
}

/// The status command could not say.
#[derive(Debug, thiserror::Error)]
#[error("node status command `{command}` {detail}; nothing was written")]
pub struct NodeError {
    /// The command line.
    pub command: String,
    /// What went wrong.
    pub detail: String,
}

impl crate::error::Hint for NodeError {
    fn hint(&self) -> Option<String> {
        Some(format!(
            "run `{}` by hand and fix it, or correct [node] status_command in usersync.toml; on a single node remove [node] (or pass --ignore-node-status)",
            self.command
        ))
    }
}

/// Runs the status command (at most `TIMEOUT`) and classifies its output.
pub async fn check(cfg: &NodeConfig) -> Result<NodeState, NodeError> {
    let command = cfg.status_command.join(" ");
    let fail = |detail: String| NodeError { command: command.clone(), detail };
    let (program, args) = cfg.status_command.split_first().ok_or_else(|| fail("is empty".into()))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("did not finish within {} s", TIMEOUT.as_secs())))?
        .map_err(|e| fail(format!("failed: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("exited with {}: {}", out.status, stderr.trim().escape_debug())));
    }
    let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if cfg.active_states.iter().any(|s| s == &state) {
        Ok(NodeState::Active(state))
    } else {
        Ok(NodeState::Passive(state))
    }
}
