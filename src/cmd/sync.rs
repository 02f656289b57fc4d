//! The sync, in order: node → config → lock → fetch → plan → guard → write → report.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use std::io::Write as _;

use crate::cli::{Cli, Format};
use crate::config::credential::ClientAuth;
use crate::config::entraid::Env;
use crate::config::global::Config;
use crate::config::instance::{self, Instance, Loaded};
use crate::error::{render_error, ConfigError, Hint, Outcome};
use crate::files::state::State;
use crate::files::write::WriteError;
use crate::files::{lock, write};
use crate::graph::{FetchError, GraphClient};
use crate::model::normalize::SkipReason;
use crate::model::output::Output;
use crate::model::roster::Roster;
use crate::plan::{self, Plan};
use crate::plan::{guard, patch};
use crate::run::fetch::{self, FetchKey};
use crate::run::memo::{self, Memo};
use crate::run::metrics::{self, RunFacts};
use crate::run::node::{self, NodeState};
use crate::run::report::{
    Action, CredentialReport, ErrorReport, InstanceOutcome, InstanceReport, NodeReport, OutputReport, ReadReport,
    Report,
};
use crate::run::start::Stop;

/// Syncs every instance `cli` names (contract order above); the exit code follows §7.
pub fn run(cli: &Cli) -> Result<ExitCode, Stop> {
    let started = Instant::now();
    let (config, root) = match crate::run::start::setup(cli, &Env::from_process()) {
        Ok(x) => x,
        Err(e) => {
            print_report(cli, &fatal_report(cli, &e));
            return Err(e);
        }
    };
    let result = crate::run::start::runtime().and_then(|rt| {
        let State { sizes, locked_since, .. } = State::load(&config.state_dir);
        rt.block_on(
            SyncRun { cli, config: &config, root: &root, sizes, locked_since, fed: std::sync::Mutex::default() }
                .execute(),
        )
    });
    let report = match &result {
        Ok(r) => r.clone(),
        Err(e) => fatal_report(cli, e),
    };
    if result.is_ok() || cli.format == Format::Json {
        print_report(cli, &report);
    }
    if !cli.dry_run {
        record(&config, &report, started, cli.instances.is_empty(), cli.force);
    }
    result.map(|r| ExitCode::from(r.exit_code))
}

/// The report of a run stopped before any instance.
fn fatal_report(cli: &Cli, e: &Stop) -> Report {
    let mut r =
        Report { dry_run: cli.dry_run, exit_code: e.outcome().code(), errors: e.reports(), ..Report::default() };
    // A failed node check: whether this node is active is unknown.
    r.node.checked = matches!(e, Stop::Node(_));
    r
}

fn print_report(cli: &Cli, report: &Report) {
    // Text mode prints nothing for a fatal error; --format json always prints one document.
    if report.errors.is_empty() || cli.format == Format::Json {
        // Nothing useful can be done if stdout is gone; the exit code still tells.
        let _ = std::io::stdout().lock().write_all(report.render(cli.format, cli.verbose > 0).as_bytes());
    }
}

/// How much longer than `[http] deadline_seconds` a lock may be held before the run holding
/// it is taken for hung.
const LOCK_SLACK: u64 = 60;

/// How old the saved time of an instance's last success may grow while nothing else of
/// the run state changes (an unchanged run writes nothing): a failing run's metrics say
/// when it last synced, to the hour.
const LAST_SUCCESS_HEARTBEAT: u64 = 3600;

