//! One page of a Graph collection (`/members`): the directory objects it holds and its
//! `@odata.nextLink`. Parsing only, no I/O.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What kind of directory object a member is (`@odata.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `#microsoft.graph.user`: the only kind that is synced.
    User,
    /// `#microsoft.graph.group`
    Group,
    /// `#microsoft.graph.device`
    Device,
    /// `#microsoft.graph.orgContact`
    Contact,
    /// `#microsoft.graph.servicePrincipal`
    ServicePrincipal,
    /// Any other `@odata.type`.
    Other,
    /// No `@odata.type`, and the page's `@odata.context` does not say either.
    Untyped,
}

impl ObjectKind {
    pub(crate) fn from_type(t: &str) -> Self {
        match t.trim_start_matches('#') {
            "microsoft.graph.user" => Self::User,
            "microsoft.graph.group" => Self::Group,
            "microsoft.graph.device" => Self::Device,
            "microsoft.graph.orgContact" => Self::Contact,
            "microsoft.graph.servicePrincipal" => Self::ServicePrincipal,
            _ => Self::Other,
        }
    }

    /// The kind implied by a collection's `@odata.context`, e.g. `…/$metadata#users(id,mail)`.
    pub(crate) fn from_context(context: Option<&str>) -> Self {
        let Some(c) = context.and_then(|c| c.rsplit_once("$metadata#")).map(|(_, c)| c) else {
            return Self::Untyped;
        };
        let collection = c.split(['(', '/']).next().unwrap_or_default();
        match collection {
            "users" => Self::User,
            "groups" => Self::Group,
            "devices" => Self::Device,
            "contacts" => Self::Contact,
            "servicePrincipals" => Self::ServicePrincipal,
            _ => Self::Untyped,
        }
    }
}

/// A string attribute as Graph sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// A JSON string, decoded.
    Str(String),
    /// Something that does not decode to a string (a lone surrogate escape such
    /// as `"\ud800"`, a number, an object): its JSON text, kept for the log.
    Undecodable(String),
}

impl Text {
    /// The decoded string, or the raw JSON text when it does not decode.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Str(s) | Self::Undecodable(s) => s,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

/// A directory object as Graph returned it, with only the fields usersync reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Object id (for logs); empty if Graph sent none.
    pub id: String,
    /// User, group, device, …
    pub kind: ObjectKind,
    /// `mail`, raw.
    pub mail: Option<Text>,
    /// `mobilePhone`, raw.
    pub mobile_phone: Option<Text>,
    /// `accountEnabled`.
    pub account_enabled: Option<bool>,
}

/// Only the `@odata.nextLink` of a page (the `value` array must be there, and is skipped).
#[derive(Deserialize)]
struct NextOnly {
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "value")]
    _value: serde::de::IgnoredAny,
}

/// The page's `@odata.nextLink`, found without building the members. Graph sends it
/// before `value`: then only the leading keys are read (the full parse that follows
/// checks the rest); otherwise the whole body is scanned.
pub fn next_link(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    match leading_next_link(body) {
        Some(link) => Ok(Some(link)),
        None => serde_json::from_slice::<NextOnly>(body).map(|p| p.next_link),
    }
}

/// `@odata.nextLink` if it is among the top-level string members before `value`.
fn leading_next_link(body: &[u8]) -> Option<String> {
    let ws = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // The end (exclusive) of the JSON string starting at `i`.
    let string_end = |i: usize| {
        let mut j = i + 1;
        loop {
            match body.get(j)? {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                _ => j += 1,
            }
        }
    };
    let mut i = ws(0);
    (body.get(i) == Some(&b'{')).then_some(())?;
    loop {
        i = ws(i + 1);
        (body.get(i) == Some(&b'"')).then_some(())?;
        let key_end = string_end(i)?;
        let key = &body[i..key_end];
        i = ws(key_end);
        (body.get(i) == Some(&b':')).then_some(())?;
        i = ws(i + 1);
        (body.get(i) == Some(&b'"')).then_some(())?;
        let end = string_end(i)?;
        if key == b"\"@odata.nextLink\"" {
            return serde_json::from_slice(&body[i..end]).ok();
        }
        i = ws(end);
        (body.get(i) == Some(&b',')).then_some(())?;
    }
}

/// A members page or a delta page (a members page has no `@odata.deltaLink`, and its
/// objects no `members@delta` or `@removed`).
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(rename = "@odata.context", borrow)]
    context: Option<Cow<'a, str>>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
    #[serde(borrow)]
    value: Vec<RawObject<'a>>,
}

