//! The members of one fetched group, normalised page by page as they arrive and packed
//! tight (about 50 bytes a user): the only form in which a run keeps them.

use crate::model::normalize::{escape_for_log, Email, Phone, SkipReason};
use crate::model::page::{MemberView, ObjectKind, TextRef};

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
    /// Configs without `include_disabled` (the member is a disabled user, or one whose
    /// `accountEnabled` is unknown).
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

/// Records in chunks of [`CHUNK`] bytes, one after the other: a merge reads its inputs
/// front to back and frees each chunk once read, so sorting never holds two copies of the
/// members, and every allocation has the same size (the allocator reuses freed chunks).
///
/// A record: mail length, phone length, disabled (one byte each), the mail, the phone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SortedRun {
    chunks: Vec<Vec<u8>>,
    count: usize,
}

/// Bytes in one chunk of a [`SortedRun`].
const CHUNK: usize = 1 << 20;

/// Where a record starts: chunk and offset.
#[derive(Clone, Copy, Debug, Default)]
struct Pos {
    chunk: usize,
    offset: usize,
}

/// One record, borrowed.
#[derive(Clone, Copy)]
struct Rec<'a> {
    bytes: &'a [u8],
    mail: &'a [u8],
    phone: &'a [u8],
    disabled: bool,
}

impl<'a> Rec<'a> {
    /// The record at the start of `b`.
    fn parse(b: &'a [u8]) -> Option<Self> {
        let (&[m, p, d], rest) = b.split_first_chunk::<3>()?;
        let (m, p) = (usize::from(m), usize::from(p));
        let (mail, rest) = rest.split_at_checked(m)?;
        let phone = rest.get(..p)?;
        Some(Self { bytes: &b[..3 + m + p], mail, phone, disabled: d != 0 })
    }

    fn key(&self) -> (&'a [u8], &'a [u8]) {
        (self.mail, self.phone)
    }
}

impl SortedRun {
    /// Appends a record of `parts` (at most 278 bytes in all), never across two chunks.
    fn push_parts(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.chunks.last().is_none_or(|c| c.len() + len > CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(c) = self.chunks.last_mut() {
            for p in parts {
                c.extend_from_slice(p);
            }
        }
        self.count += 1;
    }

    fn push(&mut self, mail: &[u8], phone: &[u8], disabled: bool) {
        // Addresses are at most 254 bytes and numbers 21.
        let byte = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        self.push_parts(&[&[byte(mail.len()), byte(phone.len()), u8::from(disabled)], mail, phone]);
    }

    /// The record at `p` (moved past the end of a chunk to the next one), if any.
    fn peek(&self, p: &mut Pos) -> Option<Rec<'_>> {
        loop {
            let c = self.chunks.get(p.chunk)?;
            if p.offset < c.len() {
                return Rec::parse(&c[p.offset..]);
            }
            (p.chunk, p.offset) = (p.chunk + 1, 0);
        }
    }

    /// Frees the chunks before `chunk`.
    fn release_before(&mut self, chunk: usize) {
        for c in self.chunks.iter_mut().take(chunk).rev().take_while(|c| c.capacity() > 0) {
            *c = Vec::new();
        }
    }

    /// Where each record starts (as `chunk * CHUNK + offset`), in order.
    fn index(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count);
        let mut p = Pos::default();
        while let Some(r) = self.peek(&mut p) {
            // Rosters stay far below 4 GiB.
            out.push(u32::try_from(p.chunk * CHUNK + p.offset).unwrap_or(u32::MAX));
            p.offset += r.bytes.len();
        }
        out
    }

    fn at(&self, at: u32) -> Option<Rec<'_>> {
        let (chunk, offset) = (at as usize / CHUNK, at as usize % CHUNK);
        self.chunks.get(chunk).and_then(|c| c.get(offset..)).and_then(Rec::parse)
    }

    /// The users of one page (`text` holds their bytes at `at`), sorted.
    fn of_page(text: &[u8], mut users: Vec<User>) -> Self {
        let part = |u: &User| {
            let at = u.at as usize;
            let mail = &text[at..at + usize::from(u.mail_len)];
            let phone = &text[at + mail.len()..at + mail.len() + usize::from(u.phone_len)];
            (mail, phone)
        };
        users.sort_by(|a, b| part(a).cmp(&part(b)));
        let mut out = Self::default();
        for u in &users {
            let (mail, phone) = part(u);
            out.push(mail, phone, u.disabled);
        }
        out
    }

    /// Two sorted runs as one; on equal keys `self`'s record comes first. Each input
    /// chunk is freed once read.
    fn merge(mut self, mut other: Self) -> Self {
        let mut out = Self::default();
        let (mut pa, mut pb) = (Pos::default(), Pos::default());
        loop {
            // Blocks of records; between blocks the chunks read so far are freed.
            {
                let (mut a, mut b) = (self.peek(&mut pa), other.peek(&mut pb));
                for _ in 0..4096 {
                    match (a, b) {
                        (Some(x), y) if y.is_none_or(|y| x.key() <= y.key()) => {
                            out.push_parts(&[x.bytes]);
                            pa.offset += x.bytes.len();
                            a = self.peek(&mut pa);
                        }
                        (_, Some(y)) => {
                            out.push_parts(&[y.bytes]);
                            pb.offset += y.bytes.len();
                            b = other.peek(&mut pb);
                        }
                        // Both runs are read (the first arm takes any record left in `self`).
                        _ => break,
                    }
                }
                if a.is_none() && b.is_none() {
                    break;
                }
            }
            self.release_before(pa.chunk);
            other.release_before(pb.chunk);
        }
        out
    }
}

