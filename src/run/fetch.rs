//! How each group of a run is read: in full, or only what changed since the last run
//! (delta queries), with the delta state that makes the next run incremental. A group is
//! read once per run for every config that names it with the same app, credential and
//! endpoints; one users round per app serves all its groups.
//!
//! The new state is only staged here. It is committed once every instance that used it was
//! written or found unchanged, so that a dry run, a guard refusal or a failed write sees the
//! same changes again next time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::config::credential::{Credentials, Identity};
use crate::config::entraid::EntraConf;
use crate::config::global::{DeltaConfig, HttpConfig};
use crate::config::instance::Instance;
use crate::files::delta_state::{self, Header, Overlay, Record, Unusable};
use crate::graph::{FetchError, FullRead, GraphClient, GroupQuery, Keep, MembershipRound, UsersRound};
use crate::model::page::ObjectKind;
use crate::model::roster::Roster;
use crate::ui::progress::Line;

/// A group as one run fetches it: the same group, read from the same Graph by the same
/// identity (authority, tenant, client and credential), is fetched once, whatever configs
/// name it. Configs whose app or credential differ each fetch on their own, so that one
/// config's broken secret or missing permission is never masked by another's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchKey {
    identity: Identity,
    graph: String,
    group: String,
    nested: bool,
    /// The instance of a config that is not root's word: its fetch is its own.
    isolated: Option<String>,
}

impl FetchKey {
    /// The fetch config `c` takes part in.
    #[must_use]
    pub fn of(c: &EntraConf) -> Self {
        Self {
            identity: c.credentials().identity(),
            graph: c.endpoints.graph_base(),
            group: c.group.to_string(),
            nested: c.nested,
            isolated: c.isolated.clone(),
        }
    }

    /// The group's id.
    #[must_use]
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The app the group is read with: one users round serves all its groups.
    fn app(&self) -> (Identity, String) {
        (self.identity.clone(), self.graph.clone())
    }
}

/// Why a group was read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// No delta state yet.
    First,
    /// Graph or the state said the delta links are no good: why.
    Resync(String),
    /// The last full read is older than `[delta] full_sync_hours`.
    SafetyNet,
    /// Delta is off (`delta = false`, or `[delta] enabled = false`).
    Disabled,
    /// `nested = true`: delta does not follow transitive membership.
    Nested,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::First => f.write_str("first"),
            Self::Resync(r) => write!(f, "resync:{r}"),
            Self::SafetyNet => f.write_str("safety-net"),
            Self::Disabled => f.write_str("disabled"),
            Self::Nested => f.write_str("nested"),
        }
    }
}

/// How a group was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Every page of its members.
    Full(FullReason),
    /// Only what changed.
    Delta,
}

/// A group's members: read this run, or kept in its delta state (with the run's changes).
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per group and run")]
enum Members {
    Read(Roster),
    /// The old state, and what changed since: read as a roster only when an instance
    /// needs one (one whose lists cannot be patched by the changes alone), and then once.
    Kept {
        state: delta_state::Opened,
        changes: Overlay,
        phones: bool,
        count: u64,
        /// Whether member data found unreadable takes its state with it (not in a dry run).
        discard: bool,
        loaded: std::sync::OnceLock<Result<Roster, FetchError>>,
    },
}

/// One group, read.
#[derive(Debug)]
pub struct Fetched {
    members: Members,
    /// The version of member data the members are (see [`delta_state::Header::version`]),
    /// when a delta state keeps them: what an instance's lists are written from.
    pub version: Option<u64>,
    /// How it was read.
    pub read: Read,
    /// Graph requests made for it (pages and lookups; a users round counts for each group
    /// of its app).
    pub requests: u64,
    /// A safety-net read: how many members the delta state had wrong (either way).
    pub drift: Option<u64>,
    /// A delta read: users of the app's round that changed but are in none of its groups
    /// read this run (ignored, and counted).
    pub ignored: Option<u64>,
    /// A delta read: the users of the round that are members of this group.
    matched: Vec<String>,
}

