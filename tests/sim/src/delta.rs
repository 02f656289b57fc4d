//! Delta queries as Graph documents them: `groups/delta` (one group, by `$filter=id eq`,
//! `$select=members`) and `users/delta`, with `$deltatoken=latest`, rounds paged with the
//! group object repeated, `@removed` entries, expired and reset tokens and replays; and
//! users read by id (`directoryObjects/getByIds`, `users?$filter=id in (…)`).
//!
//! The directory is versioned by snapshots: a delta request that finds it changed since the
//! last snapshot takes a new one. A token is a version; a round is the difference between
//! the token's snapshot and the current one.

use std::collections::{BTreeMap, HashMap};

use axum::response::Response;
use serde_json::{json, Value};

use super::{graph_error, json_response, App, Directory, Fault, State};

/// What delta can see of the directory at one version.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Group → its direct members: id → `@odata.type`.
    members: HashMap<String, BTreeMap<String, String>>,
    /// User id → its `mail`, `mobilePhone` and `accountEnabled` (those that are set).
    users: HashMap<String, serde_json::Map<String, Value>>,
}

const TRACKED: [&str; 3] = ["mail", "mobilePhone", "accountEnabled"];

fn snapshot(d: &Directory) -> Snapshot {
    let mut s = Snapshot::default();
    let mut user = |u: &Value| {
        let Some(id) = u["id"].as_str() else { return };
        if u["@odata.type"] != "#microsoft.graph.user" || s.users.contains_key(id) {
            return;
        }
        let props = TRACKED
            .iter()
            .filter_map(|k| u.get(*k).filter(|v| !v.is_null()).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        s.users.insert(id.to_owned(), props);
    };
    for members in d.groups.values() {
        members.iter().for_each(&mut user);
    }
    d.users.iter().for_each(&mut user);
    for (g, members) in &d.groups {
        let m = members
            .iter()
            .filter_map(|v| {
                let id = v["id"].as_str()?.to_owned();
                Some((id, v["@odata.type"].as_str().unwrap_or("#microsoft.graph.user").to_owned()))
            })
            .collect();
        s.members.insert(g.clone(), m);
    }
    s
}

/// The current version: a new snapshot if the directory changed since the last one.
fn version(s: &mut State) -> usize {
    if (s.delta_blind || !s.dirty) && !s.snapshots.is_empty() {
        return s.snapshots.len() - 1;
    }
    let now = snapshot(&s.directory);
    if s.snapshots.last() != Some(&now) {
        s.snapshots.push(now);
    }
    s.dirty = false;
    s.snapshots.len() - 1
}

/// The directory as it is now, for lookups by id (which see it even when delta is blind).
fn current(s: &mut State) -> std::borrow::Cow<'_, Snapshot> {
    if s.delta_blind {
        return std::borrow::Cow::Owned(snapshot(&s.directory));
    }
    let v = version(s);
    std::borrow::Cow::Borrowed(&s.snapshots[v])
}

/// A delta request's answer, or the fault due for it.
/// `base` is the origin the request came to (`scheme://host`): links lead back there.
pub(crate) fn answer(
    s: &mut State,
    base: &str,
    path: &str,
    q: &HashMap<String, String>,
    body: &str,
    app: &App,
) -> (u16, Response) {
    let due = if s.graph_faults.is_empty() { &mut s.delta_faults } else { &mut s.graph_faults };
    if let Some(f) = (!due.is_empty()).then(|| due.remove(0)) {
        match f {
            Fault::Pass => {}
            Fault::RevokeTokens => {
                s.tokens.clear();
                return (
                    401,
                    graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
                );
            }
            Fault::Gone => {
                let mut r = graph_error(410, "syncStateReset", "The sync state is reset; start over.");
                let initial = format!("{}{path}?$deltatoken=", base);
                if let Ok(v) = initial.parse() {
                    r.headers_mut().insert("location", v);
                }
                return (410, r);
            }
            Fault::LoopTo(_) => {
                // A nextLink back to this very page (asked for by its own link: one parameter).
                let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let own = format!("{base}{path}?{}", query.join("&"));
                return (200, json_response(200, &json!({"value": [], "@odata.nextLink": own})));
            }
            other => return (other_status(&other), super::fault_response(&other)),
        }
    }
    match path {
        "/v1.0/groups/delta" => groups(s, base, q),
        "/v1.0/users/delta" => users(s, base, q, app),
        "/v1.0/directoryObjects/getByIds" => by_ids(s, base, q, body, app),
        "/v1.0/users" => users_in(s, base, q, app),
        _ => (404, graph_error(404, "UnknownError", "No HTTP resource was found that matches the request URI.")),
    }
}