/// One group's members, normalised.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The page being read: its users' bytes and records (`at` is into `text`).
    text: Vec<u8>,
    users: Vec<User>,
    /// Sorted runs of earlier pages, each at most half the size of the one below it;
    /// after `finish`, at most one, holding every user.
    runs: Vec<SortedRun>,
    /// After `finish`: where each user's record starts in `runs[0]`.
    index: Vec<u32>,
    notes: Vec<Note>,
    phones: bool,
    objects: usize,
    counts: UserCounts,
}

/// What Graph's "limited information" answer is told by: how many users there are, and how
/// many came with their attributes. Kept by a roster, and by a delta state across runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UserCounts {
    /// User objects.
    pub users: u64,
    /// Users with any selected attribute.
    pub with_attributes: u64,
    /// Users with a mail.
    pub with_mail: u64,
    /// Users with a mail and `accountEnabled`.
    pub with_mail_and_enabled: u64,
}

impl UserCounts {
    /// Counts member `m` in (`add`) or out; false if it cannot have been counted.
    pub fn count(&mut self, m: &MemberView<'_>, add: bool) -> bool {
        if m.kind != ObjectKind::User || !crate::model::ids::is_object_id(&m.id) {
            return true;
        }
        let mail = m.mail.is_some();
        let fields = [
            (&mut self.users, true),
            (&mut self.with_attributes, m.has_selected_attribute()),
            (&mut self.with_mail, mail),
            (&mut self.with_mail_and_enabled, mail && m.account_enabled.is_some()),
        ];
        for (n, applies) in fields {
            if applies {
                match if add { n.checked_add(1) } else { n.checked_sub(1) } {
                    Some(k) => *n = k,
                    None => return false,
                }
            }
        }
        true
    }

    /// Graph's "limited information" answer (the app lacks `User.Read.All`), and which
    /// attributes the users came without: users, but none with any selected attribute;
    /// or users with a mail, but none with `accountEnabled`.
    #[must_use]
    pub fn limited(&self) -> Option<&'static str> {
        if self.users > 0 && self.with_attributes == 0 {
            Some("mail, mobilePhone or accountEnabled")
        } else if self.with_mail > 0 && self.with_mail_and_enabled == 0 {
            Some("accountEnabled")
        } else {
            None
        }
    }
}

impl Roster {
    /// An empty roster; `phones` says whether `mobilePhone` was selected (if not, no
    /// user is noted for lacking one).
    #[must_use]
    pub fn new(phones: bool) -> Self {
        Self { phones, ..Self::default() }
    }