impl Fetched {
    /// The group's members (read from the state first, if they were kept there).
    pub fn roster(&self) -> Result<&Roster, FetchError> {
        match &self.members {
            Members::Read(r) => Ok(r),
            Members::Kept { state, changes, phones, discard, loaded, .. } => loaded
                .get_or_init(|| {
                    let path = state.path();
                    let read = tokio::task::block_in_place(|| kept_roster(state, changes, *phones));
                    match read {
                        Ok(r) => match r.limited() {
                            Some(missing) => Err(FetchError::LimitedInformation {
                                group: state.header.key.group.clone(),
                                users: r.user_objects(),
                                missing,
                            }),
                            None => Ok(r),
                        },
                        Err(e) => {
                            // The next run must not trust it again: without its links, it
                            // reads the group in full.
                            if *discard {
                                if let Ok(t) = crate::files::write::Target::at(path) {
                                    let _ = t.remove();
                                }
                            }
                            Err(FetchError::StateCorrupt(format!("{}: {e:?}", path.display())))
                        }
                    }
                })
                .as_ref()
                .map_err(Clone::clone),
        }
    }

    /// Whether the group's members keep their phones.
    #[must_use]
    pub fn phones(&self) -> bool {
        match &self.members {
            Members::Kept { phones, .. } => *phones,
            Members::Read(r) => r.phones(),
        }
    }

    /// Whether the group is as its delta state kept it (nothing changed this run).
    #[must_use]
    pub fn unchanged(&self) -> bool {
        matches!(&self.members, Members::Kept { changes, .. } if changes.is_empty())
    }

    /// For a group read by delta: the version of member data its state had before this
    /// run, that state, and what changed since (what a list written from that version
    /// needs patched).
    #[must_use]
    pub fn changes(&self) -> Option<(u64, &delta_state::Opened, &Overlay)> {
        match &self.members {
            Members::Kept { state, changes, .. } => Some((state.header.version(), state, changes)),
            Members::Read(_) => None,
        }
    }

    /// One line for the end of its progress line: members, requests, and how it was read.
    fn summary(&self) -> String {
        let how = match &self.read {
            Read::Full(reason) => format!("full read, {reason}"),
            Read::Delta if self.unchanged() => "delta read, unchanged".to_owned(),
            Read::Delta => "delta read".to_owned(),
        };
        let members = match &self.members {
            Members::Read(r) => r.objects() as u64,
            Members::Kept { count, .. } => *count,
        };
        format!(
            "{} members, {} requests ({how})",
            crate::ui::progress::thousands(members),
            crate::ui::progress::thousands(self.requests)
        )
    }
}

/// The members a state keeps, with `changes`, read whole.
fn kept_roster(opened: &delta_state::Opened, changes: &Overlay, phones: bool) -> Result<Roster, Unusable> {
    let mut r = opened.records_with(changes)?;
    let mut roster = Roster::new(phones);
    let mut n = 0u64;
    while let Some(rec) = r.next_record()? {
        roster.push(&rec.view());
        n += 1;
        // Sorting in runs, as a full read does page by page.
        if n % 999 == 0 {
            roster.end_page();
        }
    }
    roster.end_page();
    roster.finish();
    Ok(roster)
}

/// Every group of a run, read or failed, and the new delta states staged for commit.
#[derive(Default)]
pub struct Fetches {
    /// Per group.
    pub groups: HashMap<FetchKey, Result<Arc<Fetched>, Arc<FetchError>>>,
    /// New delta states, to commit once every instance that used the group succeeded.
    pub staged: HashMap<FetchKey, delta_state::Commit>,
}

/// What a run's fetch needs to know.
pub struct Settings<'a> {
    /// `[http]`
    pub http: &'a HttpConfig,
    /// `[delta]`
    pub delta: DeltaConfig,
    /// Where delta states live.
    pub state_dir: &'a Path,
    /// A dry run keeps no state.
    pub dry_run: bool,
    /// Unix seconds now.
    pub now: u64,
}

/// One group to read, and how.
struct GroupRead {
    cred: Credentials,
    query: GroupQuery,
    /// Where its state lives, or why delta is off for it.
    state: Result<delta_state::Key, FullReason>,
    how: How,
}

enum How {
    /// A full read, for this reason.
    Full(FullReason),
    /// A full read as the safety net, with the old state (its drift is counted).
    SafetyNet(delta_state::Opened),
    /// A delta round from the state's links. The state is read through this one opening
    /// only: a commit by another run meanwhile cannot mix two versions.
    Delta(delta_state::Opened),
}

