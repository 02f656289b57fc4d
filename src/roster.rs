//! The members of one fetched group, normalised page by page as they arrive and packed
//! tight (about 50 bytes a user): the only form in which a run keeps them.

use crate::graph::{MemberView, ObjectKind, TextRef};
use crate::normalize::{escape_for_log, Email, Phone, SkipReason};

/// A user with a valid address: where its normalised mail and phone lie in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct User {
    /// Start of the mail in `Roster::text`; the phone (if any) follows it.
    at: u32,
    mail_len: u8,
    phone_len: u8,
    disabled: bool,
}

/// To which configs a note applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Every config: the member gives no entry at all.
    Always,
    /// Configs without `include_disabled` (the member is a disabled user).
    ExcludingDisabled,
    /// Configs with `include_disabled` (a disabled user whose mail is not usable).
    IncludingDisabled,
    /// `gsm_list` of configs that keep this user: it has no usable phone.
    Phone {
        /// The user is disabled.
        disabled: bool,
    },
}

/// A member (or its phone) that gives no entry, with what the log needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// To which configs it applies.
    pub when: When,
    /// Why.
    pub reason: SkipReason,
    /// The object id, escaped for a log line.
    pub id: Box<str>,
    /// The offending value, escaped for a log line; empty if none.
    pub value: Box<str>,
}

/// One group's members, normalised.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Roster {
    text: Vec<u8>,
    users: Vec<User>,
    notes: Vec<Note>,
    phones: bool,
    objects: usize,
    user_objects: usize,
    users_with_attributes: usize,
}

impl Roster {
    /// An empty roster; `phones` says whether `mobilePhone` was selected (if not, no
    /// user is noted for lacking one).
    #[must_use]
    pub fn new(phones: bool) -> Self {
        Self { phones, ..Self::default() }
    }