/// A directory object: a member, a user of a delta round, or a group with its
/// `members@delta`. `mail` and `mobilePhone` are kept as raw JSON first, so that one member
/// with an undecodable value is skipped alone instead of failing the page.
#[derive(Deserialize)]
struct RawObject<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mail: Option<&'a RawValue>,
    #[serde(rename = "mobilePhone", borrow)]
    mobile_phone: Option<&'a RawValue>,
    #[serde(rename = "accountEnabled")]
    account_enabled: Option<bool>,
    #[serde(rename = "members@delta", borrow, default)]
    members: Vec<RawDeltaMember<'a>>,
    #[serde(rename = "@removed")]
    removed: Option<serde::de::IgnoredAny>,
}

impl<'a> RawObject<'a> {
    fn view(self, default_kind: ObjectKind) -> MemberView<'a> {
        MemberView {
            id: self.id.unwrap_or_default(),
            kind: self.odata_type.as_deref().map_or(default_kind, ObjectKind::from_type),
            mail: self.mail.and_then(text),
            mobile_phone: self.mobile_phone.and_then(text),
            account_enabled: self.account_enabled,
        }
    }
}

/// A string attribute as the page holds it, borrowed from the body where it can be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextRef<'a> {
    /// A JSON string, decoded.
    Str(Cow<'a, str>),
    /// Its JSON text, when it does not decode to a string.
    Undecodable(&'a str),
}

/// A directory object on a page, borrowed from the page's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView<'a> {
    /// Object id; empty if Graph sent none.
    pub id: Cow<'a, str>,
    /// User, group, device, …
    pub kind: ObjectKind,
    /// `mail`, raw.
    pub mail: Option<TextRef<'a>>,
    /// `mobilePhone`, raw.
    pub mobile_phone: Option<TextRef<'a>>,
    /// `accountEnabled`.
    pub account_enabled: Option<bool>,
}

impl TextRef<'_> {
    /// The decoded string, or the raw JSON text when it does not decode.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Str(s) => s,
            Self::Undecodable(s) => s,
        }
    }
}

impl MemberView<'_> {
    /// Does this object carry any of the attributes usersync selects?
    #[must_use]
    pub fn has_selected_attribute(&self) -> bool {
        self.mail.is_some() || self.mobile_phone.is_some() || self.account_enabled.is_some()
    }
}

impl<'a> From<&'a Member> for MemberView<'a> {
    fn from(m: &'a Member) -> Self {
        let text = |t: &'a Option<Text>| {
            t.as_ref().map(|t| match t {
                Text::Str(s) => TextRef::Str(Cow::Borrowed(s)),
                Text::Undecodable(s) => TextRef::Undecodable(s),
            })
        };
        Self {
            id: Cow::Borrowed(&m.id),
            kind: m.kind,
            mail: text(&m.mail),
            mobile_phone: text(&m.mobile_phone),
            account_enabled: m.account_enabled,
        }
    }
}

impl From<MemberView<'_>> for Member {
    fn from(m: MemberView<'_>) -> Self {
        let text = |t: Option<TextRef<'_>>| {
            t.map(|t| match t {
                TextRef::Str(s) => Text::Str(s.into_owned()),
                TextRef::Undecodable(s) => Text::Undecodable(s.to_owned()),
            })
        };
        Self {
            id: m.id.into_owned(),
            kind: m.kind,
            mail: text(m.mail),
            mobile_phone: text(m.mobile_phone),
            account_enabled: m.account_enabled,
        }
    }
}

/// A parsed page.
#[derive(Debug)]
pub struct Page {
    /// The objects on this page.
    pub members: Vec<Member>,
    /// The next page, if any.
    pub next_link: Option<String>,
}

/// Parses a page body; a body without a `value` array is an error.
pub fn parse(body: &[u8]) -> Result<Page, serde_json::Error> {
    let mut members = Vec::new();
    let next_link = visit(body, |m| members.push(Member::from(m)))?;
    Ok(Page { members, next_link })
}

/// Hands every object of a page to `f`, borrowed from `body`; returns the next page's link.
/// A body without a `value` array is an error.
pub fn visit(body: &[u8], mut f: impl FnMut(MemberView<'_>)) -> Result<Option<String>, serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    let default_kind = ObjectKind::from_context(raw.context.as_deref());
    for m in raw.value {
        f(m.view(default_kind));
    }
    Ok(raw.next_link)
}

/// Where a delta page leads: exactly one of them is set on a well-formed page.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Links {
    /// `@odata.nextLink`: more pages of this round (even after an empty page).
    pub next: Option<String>,
    /// `@odata.deltaLink`: the round is complete; the link of the next round.
    pub delta: Option<String>,
}