/// Reads every distinct group of `instances`. At most `[http] max_concurrency` requests are
/// in flight; the whole fetch ends by `[http] deadline_seconds`.
pub async fn fetch_all(
    client: &Arc<GraphClient>,
    instances: &[impl std::ops::Deref<Target = Instance>],
    s: &Settings<'_>,
) -> Fetches {
    // Per group: its query (phones if any config wants them) and why delta is off, if it is.
    let mut groups: BTreeMap<FetchKey, (Credentials, GroupQuery, Option<FullReason>)> = BTreeMap::new();
    // Per group, the configs that name it, for its progress line.
    let mut labels: HashMap<FetchKey, Vec<String>> = HashMap::new();
    for (instance, c) in instances.iter().flat_map(|i| i.configs.iter().map(move |c| (&i.name, c))) {
        let stem = c.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        labels.entry(FetchKey::of(c)).or_default().push(format!("{instance}/{stem}"));
        let g = groups.entry(FetchKey::of(c)).or_insert_with(|| (c.credentials(), GroupQuery::of(c), None));
        g.1.mobile_phone |= c.mobile_phone;
        if c.nested {
            g.2 = Some(FullReason::Nested);
        } else if !(s.delta.enabled && c.delta) && g.2.is_none() {
            g.2 = Some(FullReason::Disabled);
        }
    }
    let mut plans: BTreeMap<FetchKey, GroupRead> = BTreeMap::new();
    for (key, (cred, query, off)) in groups {
        let state = off.map_or_else(|| Ok(state_key(&cred, &query, key.isolated.clone())), Err);
        let how = decide(&state, &query, s);
        plans.insert(key, GroupRead { cred, query, state, how });
    }
    let started = tokio::time::Instant::now();
    let deadline = started + s.http.deadline;
    let keys: Vec<FetchKey> = plans.keys().cloned().collect();
    let mut out = Fetches::default();
    // Per app: what its users rounds start from, run once by the first of its groups that
    // needs them. Apps do not wait for each other: a slow app runs out only its own groups'
    // time, never another's.
    let (apps, delta_groups) = app_cells(&plans);
    let limit = Arc::new(Semaphore::new(s.http.max_concurrency * crate::graph::MAX_BATCH));
    let mut set = JoinSet::new();
    for (key, plan) in plans {
        let client = Arc::clone(client);
        let limit = Arc::clone(&limit);
        let app = apps.get(&key.app()).cloned();
        let state_dir = s.state_dir.to_owned();
        let (dry_run, now) = (s.dry_run, s.now);
        let label = labels.remove(&key).unwrap_or_default().join(", ");
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let line = Line::start(&label, &key.group);
            let needs_rounds = matches!(plan.how, How::Delta(_)) || plan.state.is_ok();
            let rounds = match app {
                Some(a) if needs_rounds => {
                    line.status("reading what changed in the tenant");
                    let graph = key.app().1;
                    Some(Arc::clone(a.cell.get_or_init(|| app_rounds(&client, &a, &graph)).await))
                }
                _ => None,
            };
            let reader = GroupReader { client: &client, state_dir: &state_dir, dry_run, now };
            let r = reader.read_group(plan, rounds, &line).await;
            match &r {
                Ok((f, _)) => line.finish(true, &f.summary()),
                Err(_) => line.finish(false, "failed (the error follows)"),
            }
            (key, r)
        });
    }
    let mut done = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((key, r)))) => match r {
                Ok((fetched, staged)) => {
                    if let Some(st) = staged {
                        out.staged.insert(key.clone(), st);
                    }
                    done.push((key, fetched));
                }
                Err(e) => {
                    out.groups.insert(key, Err(Arc::new(e)));
                }
            },
            // A fetch task that panicked: its instances fail as "did not finish".
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                let seconds = (deadline - started).as_secs();
                for key in keys.iter().filter(|k| !done.iter().any(|(d, _)| d == *k)) {
                    out.groups.entry(key.clone()).or_insert_with(|| Err(Arc::new(FetchError::Deadline { seconds })));
                }
                break;
            }
        }
    }
    let rounds: HashMap<App, Arc<AppRounds>> =
        apps.into_iter().filter_map(|(app, a)| a.cell.get().cloned().map(|r| (app, r))).collect();
    count_ignored(&mut done, &rounds, &delta_groups);
    for (key, fetched) in done {
        out.groups.insert(key, Ok(Arc::new(fetched)));
    }
    out
}