    /// A roster of `members` (for tests and the first page of `usersync test`).
    #[must_use]
    pub fn of<'a>(phones: bool, members: impl IntoIterator<Item = MemberView<'a>>) -> Self {
        let mut r = Self::new(phones);
        for m in members {
            r.push(&m);
        }
        r
    }

    /// Adds one directory object.
    pub fn push(&mut self, m: &MemberView<'_>) {
        self.objects += 1;
        let note = |when, reason, value: Option<&TextRef<'_>>| Note {
            when,
            reason,
            id: escape_for_log(&m.id).into(),
            value: escape_for_log(value.map_or("", text_of)).into(),
        };
        let reason = match m.kind {
            ObjectKind::User => None,
            ObjectKind::Group => Some(SkipReason::Group),
            ObjectKind::Device => Some(SkipReason::Device),
            ObjectKind::Contact => Some(SkipReason::Contact),
            ObjectKind::ServicePrincipal => Some(SkipReason::ServicePrincipal),
            ObjectKind::Other => Some(SkipReason::OtherObject),
            ObjectKind::Untyped => Some(SkipReason::UntypedObject),
        };
        if let Some(r) = reason {
            self.notes.push(note(When::Always, r, m.mail.as_ref()));
            return;
        }
        self.user_objects += 1;
        if m.mail.is_some() || m.mobile_phone.is_some() || m.account_enabled.is_some() {
            self.users_with_attributes += 1;
        }
        let disabled = m.account_enabled == Some(false);
        if disabled {
            self.notes.push(note(When::ExcludingDisabled, SkipReason::Disabled, m.mail.as_ref()));
        }
        let Ok(at) = u32::try_from(self.text.len()) else {
            // Over 4 GiB of addresses: not a directory Graph serves.
            self.notes.push(note(When::Always, SkipReason::InvalidMail, m.mail.as_ref()));
            return;
        };
        let mail = match &m.mail {
            None => Err(SkipReason::NoMail),
            Some(TextRef::Undecodable(_)) => Err(SkipReason::InvalidMail),
            Some(TextRef::Str(s)) => Email::parse_into(s, &mut self.text),
        };
        if let Err(r) = mail {
            let when = if disabled { When::IncludingDisabled } else { When::Always };
            self.notes.push(note(when, r, m.mail.as_ref()));
            return;
        }
        let mail_end = self.text.len();
        let phone = match &m.mobile_phone {
            None => Err(SkipReason::NoPhone),
            Some(TextRef::Undecodable(_)) => Err(SkipReason::InvalidPhone),
            Some(TextRef::Str(s)) => Phone::parse_into(s, &mut self.text),
        };
        if let Err(r) = phone {
            if self.phones {
                self.notes.push(note(When::Phone { disabled }, r, m.mobile_phone.as_ref()));
            }
        }
        // Addresses are at most 254 bytes and numbers 21.
        let len = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        self.users.push(User {
            at,
            mail_len: len(mail_end - at as usize),
            phone_len: len(self.text.len() - mail_end),
            disabled,
        });
    }

    /// Sorts the users by mail, then phone, and lays their text out in that order, so
    /// that rendering the sorted lines reads memory front to back. Call it once, after
    /// the last page; notes keep directory order.
    pub fn finish(&mut self) {
        // The first 16 bytes of the address, zero-padded, decide most comparisons
        // without touching the text.
        let mut keys: Vec<(u64, u64, u32)> = (0..self.users.len())
            .filter_map(|i| u32::try_from(i).ok())
            .map(|i| {
                let mut k = [0u8; 16];
                let m = self.mail(i);
                let n = m.len().min(16);
                k[..n].copy_from_slice(&m[..n]);
                let (hi, lo) = k.split_at(8);
                let word = |b: &[u8]| b.try_into().map(u64::from_be_bytes).unwrap_or_default();
                (word(hi), word(lo), i)
            })
            .collect();
        keys.sort_unstable_by(|(ha, la, a), (hb, lb, b)| {
            (ha, la).cmp(&(hb, lb)).then_with(|| {
                let (ma, mb) = (self.mail(*a), self.mail(*b));
                let (ra, rb): (&[u8], &[u8]) = (ma.get(16..).unwrap_or_default(), mb.get(16..).unwrap_or_default());
                ra.cmp(rb).then_with(|| self.phone(*a).cmp(self.phone(*b)))
            })
        });
        let mut sorted: Vec<User> = keys.iter().map(|(_, _, i)| self.users[*i as usize]).collect();
        drop(keys);
        self.users = Vec::new();
        let mut text = Vec::with_capacity(self.text.len());
        for u in &mut sorted {
            let start = u.at as usize;
            // The text was under 4 GiB before, so it is now.
            u.at = u32::try_from(text.len()).unwrap_or(u32::MAX);
            text.extend_from_slice(&self.text[start..start + usize::from(u.mail_len) + usize::from(u.phone_len)]);
        }
        self.text = text;
        self.users = sorted;
    }

    /// Objects of every kind.
    #[must_use]
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// User objects.
    #[must_use]
    pub fn user_objects(&self) -> usize {
        self.user_objects
    }

    /// Graph's "limited information" answer: users, but none with any selected attribute.
    #[must_use]
    pub fn is_limited(&self) -> bool {
        self.user_objects > 0 && self.users_with_attributes == 0
    }

    /// Users with a valid address (in directory order until [`Roster::finish`]).
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No user with a valid address.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// User `i` is disabled.
    #[must_use]
    pub fn disabled(&self, i: u32) -> bool {
        self.users[i as usize].disabled
    }

    /// The normalised address of user `i`.
    #[must_use]
    pub fn mail(&self, i: u32) -> &[u8] {
        let u = self.users[i as usize];
        let at = u.at as usize;
        &self.text[at..at + usize::from(u.mail_len)]
    }

    /// The normalised phone of user `i`; empty when it has none that is usable.
    #[must_use]
    pub fn phone(&self, i: u32) -> &[u8] {
        let u = self.users[i as usize];
        let at = u.at as usize + usize::from(u.mail_len);
        &self.text[at..at + usize::from(u.phone_len)]
    }

    /// Members that give no entry somewhere, in directory order.
    #[must_use]
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Mails of the users a config with `include_disabled` as given keeps.
    pub fn kept(&self, include_disabled: bool) -> impl Iterator<Item = &str> {
        (0..self.users.len())
            .filter_map(|i| u32::try_from(i).ok())
            .filter(move |i| include_disabled || !self.disabled(*i))
            .map(|i| std::str::from_utf8(self.mail(i)).unwrap_or_default())
    }
}