/// What a run adds to the run state (successes, resyncs, drift, alerts); whether anything
/// changed, and whether an alert was due that no provider delivered.
fn remember(
    config: &Config,
    report: &Report,
    state: &mut State,
    now: std::time::Duration,
    (whole_root, forced): (bool, bool),
) -> (bool, bool) {
    let mut changed = false;
    for i in report.instances.iter().filter(|i| i.outcome == InstanceOutcome::Ok) {
        // A heartbeat: saved when an hour old (or the clock went back), or with anything
        // else; the metrics of this run say the exact time all the same.
        let last = state.last_success.insert(i.name.clone(), now.as_secs());
        changed |= last.is_none_or(|t| t > now.as_secs() || now.as_secs() - t >= LAST_SUCCESS_HEARTBEAT);
    }
    for i in &report.instances {
        for r in &i.reads {
            let config = r.config.display().to_string();
            if let Some(reason) = r.reason.as_deref().and_then(|r| r.strip_prefix("resync:")) {
                let per = state.delta_resyncs.entry(i.name.clone()).or_default().entry(config.clone()).or_default();
                *per.entry(reason.to_owned()).or_default() += 1;
                changed = true;
            }
            if let Some(d) = r.drift {
                state.delta_drift.entry(i.name.clone()).or_default().insert(config, d);
                changed = true;
            }
        }
    }
    // Since when each instance's lock has been found held; forgotten once a run had it, and
    // on a passive node (which runs no instance: an old time would make the first run that
    // finds a lock held after it take a live run for a hung one).
    if report.node.active == Some(false) && !state.locked_since.is_empty() {
        state.locked_since.clear();
        changed = true;
    }
    for i in &report.instances {
        match i.locked_since {
            Some(t) => changed |= state.locked_since.insert(i.name.clone(), t) != Some(t),
            None => changed |= state.locked_since.remove(&i.name).is_some(),
        }
    }
    // The window guard's memory: each output written, and its size now. A forced run makes
    // the lists as they are the window's new start.
    for o in
        report.instances.iter().flat_map(|i| &i.outputs).filter(|o| o.action == crate::run::report::Action::Written)
    {
        let after = o.after.unwrap_or_default() as u64;
        crate::plan::guard::remember(&mut state.sizes, &o.path, after, now.as_secs(), config.guard.window, forced);
        changed = true;
    }
    let mut alert_failed = false;
    if let Some(alert) = &config.alert {
        let before = state.alerts.clone();
        alert_failed =
            crate::run::alert::after_run(alert, &config.http, report, &mut state.alerts, now.as_secs(), whole_root);
        changed |= state.alerts != before;
    }
    (changed, alert_failed)
}

/// After a real run: remember successes in `state_dir`, write the metrics textfile.
/// Neither changes the exit code; a failure is logged.
/// `whole_root`: the run covered every instance under the server root (no `-i`).
fn record(config: &Config, report: &Report, started: Instant, whole_root: bool, forced: bool) {
    let now = crate::model::date::since_epoch();
    let (state, alert_failed) =
        State::update(&config.state_dir, |state| remember(config, report, state, now, (whole_root, forced)));
    if let Some(path) = &config.metrics_textfile {
        let facts = RunFacts {
            report,
            state: &state,
            now: now.as_secs_f64(),
            duration: started.elapsed().as_secs_f64(),
            alert_failed,
        };
        // node-exporter reads it under its own user: world-readable, whatever the umask.
        if let Err(e) = write::write_file(path, 0o644, metrics::render(&facts).as_bytes()) {
            let hint = e.hint().unwrap_or_default();
            tracing::error!(textfile = %path.display(), error = %e, %hint, "cannot write the metrics textfile; the sync itself is done");
        }
    }
}

/// The credentials whose expiry is known: each config's, then each alert provider's.
fn credential_reports(instances: &[Loaded], config: &Config) -> Vec<CredentialReport> {
    let kind = |auth: &ClientAuth| if matches!(auth, ClientAuth::Certificate(_)) { "certificate" } else { "secret" };
    let mut out = Vec::new();
    for i in instances {
        for c in &i.configs {
            let Some(expires) = c.expires else { continue };
            out.push(CredentialReport {
                instance: Some(i.name.clone()),
                config: c.path.clone(),
                provider: None,
                kind: kind(&c.auth),
                expires,
            });
        }
    }
    out.extend(config.alert.iter().flat_map(|a| &a.providers).filter_map(|p| {
        Some(CredentialReport {
            instance: None,
            config: config.path.clone().unwrap_or_default(),
            provider: Some(p.label()),
            kind: kind(&p.credentials()?.auth),
            expires: p.expires?,
        })
    }));
    out
}

/// A sync run: what it was given, and what it carries from one instance to the next.
struct SyncRun<'a> {
    cli: &'a Cli,
    config: &'a Config,
    root: &'a Path,
    /// Each output's sizes after its recent writes, for the window guard.
    sizes: BTreeMap<String, Vec<(u64, u64)>>,
    /// Since when runs have found each instance's lock held.
    locked_since: BTreeMap<String, u64>,
    /// Per group: the outputs it feeds, and their bytes as this run left them.
    fed: std::sync::Mutex<HashMap<FetchKey, BTreeMap<PathBuf, u64>>>,
}