/// Per app: the users its round said changed that are members of none of its groups read by
/// delta this run. They are ignored; each delta read of the app says how many.
fn count_ignored(
    done: &mut [(FetchKey, Fetched)],
    rounds: &HashMap<App, Arc<AppRounds>>,
    delta_groups: &HashMap<App, usize>,
) {
    for (app, rounds) in rounds {
        let changed: HashSet<&str> = rounds
            .from
            .values()
            .filter_map(|r| r.as_ref().as_ref().ok())
            .flat_map(|r| r.now.keys().chain(r.removed.iter()).map(String::as_str))
            .collect();
        let delta_of_app = |(k, f): &&(FetchKey, Fetched)| k.app() == *app && f.read == Read::Delta;
        // Only when every delta read of the app succeeded does "in none of its groups" hold.
        if done.iter().filter(delta_of_app).count() != delta_groups.get(app).copied().unwrap_or(0) {
            continue;
        }
        let matched: HashSet<&str> =
            done.iter().filter(delta_of_app).flat_map(|(_, f)| f.matched.iter().map(String::as_str)).collect();
        let ignored = changed.len().saturating_sub(matched.len()) as u64;
        if ignored > 0 {
            tracing::info!(graph = %app.1, ignored, "users changed outside the synced groups (ignored)");
        }
        for (_, f) in done.iter_mut().filter(|(k, f)| k.app() == *app && f.read == Read::Delta) {
            f.ignored = Some(ignored);
        }
    }
}

fn state_key(cred: &Credentials, q: &GroupQuery, isolated: Option<String>) -> delta_state::Key {
    delta_state::Key {
        token_url: cred.token_url.clone(),
        graph: q.graph.clone(),
        client: cred.client_id.clone(),
        group: q.group.to_string(),
        attributes: if q.mobile_phone { "mail,mobilePhone" } else { "mail" }.into(),
        isolated,
    }
}

/// The state a full read replaces.
#[allow(clippy::large_enum_variant, reason = "one per group and run")]
enum Old {
    /// None (the first read, or delta off).
    None,
    /// Opened (a safety net counts its drift).
    Kept(delta_state::Opened),
    /// Found unreadable: only its header, to remove its files.
    Lost(Header),
}

/// Full or delta, from the state's header (its records are read later, as a stream).
fn decide(state: &Result<delta_state::Key, FullReason>, query: &GroupQuery, s: &Settings<'_>) -> How {
    let key = match state {
        Err(reason) => return How::Full(reason.clone()),
        Ok(k) => k,
    };
    match delta_state::Opened::open(s.state_dir, key) {
        Err(Unusable::Missing) => How::Full(FullReason::First),
        Err(Unusable::Version(v)) => {
            tracing::warn!(group = %query.group, version = %v, "the delta state is of another format version; reading in full");
            How::Full(FullReason::Resync("state-version".into()))
        }
        Err(Unusable::Corrupt(why)) => {
            tracing::warn!(group = %query.group, why = %why, "the delta state is unreadable; reading in full");
            How::Full(FullReason::Resync("state-corrupt".into()))
        }
        // A last full read in the future means the clock went back: one safety-net read,
        // rather than none until the clock catches up.
        Ok(r) if s.now < r.header.full_at || Duration::from_secs(s.now - r.header.full_at) >= s.delta.full_sync => {
            // A safety net read within the hour and not committed (an instance refused or
            // failed): by delta until then, not a full read every run.
            match r.net_tried() {
                Some(t) if t <= s.now && s.now - t < delta_state::NET_RETRY => {
                    tracing::debug!(group = %query.group, "the safety net was read within the hour but not committed: by delta");
                    How::Delta(r)
                }
                _ => How::SafetyNet(r),
            }
        }
        Ok(r) => How::Delta(r),
    }
}

/// An app: who asks, and which Graph.
type App = (Identity, String);

/// The users rounds of one app in a run: one from each distinct link its groups read by
/// delta stand at (almost always one; two after overlapping runs), so that no link is ever
/// ordered by the local clock; and the link every group of the app stands at afterwards.
#[derive(Debug, Default)]
pub struct AppRounds {
    /// Per starting link, the round from it.
    from: HashMap<String, Arc<Result<UsersRound, FetchError>>>,
    /// The first link Graph gave in this run, and the requests that took it. Rounds run one
    /// after the other and full reads after them, so no group's data is older than it: from
    /// there, the next run replays at most, and never misses a change.
    next: Option<(Result<String, FetchError>, u64)>,
}

impl AppRounds {
    /// The round from `link`, or why there is none.
    fn from(&self, link: &str) -> Result<&UsersRound, FetchError> {
        match self.from.get(link).map(|r| r.as_ref().as_ref()) {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(e.clone()),
            None => Err(self.next_link().err().unwrap_or_else(|| FetchError::Internal("no users round".into()))),
        }
    }