fn text_of<'a>(t: &'a TextRef<'_>) -> &'a str {
    match t {
        TextRef::Str(s) => s,
        TextRef::Undecodable(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{parse_page, Member};

    #[test]
    fn packs_users_and_notes_the_rest() {
        let page = parse_page(
            br##"{"value":[
            {"@odata.type":"#microsoft.graph.user","id":"1","mail":"A@X.com","mobilePhone":"+44 (0)20 7946 0958","accountEnabled":true},
            {"@odata.type":"#microsoft.graph.group","id":"2"},
            {"@odata.type":"#microsoft.graph.user","id":"3","mail":"off@x.com","accountEnabled":false},
            {"@odata.type":"#microsoft.graph.user","id":"4","mail":"bad\nx@y","accountEnabled":false},
            {"@odata.type":"#microsoft.graph.user","id":"5","mail":"p@x.com","mobilePhone":"call me"}]}"##,
        )
        .unwrap();
        let r = Roster::of(true, page.members.iter().map(MemberView::from));
        assert_eq!((r.objects(), r.user_objects(), r.len()), (5, 4, 3));
        assert_eq!((r.mail(0), r.phone(0)), (&b"a@x.com"[..], &b"+442079460958"[..]));
        assert_eq!((r.mail(1), r.phone(1), r.disabled(1)), (&b"off@x.com"[..], &b""[..], true));
        let notes: Vec<(When, SkipReason, &str, &str)> =
            r.notes().iter().map(|n| (n.when, n.reason, &*n.id, &*n.value)).collect();
        assert_eq!(
            notes,
            [
                (When::Always, SkipReason::Group, "2", ""),
                (When::ExcludingDisabled, SkipReason::Disabled, "3", "off@x.com"),
                (When::Phone { disabled: true }, SkipReason::NoPhone, "3", ""),
                (When::ExcludingDisabled, SkipReason::Disabled, "4", "bad\\nx@y"),
                (When::IncludingDisabled, SkipReason::InvalidMail, "4", "bad\\nx@y"),
                (When::Phone { disabled: false }, SkipReason::InvalidPhone, "5", "call me"),
            ]
        );
        assert_eq!(r.kept(false).collect::<Vec<_>>(), ["a@x.com", "p@x.com"]);
        assert!(!r.is_limited());
        assert_eq!(Roster::of(false, page.members.iter().map(MemberView::from)).notes().len(), 4, "no phone notes");
    }

    #[test]
    fn finish_sorts_by_mail_then_phone_and_keeps_each_phone_with_its_mail() {
        let m = |id: &str, mail: &str, phone: Option<&str>| Member {
            id: id.into(),
            kind: ObjectKind::User,
            mail: Some(mail.into()),
            mobile_phone: phone.map(Into::into),
            account_enabled: Some(id != "4"),
        };
        let long = "a-very-long-local-part.sharing-16-bytes";
        let members = [
            m("1", "zed@x.com", Some("+1 5555 5")),
            m("2", &format!("{long}.b@x.com"), None),
            m("3", &format!("{long}.a@x.com"), Some("040 1234")),
            m("4", "amy@x.com", Some("99999")),
            m("5", "amy@x.com", Some("11111")),
        ];
        let mut r = Roster::of(true, members.iter().map(MemberView::from));
        r.finish();
        let got: Vec<(String, String, bool)> = (0..5)
            .map(|i| {
                let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (s(r.mail(i)), s(r.phone(i)), r.disabled(i))
            })
            .collect();
        let want = [
            (format!("{long}.a@x.com"), "0401234".into(), false),
            (format!("{long}.b@x.com"), String::new(), false),
            ("amy@x.com".into(), "11111".into(), false),
            ("amy@x.com".into(), "99999".into(), true),
            ("zed@x.com".into(), "+155555".into(), false),
        ];
        assert_eq!(got, want);
    }
}