impl SyncRun<'_> {
    async fn execute(&self) -> Result<Report, Stop> {
        let mut report = Report { dry_run: self.cli.dry_run, ..Report::default() };
        let mut outcome = Outcome::Success;

        // 1. Node check, before anything under the server root is read.
        if let Some(n) = self.node_config() {
            report.node.checked = true;
            match node::check(n).await {
                Ok(NodeState::Active(s)) => {
                    report.node = NodeReport { checked: true, active: Some(true), state: Some(s) };
                }
                Ok(NodeState::Passive(s)) => {
                    report.node = NodeReport { checked: true, active: Some(false), state: Some(s.clone()) };
                    if !self.cli.dry_run {
                        tracing::info!(state = %s.escape_debug(), "node is passive: nothing contacted, nothing written");
                        return Ok(report);
                    }
                    tracing::warn!(state = %s.escape_debug(), "node is passive: a real run would write nothing; dry run goes on");
                }
                Err(e) if self.cli.dry_run => {
                    crate::ui::log::eprint_error(&render_error(&e));
                    outcome = Outcome::Failed;
                }
                Err(e) => return Err(e.into()),
            }
        }

        // 2. Every instance's configuration, all checked before anything is contacted.
        let (instances, broken) = self.load_instances()?;
        for ir in broken {
            print_errors(&ir.errors);
            outcome = outcome.max(ir.outcome.exit());
            report.instances.push(ir);
        }
        report.credentials = credential_reports(&instances, self.config);
        let client = Arc::new(GraphClient::new(&self.config.http).map_err(|e| {
            Stop::from(ConfigError::new(
                self.config.http.ca_bundle.as_ref().map_or(PathBuf::from("[http]"), |(p, _)| p.clone()),
                e.to_string(),
                e.hint().unwrap_or_default(),
            ))
        })?);

        // 3. Locks (a dry run writes nothing, so takes none).
        let mut runnable = Vec::new();
        let mut locks = Vec::new();
        for inst in instances {
            if self.cli.dry_run {
                runnable.push(inst);
                continue;
            }
            match lock::acquire(&inst.entraid) {
                Ok(l) => {
                    locks.push(l);
                    runnable.push(inst);
                }
                Err(e) => {
                    let ir = self.not_locked(&inst, &e);
                    print_errors(&ir.errors);
                    outcome = outcome.max(ir.outcome.exit());
                    report.instances.push(ir);
                }
            }
        }

        // 4. Fetch every group once, a few at a time: in full, or only what changed.
        let settings = fetch::Settings {
            http: &self.config.http,
            delta: self.config.delta,
            state_dir: &self.config.state_dir,
            dry_run: self.cli.dry_run,
            now: crate::model::date::now_secs(),
        };
        let fetch::Fetches { groups: mut fetches, staged } = fetch::fetch_all(&client, &runnable, &settings).await;
        // How many instances still need each group: its members are dropped after the last one.
        let mut uses: HashMap<FetchKey, usize> = HashMap::new();
        for c in runnable.iter().flat_map(|i| &i.configs) {
            *uses.entry(FetchKey::of(c)).or_default() += 1;
        }
        report.graph_requests = client.stats.requests();
        report.graph_retries = client.stats.retries();
        report.graph_throttle_limit = client.stats.throttle_limit();

        // 5-7. Per instance: plan, guard, write.
        let mut committed: HashSet<FetchKey> = runnable.iter().flat_map(|i| &i.configs).map(FetchKey::of).collect();
        for inst in &runnable {
            let ir = self.sync_instance(inst, &mut fetches, &mut uses).await;
            print_errors(&ir.errors);
            outcome = outcome.max(ir.outcome.exit());
            if ir.outcome != InstanceOutcome::Ok || self.cli.dry_run {
                for c in &inst.configs {
                    committed.remove(&FetchKey::of(c));
                }
            }
            report.instances.push(ir);
        }
        // 8. The delta state moves on only for groups whose every instance was written or
        // found unchanged; the others see the same changes again next run.
        let fed = self.fed.lock().map(|f| f.clone()).unwrap_or_default();
        let fed_bytes = |k: &FetchKey| fed.get(k).map(|outputs| outputs.values().sum::<u64>());
        for (key, e) in fetch::commit(staged, |k| committed.contains(k), fed_bytes) {
            crate::files::delta_state::abandon(&e.path, key.group(), &e);
        }
        report.exit_code = outcome.code();
        Ok(report)
    }

    /// The report of an instance whose lock could not be taken. Held by a live run: a
    /// notice, exit 75, no alert. Held since longer than a run may last (`[http]
    /// deadline_seconds`, as far as the runs that found it held know): a failure, which
    /// alerts. The time comes from the run state, which only root writes.
    fn not_locked(&self, inst: &Instance, e: &lock::LockError) -> InstanceReport {
        let lock::LockError::Held(path) = e else {
            return failed_instance(inst, vec![error_report(&format!("instance `{}`: {e}", inst.name), e.hint())]);
        };
        let now = crate::model::date::now_secs();
        let since = self.locked_since.get(&inst.name).copied().filter(|t| *t <= now).unwrap_or(now);
        let deadline = self.config.http.deadline.as_secs();
        // A run holds its locks a little past its deadline (the node check, the writes).
        let mut ir = if now - since > deadline + LOCK_SLACK {
            let message = format!(
                "instance `{}`: {} has been held by another run for {} minutes, longer than a run may last ([http] deadline_seconds = {deadline})",
                inst.name,
                path.display(),
                (now - since) / 60
            );
            let hint = "a usersync run is hung: find it (`systemctl status usersync`, `pgrep -a usersync`) and stop it; its lock goes with it, and the next run proceeds".to_owned();
            failed_instance(inst, vec![error_report(&message, Some(hint))])
        } else {
            tracing::info!(instance = %inst.name, lock = %path.display(), "another run holds the instance's lock: skipped");
            locked_instance(inst, vec![])
        };
        ir.locked_since = Some(since);
        ir
    }

    fn node_config(&self) -> Option<&crate::config::global::NodeConfig> {
        if self.cli.ignore_node_status {
            None
        } else {
            self.config.node.as_ref()
        }
    }

    /// The instances of the run, loaded; and a report for each one whose configuration is
    /// wrong (exit 2), which is then left out: the others go on.
    fn load_instances(&self) -> Result<(Vec<Loaded>, Vec<InstanceReport>), Stop> {
        let ctx = instance::Context::new(self.config, Env::from_process());
        let names = instance::select(self.root, &self.cli.instances)?;
        let mut instances = Vec::new();
        let mut broken = Vec::new();
        for n in &names {
            match instance::load(self.root, n, &ctx) {
                Ok(i) => instances.push(i),
                Err(errors) => {
                    let errors = errors
                        .iter()
                        .map(|e| ErrorReport { instance: Some(n.clone()), ..error_report(&e.to_string(), e.hint()) })
                        .collect();
                    broken.push(InstanceReport {
                        name: n.clone(),
                        outcome: InstanceOutcome::ConfigError,
                        outputs: Vec::new(),
                        skipped: BTreeMap::new(),
                        errors,
                        reads: vec![],
                        locked_since: None,
                    });
                }
            }
        }
        Ok((instances, broken))
    }

    /// Plans, guards and writes one instance; its report says how each config was read.
    async fn sync_instance(
        &self,
        inst: &Loaded,
        fetches: &mut Fetches,
        uses: &mut HashMap<FetchKey, usize>,
    ) -> InstanceReport {
        let reads = reads(inst, fetches);
        let mut ir = self.plan_and_write(inst, fetches, uses).await;
        ir.reads = reads;
        ir
    }

    async fn plan_and_write(
        &self,
        inst: &Loaded,
        fetches: &mut Fetches,
        uses: &mut HashMap<FetchKey, usize>,
    ) -> InstanceReport {
        let name = &inst.name;
        let rosters = gather(inst, fetches);
        // Members no later instance needs are freed once this one is done.
        for c in &inst.configs {
            let key = FetchKey::of(c);
            if let Some(n) = uses.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    fetches.remove(&key);
                }
            }
        }
        let groups = match rosters {
            Ok(r) => r,
            Err(errors) => return failed_instance(inst, errors),
        };
        let mut files = Outputs { inst, targets: BTreeMap::new() };
        // Nothing of its groups changed, and its configs and files are as the last run left
        // them: the lists are what a plan would write.
        let memo_path = memo::path(&self.config.state_dir, inst);
        let kept: Vec<Option<u64>> = groups.iter().map(|f| f.version.filter(|_| f.unchanged())).collect();
        if kept.iter().all(Option::is_some) {
            if let Some(ir) = Memo::load(&memo_path).and_then(|m| m.unchanged(inst, &kept, |o| files.mark(o))) {
                tracing::debug!(instance = %name, "nothing changed since the last run: no plan");
                return ir;
            }
        }
        let p = match self.lists(inst, &groups, &mut files, &memo_path) {
            Ok(p) => p,
            Err(errors) => return failed_instance(inst, errors),
        };
        log_skips(name, p.skips());
        let now = crate::model::date::now_secs();
        let window = guard::Window { sizes: &self.sizes, now, span: self.config.guard.window };
        let refusals = guard::check(name, p.outputs(), &self.config.guard, Some(&window));
        if self.cli.force {
            for r in &refusals {
                tracing::warn!(instance = %name, "--force: writing despite the guard: {r}");
            }
        } else if !refusals.is_empty() {
            let errors = refusals.iter().map(|r| error_report(&r.to_string(), r.hint())).collect();
            let action = if self.cli.dry_run { Action::DryRun } else { Action::Refused };
            return planned_instance(inst, p, InstanceOutcome::Refused, action, errors);
        }
        if self.cli.dry_run {
            return planned_instance(inst, p, InstanceOutcome::Ok, Action::DryRun, vec![]);
        }
        if p.outputs().iter().any(|o| o.changed) {
            if let Some((outcome, action, errors)) = self.recheck_node(inst).await {
                return planned_instance(inst, p, outcome, action, errors);
            }
        }
        let was_patch = matches!(p, Lists::Patch(..));
        let checked = p.unopened_marks();
        let ir = write_outputs(inst, p, &files.targets);
        if was_patch && !ir.errors.is_empty() {
            // A file found otherwise than its mark said: the next run plans in full.
            if let Ok(t) = write::Target::at(&memo_path) {
                let _ = t.remove();
            }
        }
        self.remember_written(inst, &groups, &files, &checked, &ir, &memo_path);
        ir
    }

    /// The new lists of `inst`: patched by the changes alone when only members changed
    /// and its files are as the last plan left them; otherwise (or when anything of that
    /// does not add up) planned in full. `Err`: why the instance failed.
    fn lists<'a>(
        &self,
        inst: &'a Loaded,
        groups: &'a [Arc<fetch::Fetched>],
        files: &mut Outputs<'_>,
        memo_path: &Path,
    ) -> Result<Lists<'a>, Vec<ErrorReport>> {
        let name = &inst.name;
        let detail = self.cli.dry_run || self.cli.format == Format::Json;
        match Self::patch(inst, groups, memo_path, files, (detail, !self.cli.dry_run)) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(vec![e]),
        }
        let rosters: Vec<&Roster> = match groups.iter().map(|f| f.roster()).collect() {
            Ok(r) => r,
            Err(e) => {
                return Err(vec![error_report(&format!("instance `{name}`: {e}"), e.hint())]);
            }
        };
        plan::plan(files, &rosters, inst, detail).map(Lists::Full).map_err(|errors| {
            errors.iter().map(|e| error_report(&format!("instance `{name}`: {e}"), e.hint())).collect()
        })
    }

    /// After the write: the bytes of the outputs each group fed (for its state's commit),
    /// and the instance's memo.
    fn remember_written(
        &self,
        inst: &Instance,
        groups: &[Arc<fetch::Fetched>],
        files: &Outputs<'_>,
        checked: &BTreeMap<Output, memo::FileMark>,
        ir: &InstanceReport,
        memo_path: &Path,
    ) {
        let name = &inst.name;
        let versions: Vec<Option<u64>> = groups.iter().map(|f| f.version).collect();
        let written: Vec<Output> = files.targets.keys().copied().collect();
        let marks: BTreeMap<Output, memo::FileMark> = written
            .into_iter()
            .filter_map(|o| files.seen_mark(o).or_else(|| checked.get(&o).cloned()).map(|m| (o, m)))
            .collect();
        if let Ok(mut fed) = self.fed.lock() {
            for c in &inst.configs {
                let outputs = fed.entry(FetchKey::of(c)).or_default();
                for (o, m) in marks.iter().filter(|(o, _)| c.feeds.contains(o)) {
                    outputs.insert(inst.outputs[o].path.clone(), m.size());
                }
            }
        }
        if let Some(m) = Memo::after(inst, &versions, ir, &marks) {
            if let Err(e) = m.save(memo_path) {
                tracing::warn!(instance = %name, error = %e, "cannot remember what the lists were written from; the next run plans them again");
            }
        }
    }

    /// The lists of `inst` patched by what changed in its groups, when each was read by
    /// delta and its memo says its files are exactly what a plan wrote from the groups'
    /// old states (and they are as it left them); `None` otherwise. A state found unreadable
    /// fails the instance and (with `discard`) goes, so that the next run reads in full.
    fn patch(
        inst: &Loaded,
        groups: &[Arc<fetch::Fetched>],
        memo_path: &Path,
        files: &mut Outputs<'_>,
        (detail, discard): (bool, bool),
    ) -> Result<Option<Lists<'static>>, ErrorReport> {
        let mut parts = Vec::new();
        for f in groups {
            let Some((version, old, changes)) = f.changes() else { return Ok(None) };
            parts.push((Some(version), patch::Group { old, changes, phones: f.phones() }));
        }
        let versions: Vec<Option<u64>> = parts.iter().map(|(v, _)| *v).collect();
        let Some(memo) = Memo::load(memo_path) else { return Ok(None) };
        let Some(base) = memo.unchanged(inst, &versions, |o| files.mark(o)) else { return Ok(None) };
        let marks = inst.outputs.keys().filter_map(|o| memo.mark(*o).map(|m| (*o, m.clone()))).collect();
        let base = patch::Base {
            outputs: base.outputs.into_iter().map(|o| (o.output, (o.after.unwrap_or(0), o.skipped))).collect(),
            skipped: base.skipped,
        };
        let parts: Vec<patch::Group<'_>> = parts.into_iter().map(|(_, g)| g).collect();
        match tokio::task::block_in_place(|| patch::patch(inst, &parts, &base, detail)) {
            Ok(Some(p)) => {
                tracing::debug!(instance = %inst.name, "planned by the changes alone");
                Ok(Some(Lists::Patch(p, marks)))
            }
            Ok(None) => {
                tracing::debug!(instance = %inst.name, "the changes do not add up to the lists: a full plan");
                Ok(None)
            }
            Err(e) => {
                let states: Vec<&Path> = groups.iter().filter_map(|f| f.changes()).map(|(_, s, _)| s.path()).collect();
                if discard {
                    for s in &states {
                        if let Ok(t) = write::Target::at(s) {
                            let _ = t.remove();
                        }
                    }
                }
                let paths: Vec<String> = states.iter().map(|s| s.display().to_string()).collect();
                Err(error_report(
                    &format!("instance `{}`: the delta state {} is unreadable: {e:?}", inst.name, paths.join(", ")),
                    Some("nothing of this instance was written; the next run reads its groups in full".into()),
                ))
            }
        }
    }

    /// The node check again, right before an instance's first write; `Some` stops the
    /// write and says how the instance ends.
    async fn recheck_node(&self, inst: &Instance) -> Option<(InstanceOutcome, Action, Vec<ErrorReport>)> {
        let n = self.node_config()?;
        match node::check(n).await {
            Ok(NodeState::Active(_)) => None,
            Ok(NodeState::Passive(s)) => {
                tracing::info!(instance = %inst.name, state = %s.escape_debug(), "node turned passive before the write: nothing written");
                Some((InstanceOutcome::SkippedPassive, Action::SkippedPassive, vec![]))
            }
            Err(e) => {
                let errors = vec![error_report(&format!("instance `{}`: {e}", inst.name), e.hint())];
                Some((InstanceOutcome::Failed, Action::Failed, errors))
            }
        }
    }
}

