//! One page of `/members`: the directory objects it holds and its `@odata.nextLink`.

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
    fn from_type(t: &str) -> Self {
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
    fn from_context(context: Option<&str>) -> Self {
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

impl Member {
    /// Does this object carry any of the attributes usersync selects?
    #[must_use]
    pub fn has_selected_attribute(&self) -> bool {
        self.mail.is_some() || self.mobile_phone.is_some() || self.account_enabled.is_some()
    }
}

/// Only the `@odata.nextLink` of a page (the `value` array must be there, and is skipped).
#[derive(Deserialize)]
struct NextOnly {
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "value")]
    _value: serde::de::IgnoredAny,
}

/// The page's `@odata.nextLink`, found without building the members.
pub fn next_link(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    serde_json::from_slice::<NextOnly>(body).map(|p| p.next_link)
}

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(rename = "@odata.context")]
    context: Option<String>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(borrow)]
    value: Vec<RawMember<'a>>,
}

/// `mail` and `mobilePhone` are kept as raw JSON first, so that one member
/// with an undecodable value is skipped alone instead of failing the page.
#[derive(Deserialize)]
struct RawMember<'a> {
    #[serde(rename = "@odata.type", borrow)]
    odata_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    mail: Option<&'a RawValue>,
    #[serde(rename = "mobilePhone", borrow)]
    mobile_phone: Option<&'a RawValue>,
    #[serde(rename = "accountEnabled")]
    account_enabled: Option<bool>,
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
    let raw: RawPage = serde_json::from_slice(body)?;
    let default_kind = ObjectKind::from_context(raw.context.as_deref());
    let members = raw
        .value
        .into_iter()
        .map(|m| Member {
            id: m.id.map(std::borrow::Cow::into_owned).unwrap_or_default(),
            kind: m.odata_type.as_deref().map_or(default_kind, ObjectKind::from_type),
            mail: m.mail.and_then(text),
            mobile_phone: m.mobile_phone.and_then(text),
            account_enabled: m.account_enabled,
        })
        .collect();
    Ok(Page { members, next_link: raw.next_link })
}

fn text(raw: &RawValue) -> Option<Text> {
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(s) => s.map(Text::Str),
        Err(_) => Some(Text::Undecodable(raw.get().to_owned())),
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
    fn value_is_required() {
        assert!(parse(br#"{"error":{"code":"x"}}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
