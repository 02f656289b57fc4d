//! Delta queries: a group's membership round (`groups/delta`), an app's users round
//! (`users/delta`), the links that start them from now (`$deltatoken=latest`), and users
//! read by id. Every page goes through the same checks as a members page: its status,
//! retries, one token renewal, the link's host, no page twice, the size cap.

use std::collections::{HashMap, HashSet};

use url::Url;

use super::{same_origin, FetchError, GraphClient};
use crate::config::credential::Credentials;
use crate::files::delta_state::Record;
use crate::model::page::{self, Links, ObjectKind, UserChange};

/// The attributes a users round and a lookup read: every attribute a query can select,
/// so that one round per app serves all its groups, whatever their `query_filter`.
pub const USERS_SELECT: &str = "mail,mobilePhone,accountEnabled";

/// Ids a `getByIds` request takes at most.
pub const LOOKUP_BATCH: usize = 1000;

/// Ids a `users?$filter=id in (…)` request takes at most (Graph's limit on `in`).
const FILTER_BATCH: usize = 15;

/// What a membership round said of one group.
#[derive(Debug, Default)]
pub struct MembershipRound {
    /// Members that joined (or were listed again: a replay), with what they are.
    pub joined: Vec<(String, ObjectKind)>,
    /// Members that left the group or were deleted.
    pub left: Vec<String>,
    /// The link of the next round.
    pub link: String,
    /// Pages read.
    pub requests: u64,
}

/// What a users round said of an app's tenant.
#[derive(Debug, Default)]
pub struct UsersRound {
    /// Users created, restored or changed: their attributes now (phones included).
    pub now: HashMap<String, Record>,
    /// Users deleted.
    pub removed: HashSet<String>,
    /// The link of the next round.
    pub link: String,
    /// Pages read.
    pub requests: u64,
}

fn groups_url(graph: &str, group: &str) -> String {
    format!("{graph}/v1.0/groups/delta?$filter=id eq '{group}'&$select=members")
}

fn users_url(graph: &str) -> String {
    format!("{graph}/v1.0/users/delta?$select={USERS_SELECT}")
}

impl GraphClient {
    /// A link from which the group's next round sees the changes from now on.
    pub async fn membership_latest(&self, cred: &Credentials, graph: &str, group: &str) -> Result<String, FetchError> {
        let url = format!("{}&$deltatoken=latest", groups_url(graph, group));
        self.round(cred, graph, url, |body| page::visit_group_delta(body, group, |_| {}).map(|(links, _)| links))
            .await
            .map(|(link, _)| link)
    }

    /// A link from which the app's next users round sees the changes from now on.
    pub async fn users_latest(&self, cred: &Credentials, graph: &str) -> Result<String, FetchError> {
        let url = format!("{}&$deltatoken=latest", users_url(graph));
        self.round(cred, graph, url, |body| page::visit_user_delta(body, |_| {})).await.map(|(link, _)| link)
    }

    /// The changes to `group`'s direct membership since `link`. Graph may list a member in
    /// any order, several times, and on pages that repeat the group object.
    pub async fn membership_round(
        &self,
        cred: &Credentials,
        graph: &str,
        group: &str,
        link: &str,
    ) -> Result<MembershipRound, FetchError> {
        let mut r = MembershipRound::default();
        let mut gone = false;
        let (new_link, requests) = self
            .round(cred, graph, link.to_owned(), |body| {
                let (links, page::GroupGone(g)) = page::visit_group_delta(body, group, |c| {
                    // A full read skips such an object: so does a delta read.
                    if !crate::model::ids::is_object_id(&c.id) {
                        return;
                    }
                    let id = c.id.to_ascii_lowercase();
                    if c.removed {
                        r.left.push(id);
                    } else {
                        r.joined.push((id, c.kind));
                    }
                })?;
                gone |= g;
                Ok(links)
            })
            .await?;
        // Fail closed: a list of a deleted group's members would be a guess.
        if gone {
            return Err(FetchError::GroupDeleted { group: group.to_owned() });
        }
        (r.link, r.requests) = (new_link, requests);
        Ok(r)
    }