/// The members fetched per group, or why not.
type Fetches = HashMap<FetchKey, Result<Arc<fetch::Fetched>, Arc<FetchError>>>;

/// How each config of `inst` was read, for the report.
fn reads(inst: &Instance, fetches: &Fetches) -> Vec<ReadReport> {
    let mut out = Vec::new();
    for c in &inst.configs {
        if let Some(Ok(f)) = fetches.get(&FetchKey::of(c)) {
            let (read, reason) = match &f.read {
                fetch::Read::Delta => ("delta", None),
                fetch::Read::Full(r) => ("full", Some(r.to_string())),
            };
            out.push(ReadReport {
                config: c.path.clone(),
                read,
                reason,
                requests: f.requests,
                drift: f.drift,
                ignored_user_changes: f.ignored,
            });
        }
    }
    out
}

/// The members of every config of `inst`, or every reason why not.
fn gather(inst: &Instance, fetches: &Fetches) -> Result<Vec<Arc<fetch::Fetched>>, Vec<ErrorReport>> {
    let name = &inst.name;
    let mut members = Vec::new();
    let mut errors = Vec::new();
    for c in &inst.configs {
        match fetches.get(&FetchKey::of(c)) {
            Some(Ok(m)) => members.push(Arc::clone(m)),
            Some(Err(e)) => {
                errors.push(error_report(
                    &format!("instance `{name}`, config {}: {e}", c.path.display()),
                    e.hint_in(c.cloud),
                ));
            }
            None => errors.push(error_report(
                &format!("instance `{name}`, config {}: the fetch did not finish", c.path.display()),
                None,
            )),
        }
    }
    if errors.is_empty() {
        Ok(members)
    } else {
        Err(errors)
    }
}