#[derive(Deserialize)]
struct RawDeltaMember<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "@removed")]
    removed: Option<serde::de::IgnoredAny>,
}

/// A change to a group's direct membership, from `members@delta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange<'a> {
    /// The member's object id.
    pub id: Cow<'a, str>,
    /// What it is (`@odata.type`; a user when Graph leaves it out).
    pub kind: ObjectKind,
    /// It left the group (or was deleted): `@removed`.
    pub removed: bool,
}

/// Hands every `members@delta` entry of group `group` on a `groups/delta` page to `f`.
/// A large group's members are split over pages that repeat the group object; objects of
/// other groups are ignored. A page without a `value` array is an error.
pub fn visit_group_delta(
    body: &[u8],
    group: &str,
    mut f: impl FnMut(MemberChange<'_>),
) -> Result<(Links, GroupGone), serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    let mut gone = GroupGone(false);
    for g in raw.value.into_iter().filter(|g| g.id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(group))) {
        gone.0 |= g.removed.is_some();
        for m in g.members {
            let kind = m.odata_type.as_deref().map_or(ObjectKind::User, ObjectKind::from_type);
            f(MemberChange { id: m.id, kind, removed: m.removed.is_some() });
        }
    }
    Ok((Links { next: raw.next_link, delta: raw.delta_link }, gone))
}

/// Whether a `groups/delta` page says the group itself is gone (`@removed` on the group
/// object: deleted in Entra ID). Its members say nothing any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct GroupGone(pub bool);