    /// The link for the new states, or why there is none.
    fn next_link(&self) -> Result<(String, u64), FetchError> {
        match &self.next {
            Some((Ok(l), requests)) => Ok((l.clone(), *requests)),
            Some((Err(e), _)) => Err(e.clone()),
            None => Err(FetchError::Internal("no users link".into())),
        }
    }
}

/// What an app's users rounds need, and, once the first of its groups has asked, the rounds.
struct AppRoundsCell {
    cred: Credentials,
    /// The distinct links its groups to read by delta stand at.
    links: BTreeSet<String>,
    /// Some group of it is read in full and keeps a state: it needs a link from now.
    latest: bool,
    cell: OnceCell<Arc<AppRounds>>,
}

/// Per app: what its users rounds need (see [`AppRoundsCell`]); and how many of its groups
/// are read by delta, which the users round's changes are weighed against.
fn app_cells(plans: &BTreeMap<FetchKey, GroupRead>) -> (HashMap<App, Arc<AppRoundsCell>>, HashMap<App, usize>) {
    let mut apps: HashMap<App, AppRoundsCell> = HashMap::new();
    let mut delta_groups: HashMap<App, usize> = HashMap::new();
    for (key, p) in plans {
        let a = apps.entry(key.app()).or_insert_with(|| AppRoundsCell {
            cred: p.cred.clone(),
            links: BTreeSet::new(),
            latest: false,
            cell: OnceCell::new(),
        });
        match &p.how {
            How::Delta(r) => {
                a.links.insert(r.header.users_link.clone());
                *delta_groups.entry(key.app()).or_default() += 1;
            }
            How::Full(_) | How::SafetyNet(_) if p.state.is_ok() => a.latest = true,
            How::Full(_) | How::SafetyNet(_) => {}
        }
    }
    (apps.into_iter().map(|(k, a)| (k, Arc::new(a))).collect(), delta_groups)
}

/// The users rounds of one app: one from each distinct link among its groups read by delta
/// (a resync of one is kept as that round's error: its groups read in full), and, when some
/// group needs one and no round gave it, a link from now.
async fn app_rounds(client: &GraphClient, a: &AppRoundsCell, graph: &str) -> Arc<AppRounds> {
    let mut rounds = AppRounds::default();
    let mut latest = a.latest;
    for link in &a.links {
        let round = client.users_round(&a.cred, graph, link).await;
        match &round {
            Err(e) if e.resync_reason().is_some() => {
                let reason = e.resync_reason().unwrap_or_default();
                tracing::warn!(graph = %graph, %reason, error = %e, "the users delta link is no longer valid; reading its groups in full");
                latest = true;
            }
            Ok(r) => {
                if !r.now.is_empty() || !r.removed.is_empty() {
                    tracing::info!(graph = %graph, changed = r.now.len(), deleted = r.removed.len(), "users changed since the last run");
                }
                rounds.next.get_or_insert_with(|| (Ok(r.link.clone()), r.requests));
            }
            Err(_) => {}
        }
        rounds.from.insert(link.clone(), Arc::new(round));
    }
    if rounds.next.is_none() && latest {
        rounds.next = Some((client.users_latest(&a.cred, graph).await, 1));
    }
    Arc::new(rounds)
}

/// What every group read of a run shares: the client, where the states live, whether the
/// run is a dry run (which keeps no state), and the run's time.
struct GroupReader<'a> {
    client: &'a GraphClient,
    state_dir: &'a Path,
    dry_run: bool,
    now: u64,
}