/// An instance's output files as the plan reads them. Each output's directory is opened
/// once, when its file is first read; the write goes through the same descriptor, so a
/// directory swapped for a symlink meanwhile is not followed.
struct Outputs<'i> {
    inst: &'i Loaded,
    targets: BTreeMap<Output, write::Target>,
}

impl Outputs<'_> {
    fn target(&mut self, output: Output) -> Result<&write::Target, WriteError> {
        match self.targets.entry(output) {
            Entry::Occupied(t) => Ok(t.into_mut()),
            Entry::Vacant(v) => {
                // Every output the plan reads is one of the instance's.
                let place = &self.inst.outputs[&output];
                Ok(v.insert(self.inst.target(place)?))
            }
        }
    }
}

impl Outputs<'_> {
    /// The mark of an output's file as it is now; `None` if there is none, or it cannot
    /// be used (the plan then says why).
    fn mark(&mut self, output: Output) -> Option<memo::FileMark> {
        self.target(output).ok()?.inspect().ok()?.as_ref().map(memo::FileMark::of)
    }

    /// The mark of an output's file as this run read or wrote it (not as it is by now: an
    /// edit since, during a slow node check say, must make the next run plan it again).
    fn seen_mark(&self, output: Output) -> Option<memo::FileMark> {
        self.targets.get(&output)?.seen().as_ref().map(memo::FileMark::of)
    }
}