/// A user on a `users/delta` page: its selected attributes now, or that it is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserChange<'a> {
    /// Created, restored or changed: every selected attribute as it is now; one that was
    /// never set is absent.
    Now(MemberView<'a>),
    /// Deleted (`@removed`, soft or for good): it is no member of anything any more.
    Removed(Cow<'a, str>),
}

/// Hands every user on a `users/delta` page to `f`. A page without a `value` array is an
/// error.
pub fn visit_user_delta(body: &[u8], mut f: impl FnMut(UserChange<'_>)) -> Result<Links, serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    // Everything `users/delta` lists is a user, whatever its `@odata.context` says (or
    // whether it says anything): an object without `@odata.type` is one.
    let default_kind = ObjectKind::User;
    for m in raw.value {
        if m.removed.is_some() {
            f(UserChange::Removed(m.id.unwrap_or_default()));
        } else {
            f(UserChange::Now(m.view(default_kind)));
        }
    }
    Ok(Links { next: raw.next_link, delta: raw.delta_link })
}

fn text(raw: &RawValue) -> Option<TextRef<'_>> {
    let json = raw.get();
    // The common case: a string without escapes is its own text.
    if let Some(s) = json.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        if !s.contains('\\') {
            return Some(TextRef::Str(Cow::Borrowed(s)));
        }
    }
    match serde_json::from_str::<Option<&str>>(json) {
        Ok(s) => s.map(|s| TextRef::Str(Cow::Borrowed(s))),
        // A string with escapes cannot be borrowed.
        Err(_) => match serde_json::from_str::<String>(json) {
            Ok(s) => Some(TextRef::Str(Cow::Owned(s))),
            Err(_) => Some(TextRef::Undecodable(json)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_type_and_context() {
        let p = parse(
            br##"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#directoryObjects","value":[
            {"@odata.type":"#microsoft.graph.user","id":"1","mail":"A@x","accountEnabled":false},
            {"@odata.type":"#microsoft.graph.group","id":"2"},
            {"id":"3","mail":"b@x"}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/next"}"##,
        )
        .unwrap();
        let kinds: Vec<ObjectKind> = p.members.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [ObjectKind::User, ObjectKind::Group, ObjectKind::Untyped]);
        assert_eq!(p.members[0].account_enabled, Some(false));
        assert_eq!(p.next_link.as_deref(), Some("https://graph.microsoft.com/v1.0/next"));
        let p = parse(br#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users(displayName,id)","value":[{"id":"1"}]}"#).unwrap();
        assert_eq!(p.members[0].kind, ObjectKind::User);
    }

    #[test]
    fn one_undecodable_value_spoils_only_its_member() {
        let p = parse(
            br##"{"value":[{"@odata.type":"#microsoft.graph.user","id":"1","mail":"a\ud800@x","mobilePhone":5},
            {"@odata.type":"#microsoft.graph.user","id":"2","mail":"ok@x","mobilePhone":null}]}"##,
        )
        .unwrap();
        assert_eq!(p.members[0].mail, Some(Text::Undecodable(r#""a\ud800@x""#.into())));
        assert_eq!(p.members[0].mobile_phone, Some(Text::Undecodable("5".into())));
        assert_eq!(p.members[1].mail, Some(Text::Str("ok@x".into())));
        assert_eq!(p.members[1].mobile_phone, None);
    }

    #[test]
    fn next_link_before_or_after_value() {
        let before = br#" { "@odata.context" : "c\"x", "@odata.nextLink":"https://g/v1.0/n\/1", "value": [] }"#;
        assert_eq!(next_link(before).unwrap().as_deref(), Some("https://g/v1.0/n/1"));
        let after = br#"{"value":[{"@odata.nextLink":"https://evil/"}],"@odata.nextLink":"https://g/2"}"#;
        assert_eq!(next_link(after).unwrap().as_deref(), Some("https://g/2"));
        assert_eq!(next_link(br#"{"@odata.context":"c","value":[]}"#).unwrap(), None);
        assert!(next_link(br#"{"@odata.nextLink":"https://g/2"}"#).is_ok_and(|l| l.is_some()));
        assert!(parse(br#"{"@odata.nextLink":"https://g/2"}"#).is_err(), "no value: the full parse fails");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/graph/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn group_delta_samples_give_member_changes_and_links() {
        let changes = |name: &str, group: &str| {
            let mut out = Vec::new();
            let (links, gone) =
                visit_group_delta(&fixture(name), group, |c| out.push((c.id.into_owned(), c.kind, c.removed))).unwrap();
            assert_eq!(gone, GroupGone(false), "no sample deletes its group");
            (out, links)
        };
        let (c, links) = changes("groups_delta_changes_member_removed.json", "2e5807ce-58f3-4a94-9b37-ffff2e085957");
        assert_eq!(
            c,
            [
                ("632f6bb2-3ec8-4c1f-9073-0027a8c6859".to_owned(), ObjectKind::User, true),
                ("37de1ae3-408f-4702-8636-20824abda004".to_owned(), ObjectKind::User, false)
            ]
        );
        assert!(links.next.is_none() && links.delta.is_some());
        let (c, links) = changes("groups_delta_initial_page.json", "c2f798fd-f95d-4623-8824-63aec21fffff");
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|(_, k, removed)| *k == ObjectKind::User && !removed));
        assert!(links.next.is_some() && links.delta.is_none());
        let (c, links) = changes("groups_delta_no_changes.json", "2e5807ce-58f3-4a94-9b37-ffff2e085957");
        assert!(c.is_empty() && links.delta.is_some());
        let (c, _) = changes("groups_delta_final_page_deltalink.json", "bed7f0d4-750e-4e7e-ffff-169002d06fc9");
        assert!(c.is_empty(), "a group without members has no members@delta");
        let (c, _) = changes("group_delta_api_response1.json", "nobody");
        assert!(c.is_empty(), "other groups are ignored");
    }

    #[test]
    fn user_delta_samples_give_users_now_and_removals() {
        for name in [
            "users_delta_changes_with_removed_changed.json",
            "users_delta_default_properties.json",
            "users_delta_final_page_deltalink.json",
            "users_delta_initial_with_removed.json",
            "users_delta_minimal.json",
            "users_delta_select_three.json",
        ] {
            let mut now = Vec::new();
            let mut removed = Vec::new();
            let links = visit_user_delta(&fixture(name), |u| match u {
                UserChange::Now(m) => now.push(Member::from(m)),
                UserChange::Removed(id) => removed.push(id.into_owned()),
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(links.next.is_some() != links.delta.is_some(), "{name}: one link");
            assert!(now.iter().all(|m| m.kind == ObjectKind::User), "{name}: users by @odata.context");
            match name {
                "users_delta_changes_with_removed_changed.json" => {
                    assert_eq!(removed, ["8ffff70c-1c63-4860-b963-e34ec660931d"]);
                }
                "users_delta_initial_with_removed.json" => {
                    assert_eq!(
                        (now.len(), removed.as_slice()),
                        (3, &["86462606-fde0-4fc4-9e0c-a20eb73e54c6".to_owned()][..])
                    );
                }
                "users_delta_default_properties.json" => {
                    assert_eq!(now[0].mail, Some(Text::Str("mail-value".into())));
                    assert_eq!(now[0].mobile_phone, Some(Text::Str("mobilePhone-value".into())));
                }
                "users_delta_select_three.json" => assert_eq!(now[0].mobile_phone, None, "null is unset"),
                _ => assert!(removed.is_empty(), "{name}"),
            }
        }
    }

    #[test]
    fn value_is_required() {
        assert!(parse(br#"{"error":{"code":"x"}}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