fn other_status(f: &Fault) -> u16 {
    match f {
        Fault::Status { status, .. } => *status,
        _ => 200,
    }
}

/// The syncStateNotFound answer to an expired token (as the 2020 devblog shows it).
fn expired() -> (u16, Response) {
    (
        400,
        graph_error(
            400,
            "syncStateNotFound",
            "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        ),
    )
}

/// A token as `<letter><version>.<rest>`: the version, if the token is one of ours.
#[allow(clippy::result_large_err)] // a simulator's error answer
fn token(s: &State, t: &str, letter: char) -> Result<(usize, String), (u16, Response)> {
    let bad = || (400, graph_error(400, "BadRequest", "Invalid delta token."));
    let rest = t.strip_prefix(letter).ok_or_else(bad)?;
    let (v, tail) = rest.split_once('.').ok_or_else(bad)?;
    let v: usize = v.parse().map_err(|_| bad())?;
    if v >= s.snapshots.len() {
        return Err(bad());
    }
    if v < s.expired_before {
        return Err(expired());
    }
    Ok((v.saturating_sub(s.replay), tail.to_owned()))
}

fn page_size(s: &State) -> usize {
    if s.delta_page_size == 0 {
        200
    } else {
        s.delta_page_size
    }
}

/// Page `page` of `items`; `None` past the last. With `empty_delta_pages`, page 0 of each
/// round is empty (with a nextLink, as Graph may answer).
fn slice(s: &State, items: &[Value], page: usize) -> (Vec<Value>, bool) {
    let (size, shift) = (page_size(s), usize::from(s.empty_delta_pages));
    if page < shift {
        return (vec![], true);
    }
    let start = (page - shift) * size;
    let chunk: Vec<Value> = items.iter().skip(start).take(size).cloned().collect();
    (chunk, start + size < items.len())
}

fn group_filter(q: &HashMap<String, String>) -> Option<String> {
    let f = q.get("$filter")?;
    let id = f.trim().strip_prefix("id eq '")?.strip_suffix('\'')?;
    Some(id.to_ascii_lowercase())
}

fn groups(s: &mut State, base: &str, q: &HashMap<String, String>) -> (u16, Response) {
    let (from, to, group, page) = if let Some(t) = q.get("$skiptoken") {
        // r<from|i>.<to>.<group>.<page>
        let parts: Vec<&str> = t.trim_start_matches('r').split('.').collect();
        let [from, to, group, page] = parts.as_slice() else {
            return (400, graph_error(400, "BadRequest", "Invalid skip token."));
        };
        let Ok(to) = to.parse() else { return (400, graph_error(400, "BadRequest", "Invalid skip token.")) };
        (from.parse().ok(), to, (*group).to_owned(), page.parse().unwrap_or(0))
    } else if let Some(t) = q.get("$deltatoken") {
        let current = version(s);
        if t == "latest" {
            let Some(g) = group_filter(q) else {
                return (400, graph_error(400, "BadRequest", "$filter id eq is needed"));
            };
            return latest(base, "groups", &format!("v{current}.{g}"));
        }
        match token(s, t, 'v') {
            Ok((v, g)) => (Some(v), current, g, 0),
            Err(e) => return e,
        }
    } else {
        let Some(g) = group_filter(q) else { return (400, graph_error(400, "BadRequest", "$filter id eq is needed")) };
        if q.get("$select").map(String::as_str) != Some("members") {
            return (400, graph_error(400, "BadRequest", "the simulator tracks $select=members only"));
        }
        (None, version(s), g, 0)
    };
    let items = round(s, format!("g.{from:?}.{to}.{group}"), |s| group_changes(s, from, to, &group));
    let (chunk, more) = slice(s, &items, page);
    let value = if s.deleted_groups.contains(&group) {
        vec![json!({"id": group, "@removed": {"reason": "changed"}})]
    } else if chunk.is_empty() {
        vec![]
    } else {
        vec![json!({"id": group, "displayName": group, "members@delta": chunk})]
    };
    let mut body = json!({"@odata.context": context(base, "groups"), "value": value});
    if more {
        let from = from.map_or_else(|| "i".to_owned(), |f| f.to_string());
        body["@odata.nextLink"] =
            json!(format!("{}/v1.0/groups/delta?$skiptoken=r{from}.{to}.{group}.{}", base, page + 1));
    } else {
        body["@odata.deltaLink"] = json!(format!("{}/v1.0/groups/delta?$deltatoken=v{to}.{group}", base));
    }
    (200, json_response(200, &body))
}

/// The entries of one round, computed once and kept for its later pages.
fn round(s: &mut State, key: String, make: impl FnOnce(&State) -> Vec<Value>) -> std::sync::Arc<Vec<Value>> {
    if let Some(r) = s.rounds.get(&key) {
        return std::sync::Arc::clone(r);
    }
    if s.rounds.len() > 64 {
        s.rounds.clear();
    }
    let r = std::sync::Arc::new(make(s));
    s.rounds.insert(key, std::sync::Arc::clone(&r));
    r
}

/// `members@delta` of `group` from version `from` (none: the initial round) to `to`.
fn group_changes(s: &State, from: Option<usize>, to: usize, group: &str) -> Vec<Value> {
    if from == Some(to) {
        return Vec::new();
    }
    let empty = BTreeMap::new();
    let members_now = s.snapshots.get(to).and_then(|n| n.members.get(group)).unwrap_or(&empty);
    let mut items = Vec::new();
    match from.and_then(|f| s.snapshots.get(f)) {
        None => {
            for (id, t) in members_now {
                items.push(json!({"@odata.type": t, "id": id}));
            }
        }
        Some(old) => {
            let before = old.members.get(group).unwrap_or(&empty);
            for (id, t) in members_now.iter().filter(|(id, _)| !before.contains_key(*id)) {
                items.push(json!({"@odata.type": t, "id": id}));
            }
            for (id, t) in before.iter().filter(|(id, _)| !members_now.contains_key(*id)) {
                items.push(json!({"@odata.type": t, "id": id, "@removed": {"reason": "deleted"}}));
            }
        }
    }
    items
}

/// The users of a `users/delta` round from `from` (none: the initial round) to `to`.
fn user_changes(s: &State, from: Option<usize>, to: usize, fields: &[&str], app: &App) -> Vec<Value> {
    let Some(now) = s.snapshots.get(to) else { return Vec::new() };
    if from == Some(to) {
        return Vec::new();
    }
    let old = from.and_then(|f| s.snapshots.get(f));
    let mut ids: Vec<&String> = now.users.keys().collect();
    ids.sort();
    let mut items = Vec::new();
    for id in ids {
        let props = &now.users[id];
        if old.is_none_or(|o| o.users.get(id) != Some(props)) {
            items.push(user_item(id, props, fields, app));
        }
    }
    if let Some(old) = old {
        let mut gone: Vec<&String> = old.users.keys().filter(|id| !now.users.contains_key(*id)).collect();
        gone.sort();
        for id in gone {
            items.push(json!({"id": id, "@removed": {"reason": "deleted"}}));
        }
    }
    items
}

/// The answer to `$deltatoken=latest`: no data, a link to the next round from now.
fn latest(base: &str, collection: &str, token: &str) -> (u16, Response) {
    let link = format!("{base}/v1.0/{collection}/delta?$deltatoken={token}");
    (
        200,
        json_response(
            200,
            &json!({"@odata.context": context(base, collection), "@odata.deltaLink": link, "value": []}),
        ),
    )
}

fn context(base: &str, collection: &str) -> String {
    format!("{}/v1.0/$metadata#{collection}", base)
}

/// A user's selected attributes, as a delta or lookup answer gives them: those never set
/// are left out; a limited app sees none.
fn user_item(id: &str, props: &serde_json::Map<String, Value>, select: &[&str], app: &App) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), json!(id));
    if !app.limited {
        for k in select {
            if let Some(v) = props.get(*k) {
                out.insert((*k).into(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn users(s: &mut State, base: &str, q: &HashMap<String, String>, app: &App) -> (u16, Response) {
    let (from, to, select, page) = if let Some(t) = q.get("$skiptoken") {
        // s<from|i>.<to>.<page>.<select>
        let parts: Vec<&str> = t.trim_start_matches('s').splitn(4, '.').collect();
        let [from, to, page, select] = parts.as_slice() else {
            return (400, graph_error(400, "BadRequest", "Invalid skip token."));
        };
        let Ok(to) = to.parse() else { return (400, graph_error(400, "BadRequest", "Invalid skip token.")) };
        (from.parse().ok(), to, (*select).to_owned(), page.parse().unwrap_or(0))
    } else if let Some(t) = q.get("$deltatoken") {
        let current = version(s);
        let select = q.get("$select").cloned().unwrap_or_default();
        if t == "latest" {
            return latest(base, "users", &format!("u{current}.{select}"));
        }
        match token(s, t, 'u') {
            Ok((v, select)) => (Some(v), current, select, 0),
            Err(e) => return e,
        }
    } else {
        (None, version(s), q.get("$select").cloned().unwrap_or_default(), 0)
    };
    let fields: Vec<&str> = select.split(',').filter(|f| !f.is_empty() && *f != "id").collect();
    let items =
        round(s, format!("u.{from:?}.{to}.{select}.{}", app.limited), |s| user_changes(s, from, to, &fields, app));
    let (chunk, more) = slice(s, &items, page);
    let mut body = json!({"@odata.context": context(base, "users"), "value": chunk});
    match s.users_delta_context.as_deref() {
        Some("") => {
            body.as_object_mut().map(|o| o.remove("@odata.context"));
        }
        Some(c) => body["@odata.context"] = json!(c),
        None => {}
    }
    if more {
        let from = from.map_or_else(|| "i".to_owned(), |f| f.to_string());
        body["@odata.nextLink"] =
            json!(format!("{}/v1.0/users/delta?$skiptoken=s{from}.{to}.{}.{select}", base, page + 1));
    } else {
        body["@odata.deltaLink"] = json!(format!("{}/v1.0/users/delta?$deltatoken=u{to}.{select}", base));
    }
    (200, json_response(200, &body))
}

#[derive(serde::Deserialize)]
struct ByIds {
    ids: Vec<String>,
    #[serde(default)]
    types: Vec<String>,
}

fn by_ids(s: &mut State, base: &str, q: &HashMap<String, String>, body: &str, app: &App) -> (u16, Response) {
    let Ok(b) = serde_json::from_str::<ByIds>(body) else {
        return (400, graph_error(400, "BadRequest", "Invalid request body."));
    };
    if b.ids.len() > 1000 {
        return (400, graph_error(400, "BadRequest", "Too many ids: at most 1000."));
    }
    if !b.types.is_empty() && !b.types.iter().any(|t| t.eq_ignore_ascii_case("user")) {
        return (200, json_response(200, &json!({"@odata.context": context(base, "directoryObjects"), "value": []})));
    }
    let ignores_select = s.getbyids_ignores_select;
    let now = current(s);
    let select = q.get("$select").cloned().unwrap_or_default();
    let fields: Vec<&str> = if ignores_select {
        // Graph's default user set, without accountEnabled.
        vec!["mail", "mobilePhone"]
    } else {
        select.split(',').filter(|f| !f.is_empty() && *f != "id").collect()
    };
    let value: Vec<Value> = b
        .ids
        .iter()
        .filter_map(|id| now.users.get(&id.to_ascii_lowercase()).map(|p| (id, p)))
        .map(|(id, p)| {
            let mut v = user_item(id, p, &fields, app);
            v["@odata.type"] = json!("#microsoft.graph.user");
            v
        })
        .collect();
    (200, json_response(200, &json!({"@odata.context": context(base, "directoryObjects"), "value": value})))
}

fn users_in(s: &mut State, base: &str, q: &HashMap<String, String>, app: &App) -> (u16, Response) {
    let filter = q.get("$filter").cloned().unwrap_or_default();
    let Some(list) = filter.trim().strip_prefix("id in (").and_then(|l| l.strip_suffix(')')) else {
        return (400, graph_error(400, "Request_UnsupportedQuery", "Unsupported query."));
    };
    let ids: Vec<String> = list.split(',').map(|i| i.trim().trim_matches('\'').to_ascii_lowercase()).collect();
    if ids.len() > 15 {
        return (400, graph_error(400, "Request_UnsupportedQuery", "Too many values in the in operator (at most 15)."));
    }
    let now = current(s);
    let select = q.get("$select").cloned().unwrap_or_default();
    let fields: Vec<&str> = select.split(',').filter(|f| !f.is_empty() && *f != "id").collect();
    let value: Vec<Value> =
        ids.iter().filter_map(|id| now.users.get(id).map(|p| user_item(id, p, &fields, app))).collect();
    (200, json_response(200, &json!({"@odata.context": context(base, "users"), "value": value})))
}