impl plan::Current for Outputs<'_> {
    type Error = WriteError;

    fn stream(&mut self, output: Output) -> Result<Option<impl std::io::BufRead + '_>, WriteError> {
        self.target(output)?.stream()
    }

    fn stream_failed(&self, output: Output, source: std::io::Error) -> WriteError {
        let path = self.inst.outputs.get(&output).map(|o| o.path.clone()).unwrap_or_default();
        WriteError { path, action: "read", source }
    }
}

/// Writes every changed output of `p` through `targets`; each write is atomic on its own.
fn write_outputs(inst: &Instance, p: Lists<'_>, targets: &BTreeMap<Output, write::Target>) -> InstanceReport {
    let mut actions = Vec::new();
    let mut errors = Vec::new();
    for (i, o) in p.outputs().iter().enumerate() {
        // The plan read every output, so each has its target.
        let target = &targets[&o.output];
        match target.clean_stale_temps(std::time::Duration::ZERO) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(instance = %inst.name, path = %o.path.display(), removed = n, "removed temp files a killed run left behind");
            }
            Err(e) => {
                tracing::warn!(instance = %inst.name, path = %o.path.display(), error = %e, "cannot remove stale temp files");
            }
        }
        actions.push(if !o.changed {
            Action::Unchanged
        } else if let Err(e) = target.write_with(write::NEW_OUTPUT_MODE, |w| p.write_to(i, target, w)) {
            errors.push(error_report(&format!("instance `{}`: {e}", inst.name), e.hint()));
            Action::Failed
        } else {
            tracing::info!(instance = %inst.name, output = %o.output, path = %o.path.display(), before = o.before, after = o.after, added = o.added, removed = o.removed, "written");
            Action::Written
        });
    }
    let skipped = p.skip_counts();
    let outputs = p.into_outputs().into_iter().zip(actions).map(|(o, a)| OutputReport::planned(o, a)).collect();
    let outcome = if errors.is_empty() { InstanceOutcome::Ok } else { InstanceOutcome::Failed };
    InstanceReport { name: inst.name.clone(), outcome, outputs, skipped, errors, reads: vec![], locked_since: None }
}