impl GroupReader<'_> {
    /// Reads one group: by delta (falling back to a full read on a resync), or in full.
    async fn read_group(
        &self,
        plan: GroupRead,
        rounds: Option<Arc<AppRounds>>,
        line: &Line,
    ) -> Result<(Fetched, Option<delta_state::Commit>), FetchError> {
        let GroupRead { cred, query, state, how } = plan;
        let (reason, old) = match how {
            How::Full(r) => (r, None),
            How::SafetyNet(old) => (FullReason::SafetyNet, Some(old)),
            How::Delta(old) => {
                let key = state.as_ref().map_err(|_| FetchError::Internal("a delta read without a state".into()))?;
                let app = rounds.as_deref().ok_or_else(|| FetchError::Internal("no users round".into()))?;
                let users = match app.from(&old.header.users_link) {
                    // The app's users link is no good: this group starts over in full.
                    Err(e) if e.resync_reason().is_some() => {
                        let reason = FullReason::Resync(e.resync_reason().unwrap_or_default().into());
                        return self.full_read(&cred, &query, state.ok(), (reason, Old::Kept(old)), rounds, line).await;
                    }
                    r => r?,
                };
                let (next, _) = app.next_link()?;
                line.status("reading what changed");
                let (graph, group, since) = (&query.graph, query.group.as_str(), &old.header.group_link);
                let membership = match self.client.membership_round(&cred, graph, group, since).await {
                    Err(e) if e.resync_reason().is_some() => {
                        let reason = e.resync_reason().unwrap_or_default();
                        tracing::warn!(group = %query.group, %reason, error = %e, "the group's delta link is no longer valid; reading it in full");
                        let reason = FullReason::Resync(reason.into());
                        return self.full_read(&cred, &query, state.ok(), (reason, Old::Kept(old)), rounds, line).await;
                    }
                    r => r?,
                };
                let old_header = old.header.clone();
                return match self.delta_read(&cred, &query, key, old, &membership, (users, &next)).await {
                    // The member data turned out unreadable as it was read: this run reads
                    // the group in full instead (the rounds cost nothing that is lost).
                    Err(e @ FetchError::StateCorrupt(_)) => {
                        tracing::warn!(group = %query.group, error = %e, "the delta state is unreadable; reading in full");
                        let reason = FullReason::Resync("state-corrupt".into());
                        self.full_read(&cred, &query, state.ok(), (reason, Old::Lost(old_header)), rounds, line).await
                    }
                    r => r,
                };
            }
        };
        let old = old.map_or(Old::None, Old::Kept);
        self.full_read(&cred, &query, state.ok(), (reason, old), rounds, line).await
    }

    /// A full read; with a state key (delta on), the links are taken first, so that nothing
    /// that changes during the read is lost, and the new state is written as the pages come.
    async fn full_read(
        &self,
        cred: &Credentials,
        query: &GroupQuery,
        key: Option<delta_state::Key>,
        (reason, old): (FullReason, Old),
        rounds: Option<Arc<AppRounds>>,
        line: &Line,
    ) -> Result<(Fetched, Option<delta_state::Commit>), FetchError> {
        let Self { client, state_dir, dry_run, now } = *self;
        let mut requests = 0;
        let keep = match key {
            Some(key) if !dry_run => {
                let users_link = if let Some(app) = rounds.as_deref() {
                    let (next, taken_by) = app.next_link()?;
                    requests += taken_by;
                    next
                } else {
                    requests += 1;
                    client.users_latest(cred, &query.graph).await?
                };
                let group_link = client.membership_latest(cred, &query.graph, query.group.as_str()).await?;
                requests += 1;
                let path = key.path(state_dir);
                // The old state's generation goes once the new one is in place; a safety net
                // counts how far it had drifted.
                let (replaces, old) = match old {
                    Old::None => (None, None),
                    Old::Kept(o) => (Some(o.header.clone()), Some(o)),
                    Old::Lost(h) => (Some(h), None),
                };
                let before =
                    old.filter(|_| reason == FullReason::SafetyNet).and_then(|o| o.records().ok()).and_then(digests);
                let header = Header { key, group_link, users_link, full_at: now, generation: 0, log: None };
                match delta_state::Writer::create(state_dir, header, replaces) {
                    Ok(writer) => Some(Keep { writer, phones: query.mobile_phone, before, drift: 0, failed: None }),
                    Err(e) => {
                        delta_state::abandon(&path, query.group.as_str(), &e);
                        None
                    }
                }
            }
            _ => None,
        };
        let FullRead { roster, pages, state, drift } = client.members(cred, query, keep, line).await?;
        let state = state.map(|c| if reason == FullReason::SafetyNet { c.of_safety_net(now) } else { c });
        if let Some(d) = drift {
            tracing::warn!(group = %query.group, drift = d, "the safety-net full read found members the delta state had wrong");
        }
        let fetched = Fetched {
            members: Members::Read(roster),
            version: state.as_ref().map(delta_state::Commit::version),
            read: Read::Full(reason),
            requests: requests + pages,
            drift,
            ignored: None,
            matched: vec![],
        };
        Ok((fetched, state))
    }

    /// A delta read: the group's membership round (read already) and the app's users round,
    /// applied to its old state. Only the members they name are looked up (by id, in the
    /// state's index): what each was and is now is the run's changes, kept beside the old
    /// state. The new state is the old member data with a longer log of changes (or, once
    /// the log is long, a new generation with the log folded in). Members that joined with
    /// attributes not known yet are read by id. A group that nothing changed is not
    /// rewritten, and its links move only when the rounds saw changes elsewhere.
    async fn delta_read(
        &self,
        cred: &Credentials,
        query: &GroupQuery,
        key: &delta_state::Key,
        old: delta_state::Opened,
        membership: &MembershipRound,
        (users, next): (&UsersRound, &str),
    ) -> Result<(Fetched, Option<delta_state::Commit>), FetchError> {
        let header = old.header.clone();
        let Self { client, state_dir, dry_run, .. } = *self;
        let mut requests = membership.requests + users.requests;
        let new_header = Header {
            key: key.clone(),
            group_link: membership.link.clone(),
            users_link: next.to_owned(),
            ..header.clone()
        };
        let path = old.path().to_owned();
        let corrupt = |e: Unusable| FetchError::StateCorrupt(format!("{}: {e:?}", path.display()));
        let mut found =
            tokio::task::block_in_place(|| Found::of(&old, membership, users, query.mobile_phone)).map_err(corrupt)?;
        // Members that joined and were not in the state: their attributes from the users
        // round, or read by id.
        let (looked_up, lookups) = if found.unknown.is_empty() {
            (HashMap::new(), 0)
        } else {
            client.lookup(cred, &query.graph, &found.unknown).await?
        };
        requests += lookups;
        found.add_looked_up(&looked_up);
        if found.miscounted {
            return Err(corrupt(Unusable::Corrupt("its user counts do not add up".into())));
        }
        let Found { changes, matched, count, counts, .. } = found;
        // Graph's limited-information answer, as a full read would tell it.
        if let (false, Some(missing)) = (changes.is_empty(), counts.limited()) {
            let (group, users) = (query.group.to_string(), usize::try_from(counts.users).unwrap_or(usize::MAX));
            return Err(FetchError::LimitedInformation { group, users, missing });
        }
        let rounds_saw_nothing = users.now.is_empty()
            && users.removed.is_empty()
            && membership.joined.is_empty()
            && membership.left.is_empty();
        let group = query.group.as_str();
        let state = if dry_run {
            None
        } else if changes.is_empty() {
            // The links move only when the rounds saw changes (so that the next rounds need
            // not replay them); rounds that saw nothing leave the state as it was: an
            // unchanged run writes nothing.
            (!rounds_saw_nothing && new_header != header)
                .then(|| delta_state::Commit::links_only(state_dir, &new_header))
                .transpose()
                .map_err(|e| delta_state::abandon(old.path(), group, &e))
                .ok()
                .flatten()
        } else if delta_state::compact_due(old.log().len() + changes.len(), count) {
            match tokio::task::block_in_place(|| delta_state::compact(state_dir, &old, &changes, new_header.clone())) {
                Ok(c) => Some(c),
                Err(delta_state::Compaction::Read(e)) => return Err(corrupt(e)),
                Err(delta_state::Compaction::Write(e)) => {
                    delta_state::abandon(old.path(), group, &e);
                    None
                }
            }
        } else {
            delta_state::Commit::with_log(state_dir, &new_header, &old, &changes, (count, counts))
                .map_err(|e| delta_state::abandon(old.path(), group, &e))
                .ok()
        };
        if changes.is_empty() {
            tracing::debug!(group = %query.group, "nothing of the group changed");
        } else {
            tracing::info!(group = %query.group, joined = membership.joined.len(), left = membership.left.len(), looked_up = lookups, objects = count, "read the group's changes");
        }
        let version =
            if changes.is_empty() { Some(header.version()) } else { state.as_ref().map(delta_state::Commit::version) };
        let members = Members::Kept {
            state: old,
            changes,
            phones: query.mobile_phone,
            count,
            discard: !dry_run,
            loaded: std::sync::OnceLock::new(),
        };
        let fetched = Fetched { members, version, read: Read::Delta, requests, drift: None, ignored: None, matched };
        Ok((fetched, state))
    }
}