    /// A finished roster of `members` (for tests).
    #[must_use]
    pub fn of<'a>(phones: bool, members: impl IntoIterator<Item = MemberView<'a>>) -> Self {
        let mut r = Self::new(phones);
        for m in members {
            r.push(&m);
        }
        r.finish();
        r
    }

    /// Adds one directory object; returns the user's normalised mail if it kept one.
    pub fn push(&mut self, m: &MemberView<'_>) -> Option<&[u8]> {
        self.objects += 1;
        let note = |when, reason, value: Option<&TextRef<'_>>| Note {
            when,
            reason,
            id: escape_for_log(&m.id).into(),
            value: escape_for_log(value.map_or("", TextRef::as_str)).into(),
        };
        let reason = match m.kind {
            _ if !crate::model::ids::is_object_id(&m.id) => Some(SkipReason::InvalidId),
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
            return None;
        }
        // A user with an object id: counted.
        let _ = self.counts.count(m, true);
        // Fail closed: only a user Graph says is enabled is kept without `include_disabled`.
        let disabled = m.account_enabled != Some(true);
        if disabled {
            let reason = if m.account_enabled.is_some() { SkipReason::Disabled } else { SkipReason::EnabledUnknown };
            self.notes.push(note(When::ExcludingDisabled, reason, m.mail.as_ref()));
        }
        let Ok(at) = u32::try_from(self.text.len()) else {
            // Over 4 GiB of addresses: not a directory Graph serves.
            self.notes.push(note(When::Always, SkipReason::InvalidMail, m.mail.as_ref()));
            return None;
        };
        let mail = match &m.mail {
            None => Err(SkipReason::NoMail),
            Some(TextRef::Undecodable(_)) => Err(SkipReason::InvalidMail),
            Some(TextRef::Str(s)) => Email::parse_into(s, &mut self.text),
        };
        if let Err(r) = mail {
            let when = if disabled { When::IncludingDisabled } else { When::Always };
            self.notes.push(note(when, r, m.mail.as_ref()));
            return None;
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
        self.text.get(at as usize..mail_end)
    }

    /// Ends a page: its users become a sorted run, and runs of similar size are merged,
    /// so that most of the sorting happens while the next page is on its way.
    pub fn end_page(&mut self) {
        if self.users.is_empty() {
            return;
        }
        self.runs.push(SortedRun::of_page(&self.text, std::mem::take(&mut self.users)));
        self.text.clear();
        while self.runs.len() >= 2 && self.runs[self.runs.len() - 1].count * 2 > self.runs[self.runs.len() - 2].count {
            self.merge_top();
        }
    }

    /// After the last page: every user in one run, sorted by mail then phone, its text laid
    /// out in that order, so that rendering the sorted lines reads memory front to back.
    /// Notes keep directory order.
    pub fn finish(&mut self) {
        self.end_page();
        while self.runs.len() >= 2 {
            self.merge_top();
        }
        self.text = Vec::new();
        self.index = self.runs.first().map(SortedRun::index).unwrap_or_default();
    }

    fn merge_top(&mut self) {
        if let (Some(newer), Some(older)) = (self.runs.pop(), self.runs.pop()) {
            self.runs.push(older.merge(newer));
        }
    }

    /// Whether `mobilePhone` was selected.
    #[must_use]
    pub fn phones(&self) -> bool {
        self.phones
    }

    /// Objects of every kind.
    #[must_use]
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// User objects.
    #[must_use]
    pub fn user_objects(&self) -> usize {
        usize::try_from(self.counts.users).unwrap_or(usize::MAX)
    }

    /// Graph's "limited information" answer (the app lacks `User.Read.All`), and which
    /// attributes the users came without: users, but none with any selected attribute;
    /// or users with a mail, but none with `accountEnabled`.
    #[must_use]
    pub fn limited(&self) -> Option<&'static str> {
        self.counts.limited()
    }

    /// Users with a valid address, once [`Roster::finish`] ran.
    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn user(&self, i: u32) -> Option<Rec<'_>> {
        let at = *self.index.get(i as usize)?;
        self.runs.first()?.at(at)
    }

    /// User `i` is disabled.
    #[must_use]
    pub fn disabled(&self, i: u32) -> bool {
        self.user(i).is_some_and(|u| u.disabled)
    }

    /// The normalised address of user `i`.
    #[must_use]
    pub fn mail(&self, i: u32) -> &[u8] {
        self.user(i).map_or(&[], |u| u.mail)
    }

    /// The normalised phone of user `i`; empty when it has none that is usable.
    #[must_use]
    pub fn phone(&self, i: u32) -> &[u8] {
        self.user(i).map_or(&[], |u| u.phone)
    }

    /// Members that give no entry somewhere, in directory order.
    #[must_use]
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Mails of the users a config with `include_disabled` as given keeps.
    pub fn kept(&self, include_disabled: bool) -> impl Iterator<Item = &str> {
        (0..self.len())
            .filter_map(|i| u32::try_from(i).ok())
            .filter(move |i| include_disabled || !self.disabled(*i))
            .map(|i| std::str::from_utf8(self.mail(i)).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::page::{parse as parse_page, Member, ObjectKind};

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
                (When::ExcludingDisabled, SkipReason::EnabledUnknown, "5", "p@x.com"),
                (When::Phone { disabled: true }, SkipReason::InvalidPhone, "5", "call me"),
            ]
        );
        assert_eq!(r.kept(false).collect::<Vec<_>>(), ["a@x.com"], "p@x.com: not known to be enabled");
        assert_eq!(r.kept(true).collect::<Vec<_>>(), ["a@x.com", "off@x.com", "p@x.com"]);
        assert_eq!(r.limited(), None);
        assert_eq!(Roster::of(false, page.members.iter().map(MemberView::from)).notes().len(), 5, "no phone notes");
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

    #[test]
    fn pages_merge_into_one_sorted_roster_across_chunks() {
        // 60,000 users of about 40 bytes: several 1 MiB chunks, 60 pages in scrambled order.
        let n: u64 = 60_000;
        let mut r = Roster::new(true);
        for page in 0..60 {
            for i in 0..1000 {
                let k = (page * 1000 + i) * 7919 % n;
                let mail = format!("user.{k:08}@example.com");
                let phone = format!("+358 40 {k:07}");
                r.push(&MemberView {
                    id: "x".into(),
                    kind: ObjectKind::User,
                    mail: Some(TextRef::Str(mail.as_str().into())),
                    mobile_phone: Some(TextRef::Str(phone.as_str().into())),
                    account_enabled: Some(k % 3 != 0),
                });
            }
            r.end_page();
        }
        r.finish();
        assert_eq!(r.len(), 60_000);
        for i in 0..60_000u32 {
            assert_eq!(r.mail(i), format!("user.{i:08}@example.com").as_bytes());
            assert_eq!(r.phone(i), format!("+35840{i:07}").as_bytes());
            assert_eq!(r.disabled(i), i % 3 == 0);
        }
    }
}