/// An instance's new lists: planned in full, or patched by what changed.
enum Lists<'a> {
    Full(Plan<'a>),
    /// With the marks of the files it patches.
    Patch(patch::Patch, BTreeMap<Output, memo::FileMark>),
}

impl Lists<'_> {
    /// The marks of the files a patch leaves unchanged (it never opens them: each was
    /// checked by name when the patch was planned).
    fn unopened_marks(&self) -> BTreeMap<Output, memo::FileMark> {
        match self {
            Lists::Patch(patch, marks) => patch
                .outputs
                .iter()
                .filter(|o| !o.changed)
                .filter_map(|o| marks.get(&o.output).map(|m| (o.output, m.clone())))
                .collect(),
            Lists::Full(_) => BTreeMap::new(),
        }
    }

    fn outputs(&self) -> &[plan::OutputPlan] {
        match self {
            Lists::Full(p) => &p.outputs,
            Lists::Patch(p, _) => &p.outputs,
        }
    }

    fn into_outputs(self) -> Vec<plan::OutputPlan> {
        match self {
            Lists::Full(p) => p.outputs,
            Lists::Patch(p, _) => p.outputs,
        }
    }

    /// The skips to log: every one of a full plan; a patch's changed members' only.
    fn skips(&self) -> &[plan::Skip] {
        match self {
            Lists::Full(p) => &p.skips,
            Lists::Patch(p, _) => &p.skips,
        }
    }

    fn skip_counts(&self) -> BTreeMap<SkipReason, u64> {
        match self {
            Lists::Full(p) => p.skip_counts(),
            Lists::Patch(p, _) => p.skipped.clone(),
        }
    }

    /// Writes output `i`'s new content; a patch reads the file it patches through `target`.
    fn write_to(&self, i: usize, target: &write::Target, w: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Lists::Full(p) => p.write_to(i, w),
            Lists::Patch(p, marks) => {
                let moved = || std::io::Error::new(std::io::ErrorKind::InvalidData, "it changed since it was planned");
                let mut old = target.stream().map_err(|e| std::io::Error::other(e.to_string()))?.ok_or_else(moved)?;
                // The file opened is the one the plan saw (its mark was taken by name), and
                // it did not change while it was read.
                let mark = p.outputs.get(i).and_then(|o| marks.get(&o.output));
                let seen = target.seen().map(|st| memo::FileMark::of(&st));
                if seen.is_none() || seen.as_ref() != mark {
                    return Err(moved());
                }
                p.write_to(i, &mut old, w)?;
                let after = rustix::fs::fstat(old.get_ref().get_ref()).map(|st| memo::FileMark::of(&st)).ok();
                if after.as_ref() != mark {
                    return Err(moved());
                }
                Ok(())
            }
        }
    }
}