/// The members of the old state, as digests (of the id → of the record),
/// to count the drift; `None` if it cannot be read whole.
fn digests(mut r: delta_state::Reader) -> Option<HashMap<u64, u64>> {
    let mut out = HashMap::new();
    while let Some(rec) = r.next_record().ok()? {
        out.insert(rec.id_digest(), rec.digest());
    }
    Some(out)
}

/// What the rounds did to a group's members, found by looking up each member they name.
struct Found {
    /// What each member that changed is now (`None`: gone).
    changes: Overlay,
    /// Users of the round that are members here (changed, or deleted).
    matched: Vec<String>,
    /// Users that joined whose attributes neither the state nor the users round has.
    unknown: Vec<String>,
    /// Members after the changes.
    count: u64,
    /// Users after the changes, as a roster counts them.
    counts: crate::model::roster::UserCounts,
    /// The counts did not add up (a state that disagrees with itself).
    miscounted: bool,
    phones: bool,
}

impl Found {
    fn of(old: &delta_state::Opened, m: &MembershipRound, users: &UsersRound, phones: bool) -> Result<Self, Unusable> {
        let left: HashSet<&str> = m.left.iter().map(String::as_str).collect();
        // Graph lists changes in no order; a member both joined and left in one round is
        // taken as gone (the next full read corrects it if not).
        let joined: BTreeMap<&str, ObjectKind> =
            m.joined.iter().filter(|(id, _)| !left.contains(id.as_str())).map(|(id, k)| (id.as_str(), *k)).collect();
        let named: std::collections::BTreeSet<&str> = users
            .now
            .keys()
            .chain(&users.removed)
            .map(String::as_str)
            .chain(left.iter().copied())
            .chain(joined.keys().copied())
            .collect();
        let mut f = Self {
            changes: Overlay::default(),
            matched: Vec::new(),
            unknown: Vec::new(),
            count: old.members(),
            counts: old.user_counts(),
            miscounted: false,
            phones,
        };
        for id in named {
            let was = old.lookup(id)?;
            let now = match &was {
                Some(rec) => {
                    if users.removed.contains(id) || users.now.contains_key(id) {
                        f.matched.push(id.to_owned());
                    }
                    if left.contains(id) || users.removed.contains(id) {
                        None
                    } else {
                        match users.now.get(id) {
                            Some(now) if rec.kind == ObjectKind::User => Some(f.trimmed(now)),
                            _ => Some(rec.clone()),
                        }
                    }
                }
                None => match joined.get(id) {
                    None => None,
                    Some(_) if users.removed.contains(id) => None,
                    Some(ObjectKind::User) => {
                        if let Some(now) = users.now.get(id) {
                            f.matched.push(id.to_owned());
                            Some(f.trimmed(now))
                        } else {
                            f.unknown.push(id.to_owned());
                            None
                        }
                    }
                    Some(kind) => {
                        Some(Record { id: id.to_owned(), kind: *kind, enabled: None, mail: None, phone: None })
                    }
                },
            };
            f.change(id, was.as_ref(), now);
        }
        Ok(f)
    }