    /// The users of the tenant that changed since `link`: their attributes now, or that
    /// they are gone. Replays are harmless: each item is the user's state, not a change.
    pub async fn users_round(&self, cred: &Credentials, graph: &str, link: &str) -> Result<UsersRound, FetchError> {
        let mut r = UsersRound::default();
        let (new_link, requests) = self
            .round(cred, graph, link.to_owned(), |body| {
                page::visit_user_delta(body, |u| match u {
                    UserChange::Now(m) => {
                        if let Some(rec) = Record::of(&m, true) {
                            r.removed.remove(&rec.id);
                            r.now.insert(rec.id.clone(), rec);
                        }
                    }
                    UserChange::Removed(id) if crate::model::ids::is_object_id(&id) => {
                        let id = id.to_ascii_lowercase();
                        r.now.remove(&id);
                        r.removed.insert(id);
                    }
                    UserChange::Removed(_) => {}
                })
            })
            .await?;
        (r.link, r.requests) = (new_link, requests);
        Ok(r)
    }

    /// Users read by id (unknown or deleted ids are left out), and the requests made:
    /// `POST directoryObjects/getByIds` (up to 1,000 ids a request) with `$select`. Whether
    /// Graph honours that `$select` is not documented; when an answer's users lack
    /// `accountEnabled`, those ids are read again through `users?$filter=id in (…)` (15 a
    /// request), whose `$select` is.
    pub async fn lookup(
        &self,
        cred: &Credentials,
        graph: &str,
        ids: &[String],
    ) -> Result<(HashMap<String, Record>, u64), FetchError> {
        let mut found = HashMap::new();
        let mut again = Vec::new();
        let mut requests = 0;
        for chunk in ids.chunks(LOOKUP_BATCH) {
            let url = format!("{graph}/v1.0/directoryObjects/getByIds?$select=id,{USERS_SELECT}");
            let body = serde_json::json!({ "ids": chunk, "types": ["user"] }).to_string();
            let answer = self.post_page(cred, &url, body.as_bytes()).await?;
            requests += 1;
            page::visit(&answer, |m| {
                let Some(rec) = Record::of(&m, true) else { return };
                if m.kind == ObjectKind::User && m.account_enabled.is_none() {
                    again.push(rec.id);
                } else if m.kind == ObjectKind::User {
                    found.insert(rec.id.clone(), rec);
                }
            })
            .map_err(|e| FetchError::BadPage { url: url.clone(), detail: e.to_string() })?;
        }
        for chunk in again.chunks(FILTER_BATCH) {
            let list: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
            let url = format!("{graph}/v1.0/users?$filter=id in ({})&$select=id,{USERS_SELECT}", list.join(","));
            let answer = self.page(cred, graph, &url).await?;
            requests += 1;
            let next = page::visit(&answer, |m| {
                let Some(rec) = Record::of(&m, true) else { return };
                found.insert(rec.id.clone(), rec);
            })
            .map_err(|e| FetchError::BadPage { url: url.clone(), detail: e.to_string() })?;
            if next.is_some() {
                return Err(FetchError::BadPage { url, detail: "15 users came with an @odata.nextLink".into() });
            }
        }
        Ok((found, requests))
    }

    /// Reads a delta round from `url` to its `@odata.deltaLink`, handing each page's body
    /// to `each`; the deltaLink and the pages read. Each link must stay on the Graph host,
    /// and no page may come twice.
    async fn round(
        &self,
        cred: &Credentials,
        graph: &str,
        mut url: String,
        mut each: impl FnMut(&[u8]) -> Result<Links, serde_json::Error>,
    ) -> Result<(String, u64), FetchError> {
        let origin = Url::parse(graph).map_err(|e| FetchError::Request(format!("{graph}: {e}")))?;
        let mut seen = HashSet::from([url.clone()]);
        let mut pages = 0;
        loop {
            let body = self.page(cred, graph, &url).await?;
            pages += 1;
            let links = each(&body).map_err(|e| FetchError::BadPage { url: url.clone(), detail: e.to_string() })?;
            let (next, done) = match links {
                Links { next: Some(n), delta: None } => (n, false),
                Links { next: None, delta: Some(d) } => (d, true),
                _ => {
                    let detail = "a delta page must carry exactly one of @odata.nextLink and @odata.deltaLink".into();
                    return Err(FetchError::BadPage { url, detail });
                }
            };
            if !same_origin(&origin, &next) {
                return Err(FetchError::ForeignNextLink { url, next, graph: graph.to_owned() });
            }
            if done {
                return Ok((next, pages));
            }
            if !seen.insert(next.clone()) {
                return Err(FetchError::PageLoop { url });
            }
            url = next;
        }
    }
}