/// Logs the members that gave no entry: invalid values and users of unknown state as
/// warnings, the rest at debug.
fn log_skips(name: &str, skips: &[plan::Skip]) {
    for s in skips {
        let (config, id, reason, value) = (s.config.display(), &s.id, s.reason, &s.value);
        match reason {
            SkipReason::InvalidMail | SkipReason::InvalidPhone => {
                tracing::warn!(instance = %name, %config, %id, %reason, %value, "skipped an invalid directory value");
            }
            SkipReason::EnabledUnknown => {
                tracing::warn!(instance = %name, %config, %id, %reason, %value, "skipped a user Graph sent without accountEnabled: not known to be enabled (include_disabled = true keeps such users)");
            }
            _ => tracing::debug!(instance = %name, %config, %id, %reason, %value, "skipped a member"),
        }
    }
}

/// A report of `p` where changed outputs got `action` and the others were unchanged.
fn planned_instance(
    inst: &Instance,
    p: Lists<'_>,
    outcome: InstanceOutcome,
    action: Action,
    errors: Vec<ErrorReport>,
) -> InstanceReport {
    let skipped = p.skip_counts();
    let outputs = p
        .into_outputs()
        .into_iter()
        .map(|o| {
            let a = if o.changed { action } else { Action::Unchanged };
            OutputReport::planned(o, a)
        })
        .collect();
    InstanceReport { name: inst.name.clone(), outcome, outputs, skipped, errors, reads: vec![], locked_since: None }
}

fn error_report(message: &str, hint: Option<String>) -> ErrorReport {
    ErrorReport { message: message.to_owned(), hint, instance: None }
}

fn print_errors(errors: &[ErrorReport]) {
    for e in errors {
        crate::ui::log::eprint_error(&crate::error::render_message(&e.message, e.hint.as_deref()));
    }
}

/// A report of an instance that got no plan: every output `failed`.
fn failed_instance(inst: &Instance, errors: Vec<ErrorReport>) -> InstanceReport {
    let outputs =
        inst.outputs.iter().map(|(o, p)| OutputReport::unplanned(*o, p.path.clone(), Action::Failed)).collect();
    let outcome = InstanceOutcome::Failed;
    InstanceReport {
        name: inst.name.clone(),
        outcome,
        outputs,
        skipped: BTreeMap::new(),
        errors,
        reads: vec![],
        locked_since: None,
    }
}

/// A report of an instance whose lock another run holds: no outputs.
fn locked_instance(inst: &Instance, errors: Vec<ErrorReport>) -> InstanceReport {
    let outcome = InstanceOutcome::Locked;
    let (outputs, skipped) = (Vec::new(), BTreeMap::new());
    InstanceReport { name: inst.name.clone(), outcome, outputs, skipped, errors, reads: vec![], locked_since: None }
}