    /// The users that joined, as read by id; one no lookup knows is gone (deleted meanwhile).
    fn add_looked_up(&mut self, looked_up: &HashMap<String, Record>) {
        for id in std::mem::take(&mut self.unknown) {
            if let Some(r) = looked_up.get(&id) {
                let now = Some(self.trimmed(r));
                self.change(&id, None, now);
            }
        }
    }

    fn change(&mut self, id: &str, was: Option<&Record>, now: Option<Record>) {
        if was == now.as_ref() {
            return;
        }
        let counted = was.is_none_or(|r| self.counts.count(&r.view(), false))
            && now.as_ref().is_none_or(|r| self.counts.count(&r.view(), true));
        self.miscounted |= !counted;
        match (was.is_some(), now.is_some()) {
            (false, true) => self.count += 1,
            (true, false) => self.count = self.count.saturating_sub(1),
            _ => {}
        }
        self.changes.set(id.to_owned(), now);
    }

    /// A user's attributes as this state keeps them.
    fn trimmed(&self, r: &Record) -> Record {
        Record { phone: if self.phones { r.phone.clone() } else { None }, ..r.clone() }
    }
}

/// Commits the staged state of every group whose instances all succeeded (`ok` says which
/// groups qualify), each made to fit beside the outputs it feeds (`fed`: their bytes, if
/// known; see [`delta_state::Commit::fit`]); the others' stay as they were. Returns the
/// failures, with their group.
#[must_use]
pub fn commit(
    staged: impl IntoIterator<Item = (FetchKey, delta_state::Commit)>,
    ok: impl Fn(&FetchKey) -> bool,
    fed: impl Fn(&FetchKey) -> Option<u64>,
) -> Vec<(FetchKey, crate::files::write::WriteError)> {
    let mut failed = Vec::new();
    for (key, s) in staged {
        if ok(&key) {
            let limit = fed(&key).map_or(0, |b| b.saturating_mul(3) / 2);
            if let Err(e) = s.fit(limit).and_then(delta_state::Commit::commit) {
                failed.push((key, e));
            }
        } else {
            s.abandon();
        }
    }
    failed
}
