//! The delta state of one group fetch, on disk: where its delta rounds left off, when it
//! was last read in full, and its members with their raw attributes, so that a delta run
//! rebuilds exactly what a full read would. Per (authority, tenant, client, group, selected
//! attributes), in `<state_dir>/delta/`, mode 0600, each file written atomically:
//!
//! - `<digest>.links`, small JSON: the two delta links, the last full read, and which
//!   generation of member data and which log are current. Moving a link rewrites only this
//!   file, and it is renamed into place last: it is the commit.
//! - `<digest>.<generation>.members`: one line of raw attributes per member, as a full read
//!   (or a compaction) wrote them, in blocks of [`BLOCK`] members: streamed whole, or read
//!   a block at a time. Plain text, unless that would take more than 1.5 times the bytes of
//!   the outputs the group feeds (known when the state is committed, after the outputs):
//!   then deflated as one stream flushed in full at each block, so that each block also
//!   inflates on its own.
//! - `<digest>.<generation>.index`: where each block starts, and two tables of (24-bit
//!   hash, block), by id and by normalised mail, each ordered by the hash's top 12 bits
//!   (one pass to make) and then by block. A member who changed, and the members who give
//!   the same line as one who changed, cost a binary search, a look through a few hundred
//!   entries and a block each, not a read of everyone.
//! - `<digest>.<generation>.<log>.log`, gzip'd: the members changed since the generation
//!   was written (a line each; `id\t!` for one gone), rewritten whole by a run that changes
//!   members: its size is that of the changes since the generation, never of the group.
//!   Once it holds more than a sixteenth of the members (at least [`COMPACT_AT`]), the next
//!   change writes a new generation with the log folded in.
//!
//! Together at most twice the bytes of the outputs the group feeds.
//!
//! A state is opened once per run: the files stay open, so that a commit by another run
//! meanwhile (a new generation, the old one removed) cannot mix two versions.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::DeflateDecoder;
use serde::{Deserialize, Serialize};

use crate::files::write::{Staged, WriteError};
use crate::model::page::{MemberView, ObjectKind, TextRef};
use crate::model::roster::UserCounts;

/// The format this build reads and writes; any other is read as no state (a full read).
/// 2: no `users_link_at` (links are never ordered by the local clock). 3: links apart from
/// the member data, and an index of ids. 4: member data read by offset (not compressed),
/// indexed by id and by mail, and a log of the changes since. 5: the index's tables ordered
/// by bucket, not sorted.
pub const FORMAT: u32 = 5;
const MAGIC: &str = "usersync-delta-members";
const LOG_MAGIC: &str = "usersync-delta-log";
/// An index of plain member data, and of deflated member data.
const INDEX_PLAIN: &[u8; 8] = b"usidx\0p\x05";
const INDEX_DEFLATED: &[u8; 8] = b"usidx\0d\x05";
/// Members per block of member data.
pub const BLOCK: u32 = 64;
/// The most a links file may hold (two links and a key: a few kilobytes).
const LINKS_CAP: u64 = 1 << 20;
/// The most a log may hold (it is read whole).
const LOG_CAP: u64 = 1 << 30;
/// A log longer than this (and than a sixteenth of the members) is folded into a new
/// generation by the next run that changes members.
pub const COMPACT_AT: usize = 256;

/// Whether a log of `entries` should be folded into a new generation of `members`.
#[must_use]
pub fn compact_due(entries: usize, members: u64) -> bool {
    entries > COMPACT_AT.max(usize::try_from(members / 16).unwrap_or(usize::MAX))
}

/// What a state belongs to: a config that changes any of it starts afresh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub token_url: String,
    /// The Graph origin.
    pub graph: String,
    /// Application (client) id.
    pub client: String,
    /// The group.
    pub group: String,
    /// The attributes stored for each user: `mail` or `mail,mobilePhone`.
    pub attributes: String,
    /// The instance whose untrusted config the state is kept for alone (see
    /// [`crate::config::entraid::EntraConf::isolated`]); absent for a shared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<String>,
}

impl Key {
    /// `<state_dir>/delta/<digest of the key>`: the state's files are named from it.
    #[must_use]
    pub fn stem(&self, state_dir: &Path) -> PathBuf {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        state_dir.join("delta").join(crate::model::ids::hex(&digest.as_ref()[..12]))
    }

    /// The links file, `<stem>.links`: the state's commit point.
    #[must_use]
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        with_suffix(&self.stem(state_dir), "links")
    }
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = stem.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    stem.with_file_name(name)
}

/// The member data of `generation` next to `links`: (members, index).
fn data_paths(links: &Path, generation: u64) -> (PathBuf, PathBuf) {
    let stem = links.with_extension("");
    (with_suffix(&stem, &format!("{generation:016x}.members")), with_suffix(&stem, &format!("{generation:016x}.index")))
}

/// The log `log` of `generation` next to `links`.
fn log_path(links: &Path, generation: u64, log: u64) -> PathBuf {
    with_suffix(&links.with_extension(""), &format!("{generation:016x}.{log:016x}.log"))
}

/// Every file of the member data `header` names (the generation's, and its log's).
fn files_of(links: &Path, header: &Header) -> Vec<PathBuf> {
    let (members, index) = data_paths(links, header.generation);
    let mut v = vec![members, index];
    v.extend(header.log.map(|l| log_path(links, header.generation, l)));
    v
}

/// Where the rounds left off, when the group was last read in full, and which member data
/// is current: the links file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The state's key (a file whose key differs is no state of this fetch).
    pub key: Key,
    /// The `groups/delta` deltaLink to start the next membership round from.
    pub group_link: String,
    /// The `users/delta` deltaLink this state's attributes are current to (or a link
    /// Graph gave earlier in the same run: a round from it replays, and misses nothing).
    pub users_link: String,
    /// When the group was last read in full (Unix seconds).
    pub full_at: u64,
    /// Which member data is current (`<stem>.<generation>.members` and `.index`).
    pub generation: u64,
    /// Which log of changes since is current (`<stem>.<generation>.<log>.log`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<u64>,
}

impl Header {
    /// What changes whenever the members do: what an instance's lists were written from.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.log.unwrap_or(self.generation)
    }
}

/// The links file as written: the format first.
#[derive(Serialize, Deserialize)]
struct LinksFile {
    format: u32,
    #[serde(flatten)]
    header: Header,
}

/// One member as stored: what a members page said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Object id.
    pub id: String,
    /// User, group, device, …
    pub kind: ObjectKind,
    /// `accountEnabled`.
    pub enabled: Option<bool>,
    /// `mail` as JSON text (a string, or whatever undecodable value Graph sent).
    pub mail: Option<String>,
    /// `mobilePhone` as JSON text, when the state keeps phones.
    pub phone: Option<String>,
}

impl Record {
    /// What `m` says, keeping the phone only when `phones`; `None` for an object whose id
    /// is no object id (a full read skips it too, so both reads agree).
    #[must_use]
    pub fn of(m: &MemberView<'_>, phones: bool) -> Option<Self> {
        crate::model::ids::is_object_id(&m.id).then(|| Self {
            id: m.id.to_ascii_lowercase(),
            kind: m.kind,
            enabled: m.account_enabled,
            mail: m.mail.as_ref().map(json),
            phone: if phones { m.mobile_phone.as_ref().map(json) } else { None },
        })
    }

    /// The member as a page would show it.
    #[must_use]
    pub fn view(&self) -> MemberView<'_> {
        MemberView {
            id: self.id.as_str().into(),
            kind: self.kind,
            mail: self.mail.as_deref().map(text),
            mobile_phone: self.phone.as_deref().map(text),
            account_enabled: self.enabled,
        }
    }

    /// Its mail, normalised as a list has it, into `out` (cleared first); false if it has
    /// no usable one.
    #[must_use]
    pub fn normalised_mail(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        match self.mail.as_deref().map(text) {
            Some(TextRef::Str(s)) => crate::model::normalize::Email::parse_into(&s, out).is_ok(),
            _ => false,
        }
    }

    /// A digest of the id alone.
    #[must_use]
    pub fn id_digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.id.hash(&mut h);
        h.finish()
    }

    /// A digest of everything stored, for telling how far two states drifted apart.
    #[must_use]
    pub fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.id.as_str(), kind_char(self.kind), self.enabled, &self.mail, &self.phone).hash(&mut h);
        h.finish()
    }

    /// Its line (with the `\n`), appended to `line`.
    fn line_into(&self, line: &mut Vec<u8>) {
        let (mail, phone) = (self.mail.as_deref().unwrap_or("-"), self.phone.as_deref().unwrap_or("-"));
        line_head(line, self.id.as_bytes(), self.kind, self.enabled);
        line.extend_from_slice(mail.as_bytes());
        line.push(b'\t');
        line.extend_from_slice(phone.as_bytes());
        line.push(b'\n');
    }

    /// The record of a line (without its `\n`).
    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split('\t');
        let id = f.next().filter(|i| crate::model::ids::is_object_id(i))?.to_owned();
        let kind = kind_of(f.next()?)?;
        let enabled = match f.next()? {
            "1" => Some(true),
            "0" => Some(false),
            "-" => None,
            _ => return None,
        };
        let opt = |v: &str| (v != "-").then(|| v.to_owned());
        let (mail, phone) = (opt(f.next()?), opt(f.next()?));
        f.next().is_none().then_some(Self { id, kind, enabled, mail, phone })
    }
}

/// The start of a member's line: `id\tkind\tenabled\t` (the id lower-cased).
fn line_head(line: &mut Vec<u8>, id: &[u8], kind: ObjectKind, enabled: Option<bool>) {
    if id.iter().any(u8::is_ascii_uppercase) {
        line.extend(id.iter().map(u8::to_ascii_lowercase));
    } else {
        // Graph sends them lower-case: copied whole.
        line.extend_from_slice(id);
    }
    line.push(b'\t');
    #[allow(clippy::cast_possible_truncation, reason = "the kind letters are ASCII")]
    line.push(kind_char(kind) as u8);
    line.push(b'\t');
    line.push(match enabled {
        Some(true) => b'1',
        Some(false) => b'0',
        None => b'-',
    });
    line.push(b'\t');
}

/// `t` as [`json`] gives it, appended to `line`; a plain string (no `"`, `\` or control
/// character, as most are) without the detour through serde.
fn json_into(line: &mut Vec<u8>, t: &TextRef<'_>) {
    match t {
        // Every byte looked at (no early exit), which the compiler does many at a time.
        TextRef::Str(s)
            if s.bytes().fold(0u8, |bad, b| bad | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\'))
                == 0 =>
        {
            line.push(b'"');
            line.extend_from_slice(s.as_bytes());
            line.push(b'"');
        }
        _ => line.extend_from_slice(json(t).as_bytes()),
    }
}

/// A value as compact JSON text: one line, no tab.
fn json(t: &TextRef<'_>) -> String {
    match t {
        TextRef::Str(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
        // A number or object: made compact; a string that does not decode stays as it was
        // (JSON strings hold no raw control characters).
        // One that does not parse (a lone surrogate) keeps its text, its line breaks and
        // tabs (whitespace between its tokens: a JSON string holds none raw) made spaces,
        // so that it stays on its line and in its field.
        TextRef::Undecodable(raw) => serde_json::from_str::<serde_json::Value>(raw)
            .map_or_else(|_| raw.replace(['\n', '\r', '\t'], " "), |v| v.to_string()),
    }
}

/// The hash a mail is indexed by, of its normalised form; `None` when it has none.
fn mail_hash(t: &TextRef<'_>, scratch: &mut Vec<u8>) -> Option<u32> {
    scratch.clear();
    match t {
        TextRef::Str(s) => crate::model::normalize::Email::parse_into(s, scratch).ok().map(|()| hash32(scratch)),
        TextRef::Undecodable(_) => None,
    }
}

/// JSON text back into a value, as a page parses it.
fn text(j: &str) -> TextRef<'_> {
    match serde_json::from_str::<String>(j) {
        Ok(s) => TextRef::Str(s.into()),
        Err(_) => TextRef::Undecodable(j),
    }
}

fn kind_char(k: ObjectKind) -> char {
    match k {
        ObjectKind::User => 'u',
        ObjectKind::Group => 'g',
        ObjectKind::Device => 'd',
        ObjectKind::Contact => 'c',
        ObjectKind::ServicePrincipal => 's',
        ObjectKind::Other => 'o',
        ObjectKind::Untyped => 'x',
    }
}

fn kind_of(s: &str) -> Option<ObjectKind> {
    Some(match s {
        "u" => ObjectKind::User,
        "g" => ObjectKind::Group,
        "d" => ObjectKind::Device,
        "c" => ObjectKind::Contact,
        "s" => ObjectKind::ServicePrincipal,
        "o" => ObjectKind::Other,
        "x" => ObjectKind::Untyped,
        _ => return None,
    })
}

/// Why a state file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// There is none: the first run.
    Missing,
    /// Another format version.
    Version(String),
    /// Not readable as a state.
    Corrupt(String),
}

fn corrupt(what: &str) -> impl Fn(io::Error) -> Unusable + '_ {
    move |e| Unusable::Corrupt(format!("{what}: {e}"))
}

/// Members changed since the member data was written, by id (`None`: gone), with the ids
/// of those present by their normalised mail. A log as read, or a run's changes.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    by_id: HashMap<String, Option<Record>>,
    by_mail: HashMap<Vec<u8>, Vec<String>>,
}

impl Overlay {
    /// What it says of `id`: `Some(None)` for a member gone, `None` when it says nothing.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Option<Record>> {
        self.by_id.get(id)
    }

    /// Sets what it says of `id`.
    pub fn set(&mut self, id: String, rec: Option<Record>) {
        let mut mail = Vec::new();
        if let Some(Some(old)) = self.by_id.get(&id) {
            if old.normalised_mail(&mut mail) {
                if let Some(ids) = self.by_mail.get_mut(&mail) {
                    ids.retain(|i| *i != id);
                }
            }
        }
        if let Some(r) = &rec {
            if r.normalised_mail(&mut mail) {
                self.by_mail.entry(mail).or_default().push(id.clone());
            }
        }
        self.by_id.insert(id, rec);
    }

    /// The ids it says something of.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// It says nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Everything it says, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Option<Record>)> {
        self.by_id.iter()
    }

    /// The present members whose normalised mail is `mail`.
    fn with_mail<'a>(&'a self, mail: &[u8]) -> impl Iterator<Item = &'a Record> + 'a {
        let ids = self.by_mail.get(mail).map(Vec::as_slice).unwrap_or_default();
        ids.iter().filter_map(|id| self.by_id.get(id).and_then(Option::as_ref))
    }

    /// It, with what `changes` says on top.
    fn merged(&self, changes: &Overlay) -> Overlay {
        let mut out = self.clone();
        for (id, r) in changes.iter() {
            out.set(id.clone(), r.clone());
        }
        out
    }

    /// Its present members, by id.
    fn present_sorted(&self) -> Vec<Record> {
        let mut v: Vec<Record> = self.by_id.values().flatten().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Reads a log (gzip'd), with the member and user counts it ends with.
    fn read(gz: &[u8]) -> Result<(Self, u64, UserCounts), Unusable> {
        let bad = |m: &str| Unusable::Corrupt(format!("log: {m}"));
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz).take(LOG_CAP).read_to_end(&mut bytes).map_err(corrupt("log"))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text"))?;
        let mut lines = text.split_terminator('\n');
        if lines.next().and_then(|m| m.strip_prefix(LOG_MAGIC)).map(str::trim) != Some(&FORMAT.to_string()) {
            return Err(bad("not a log of a state"));
        }
        let mut log = Self::default();
        for l in lines.by_ref() {
            if let Some(end) = l.strip_prefix("end ") {
                let n: Vec<u64> = end.split(' ').map_while(|n| n.parse().ok()).collect();
                return match n[..] {
                    [k, members, users, with_attributes, with_mail, with_mail_and_enabled]
                        if k == log.len() as u64 && lines.next().is_none() =>
                    {
                        let counts = UserCounts { users, with_attributes, with_mail, with_mail_and_enabled };
                        Ok((log, members, counts))
                    }
                    _ => Err(bad("its end does not match its records")),
                };
            }
            match l.strip_suffix("\t!") {
                Some(id) if crate::model::ids::is_object_id(id) => log.set(id.to_owned(), None),
                Some(_) => return Err(bad("a malformed record")),
                None => {
                    let r = Record::parse(l).ok_or_else(|| bad("a malformed record"))?;
                    log.set(r.id.clone(), Some(r));
                }
            }
        }
        Err(bad("cut short"))
    }

    /// The log's bytes (gzip'd), ending with the member count `members` and the user counts.
    fn to_log(&self, members: u64, counts: UserCounts) -> io::Result<Vec<u8>> {
        let mut out = format!("{LOG_MAGIC} {FORMAT}\n").into_bytes();
        let mut ids: Vec<&String> = self.by_id.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(r) = &self.by_id[id] {
                r.line_into(&mut out);
            } else {
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b"\t!\n");
            }
        }
        let UserCounts { users, with_attributes, with_mail, with_mail_and_enabled } = counts;
        let entries = self.by_id.len();
        let end = format!("end {entries} {members} {users} {with_attributes} {with_mail} {with_mail_and_enabled}\n");
        out.extend_from_slice(end.as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&out)?;
        gz.finish()
    }
}

/// An index file: where each block of member data starts, and two tables of (hash, block),
/// each ordered by bucket (see [`Table`]): by id, then by mail.
#[derive(Debug)]
struct Index {
    file: File,
    /// Whether the member data is deflated (or plain).
    deflated: bool,
    blocks: u64,
    ids: u64,
    mails: u64,
    counts: UserCounts,
    /// Each table, read whole on its first search (6 bytes a member: one read instead of a
    /// few dozen per search).
    tables: [std::sync::OnceLock<Result<Vec<u8>, Unusable>>; 2],
}

/// Bytes of an index file before its tables (magic, three table sizes, four user counts);
/// bytes of a block's start; bytes of a table entry.
const INDEX_HEAD: u64 = 64;
const START: u64 = 8;
const ENTRY: u64 = 6;
/// A table entry: 24 bits of hash, 24 bits of block (a collision costs a block read).
const BITS: u32 = 24;
const MASK: u32 = (1 << BITS) - 1;

/// The 24-bit hash a table is sorted by: of an id, or of a normalised mail.
fn hash32(b: &[u8]) -> u32 {
    let h = id_hash_bytes(b);
    #[allow(clippy::cast_possible_truncation, reason = "folded to 24 bits")]
    let folded = ((h ^ (h >> 32)) as u32) & MASK;
    folded
}

impl Index {
    fn open(file: File) -> Result<Self, Unusable> {
        let mut head = [0u8; 64];
        file.read_exact_at(&mut head, 0).map_err(corrupt("index"))?;
        let n = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or_default());
        let (blocks, ids, mails) = (n(8), n(16), n(24));
        let counts =
            UserCounts { users: n(32), with_attributes: n(40), with_mail: n(48), with_mail_and_enabled: n(56) };
        let len = file.metadata().map_err(corrupt("index"))?.len();
        let want = blocks
            .checked_mul(START)
            .zip(ids.checked_add(mails).and_then(|k| k.checked_mul(ENTRY)))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|b| b.checked_add(INDEX_HEAD));
        let deflated = &head[..8] == INDEX_DEFLATED;
        if !(deflated || &head[..8] == INDEX_PLAIN) || want != Some(len) {
            return Err(Unusable::Corrupt("index: not an index of this member data".into()));
        }
        Ok(Self { file, deflated, blocks, ids, mails, counts, tables: Default::default() })
    }

    fn u64_at(&self, at: u64) -> Result<u64, Unusable> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, at).map_err(corrupt("index"))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Where block `k` starts and ends in the member data (`None`: at its end).
    fn block(&self, k: u32) -> Result<(u64, Option<u64>), Unusable> {
        let k = u64::from(k);
        if k >= self.blocks {
            return Err(Unusable::Corrupt("index: no such block".into()));
        }
        let start = self.u64_at(INDEX_HEAD + k * START)?;
        let end = if k + 1 < self.blocks { Some(self.u64_at(INDEX_HEAD + (k + 1) * START)?) } else { None };
        Ok((start, end))
    }

    /// The blocks holding entries of `key` in table `mails` (false: by id).
    fn find(&self, mails: bool, key: u32) -> Result<Vec<u32>, Unusable> {
        let table = self.tables[usize::from(mails)]
            .get_or_init(|| {
                let tables = INDEX_HEAD + self.blocks * START;
                let (start, n) = if mails { (tables + self.ids * ENTRY, self.mails) } else { (tables, self.ids) };
                let mut t =
                    vec![0u8; usize::try_from(n * ENTRY).map_err(|_| Unusable::Corrupt("index: too large".into()))?];
                self.file.read_exact_at(&mut t, start).map_err(corrupt("index"))?;
                Ok(t)
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let at = |i: usize| -> (u32, u32) {
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&table[i * 6..i * 6 + 6]);
            let e = u64::from_le_bytes(b);
            #[allow(clippy::cast_possible_truncation, reason = "two 24-bit fields")]
            ((e >> BITS) as u32 & MASK, e as u32 & MASK)
        };
        let n = table.len() / 6;
        // The bucket's start, then its entries of `key` (in the order of their blocks).
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if bucket_of(at(mid).0) < bucket_of(key) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        while lo < n && bucket_of(at(lo).0) == bucket_of(key) {
            let (hash, b) = at(lo);
            if hash == key && out.last() != Some(&b) {
                out.push(b);
            }
            lo += 1;
        }
        Ok(out)
    }
}

/// A state, opened: its links read, its member data and index held open for the run, its
/// log read.
#[derive(Debug)]
pub struct Opened {
    /// Where the rounds left off.
    pub header: Header,
    members: File,
    index: Index,
    log: Arc<Overlay>,
    count: u64,
    counts: UserCounts,
    links: PathBuf,
}

impl Opened {
    /// Opens the state of `key` in `state_dir`: its links file, then its current member
    /// data. Each file is opened as an output is: never through a symlink, never blocking
    /// (a FIFO is no state), and never a second name of another file where someone else
    /// controls the directory.
    pub fn open(state_dir: &Path, key: &Key) -> Result<Self, Unusable> {
        let links = key.path(state_dir);
        let bytes = crate::files::trust::read_capped(open_like_output(&links)?, LINKS_CAP)
            .map_err(|e| Unusable::Corrupt(e.to_string()))?;
        let format = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| Unusable::Corrupt(format!("links: {e}")))?
            .get("format")
            .and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            return Err(Unusable::Version(format.map_or_else(|| "none".to_owned(), |f| f.to_string())));
        }
        let file: LinksFile = serde_json::from_slice(&bytes).map_err(|e| Unusable::Corrupt(format!("links: {e}")))?;
        if file.header.key != *key {
            return Err(Unusable::Corrupt("it belongs to another query".into()));
        }
        let (members, index) = data_paths(&links, file.header.generation);
        let missing = |e: Unusable| match e {
            Unusable::Missing => Unusable::Corrupt("its member data is missing".into()),
            other => other,
        };
        let members = open_like_output(&members).map_err(missing)?;
        let index = Index::open(open_like_output(&index).map_err(missing)?)?;
        let (log, count, counts) = match file.header.log {
            None => (Overlay::default(), index.ids, index.counts),
            Some(l) => {
                let f = open_like_output(&log_path(&links, file.header.generation, l)).map_err(missing)?;
                Overlay::read(&crate::files::trust::read_capped(f, LOG_CAP).map_err(corrupt("log"))?)?
            }
        };
        Ok(Self { header: file.header, members, index, log: Arc::new(log), count, counts, links })
    }

    /// The links file, for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.links
    }

    /// When a safety-net read of this state was last made and not committed (Unix seconds),
    /// if it was since its last full read; read like the state (no symlink, no FIFO).
    #[must_use]
    pub fn net_tried(&self) -> Option<u64> {
        let file = open_like_output(&net_path(&self.links)).ok()?;
        let bytes = crate::files::trust::read_capped(file, 32).ok()?;
        let at: u64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
        (at >= self.header.full_at).then_some(at)
    }

    /// How many members it holds.
    #[must_use]
    pub fn members(&self) -> u64 {
        self.count
    }

    /// Its users, counted as a roster of it would count them.
    #[must_use]
    pub fn user_counts(&self) -> UserCounts {
        self.counts
    }

    /// Its log: the members changed since its member data was written.
    #[must_use]
    pub fn log(&self) -> &Overlay {
        &self.log
    }

    /// The member `id` (lower-cased), if it is one.
    pub fn lookup(&self, id: &str) -> Result<Option<Record>, Unusable> {
        if let Some(r) = self.log.get(id) {
            return Ok(r.clone());
        }
        for b in self.index.find(false, hash32(id.as_bytes()))? {
            if let Some(r) = self.block(b)?.into_iter().find(|r| r.id == id) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The members whose normalised mail is `mail`, except those `except` says anything of.
    pub fn with_mail(&self, mail: &[u8], except: &Overlay) -> Result<Vec<Record>, Unusable> {
        let mut out = Vec::new();
        let mut norm = Vec::new();
        for b in self.index.find(true, hash32(mail))? {
            for r in self.block(b)? {
                if self.log.get(&r.id).is_none() && r.normalised_mail(&mut norm) && norm == mail {
                    out.push(r);
                }
            }
        }
        out.extend(self.log.with_mail(mail).cloned());
        out.retain(|r| except.get(&r.id).is_none());
        Ok(out)
    }

    /// The records of block `k` of the member data (the magic and end lines left out).
    fn block(&self, k: u32) -> Result<Vec<Record>, Unusable> {
        let (start, end) = self.index.block(k)?;
        let len = match end {
            Some(e) => e.checked_sub(start).ok_or_else(|| Unusable::Corrupt("index: blocks out of order".into()))?,
            None => self.members.metadata().map_err(corrupt("members"))?.len().saturating_sub(start),
        };
        let mut deflated = vec![0u8; usize::try_from(len.min(LINE_CAP as u64 * 64)).unwrap_or(0)];
        self.members.read_exact_at(&mut deflated, start).map_err(corrupt("members"))?;
        if !self.index.deflated {
            return Self::records_of(&deflated);
        }
        // A block begins where the stream was flushed in full: it inflates on its own, and
        // ends where the next begins (not at the stream's end).
        let mut text = Vec::with_capacity(deflated.len() * 4 + 64);
        let mut z = flate2::Decompress::new(false);
        let bad = |e: flate2::DecompressError| corrupt("members")(io::Error::other(e));
        // Until it makes no more (its input all taken, and its output all given).
        loop {
            let (taken, made) = (z.total_in(), z.total_out());
            let rest = usize::try_from(taken).ok().and_then(|t| deflated.get(t..)).unwrap_or_default();
            if text.len() > LINE_CAP * BLOCK as usize {
                return Err(corrupt_record());
            }
            if text.capacity() - text.len() < 4096 {
                text.reserve(text.capacity().max(4096));
            }
            let status = z.decompress_vec(rest, &mut text, flate2::FlushDecompress::Sync).map_err(bad)?;
            if status == flate2::Status::StreamEnd || (z.total_in(), z.total_out()) == (taken, made) {
                break;
            }
        }
        Self::records_of(&text)
    }

    /// The records of a block's text.
    fn records_of(text: &[u8]) -> Result<Vec<Record>, Unusable> {
        let text = std::str::from_utf8(text).map_err(|_| corrupt_record())?;
        text.lines()
            .filter(|l| !l.starts_with(MAGIC) && !l.starts_with("end "))
            .map(|l| Record::parse(l).ok_or_else(corrupt_record))
            .collect()
    }

    /// Its members, as a stream (the member data, then the log).
    pub fn records(&self) -> Result<Reader, Unusable> {
        self.reader(Arc::clone(&self.log))
    }

    /// Its members with `changes` applied on top of its log, as a stream.
    pub fn records_with(&self, changes: &Overlay) -> Result<Reader, Unusable> {
        self.reader(Arc::new(self.log.merged(changes)))
    }

    fn reader(&self, overlay: Arc<Overlay>) -> Result<Reader, Unusable> {
        let file = self.members.try_clone().map_err(corrupt("members"))?;
        let plain = BufReader::with_capacity(1 << 16, At { file, pos: 0 });
        let source: Box<dyn BufRead + Send> = if self.index.deflated {
            Box::new(BufReader::with_capacity(1 << 16, DeflateDecoder::new(plain)))
        } else {
            Box::new(plain)
        };
        let mut lines = source.lines();
        let magic = lines.next().transpose().map_err(|e| Unusable::Corrupt(e.to_string()))?.unwrap_or_default();
        if magic.strip_prefix(MAGIC).map(str::trim) != Some(&FORMAT.to_string()) {
            return Err(Unusable::Corrupt("not the member data of a state".into()));
        }
        Ok(Reader { lines, overlay, tail: None, read: 0 })
    }
}

/// The longest line a record may have (a value Graph sent undecodable may be long).
const LINE_CAP: usize = 1 << 20;

/// How many bytes of plain member data a writer holds before writing them out.
const PLAIN_BUFFER: usize = 1 << 16;

fn corrupt_record() -> Unusable {
    Unusable::Corrupt("a malformed record".into())
}

/// A file read from its start by offset (`pread`): a second descriptor of the same file
/// shares no position with it.
struct At {
    file: File,
    pos: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens `path` for reading as an output is opened (see [`Opened::open`]).
fn open_like_output(path: &Path) -> Result<File, Unusable> {
    let (file, trust) = match crate::files::judged::open(&crate::files::judged::absolute(path)) {
        Ok(opened) => opened,
        // No file, or no directory where `delta/` should be: no state.
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Err(Unusable::Missing)
        }
        Err(e) => return Err(Unusable::Corrupt(crate::files::resolve::explain(&e))),
    };
    match rustix::fs::fstat(&file) {
        Ok(st) if st.st_nlink > 1 && !trust.is_trusted() => {
            Err(Unusable::Corrupt(format!("it has {} hard links", st.st_nlink)))
        }
        Ok(_) => Ok(file),
        Err(e) => Err(Unusable::Corrupt(e.to_string())),
    }
}

/// A stable 64-bit hash of bytes (the same in every build and run: it is on disk), eight
/// bytes at a time (`FxHash`'s step), ending with a mix so that the low bits depend on all.
fn id_hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut chunks = b.chunks_exact(8);
    let mut h =
        chunks.by_ref().fold(b.len() as u64, |h, c| step(h, u64::from_le_bytes(c.try_into().unwrap_or_default())));
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(w));
    }
    (h ^ (h >> 29)).wrapping_mul(K) ^ (h >> 32)
}

/// A state's members being read, one at a time: the member data (less what the overlay
/// says anything of), then the overlay's present members.
pub struct Reader {
    lines: io::Lines<Box<dyn BufRead + Send>>,
    overlay: Arc<Overlay>,
    tail: Option<std::vec::IntoIter<Record>>,
    read: u64,
}

impl Reader {
    /// The next record, `None` after the last; an error if the file is cut short (no end
    /// line, or another count than it holds) or mangled.
    pub fn next_record(&mut self) -> Result<Option<Record>, Unusable> {
        loop {
            if let Some(tail) = &mut self.tail {
                return Ok(tail.next());
            }
            let bad = |m: &str| Err(Unusable::Corrupt(m.to_owned()));
            match self.lines.next() {
                None => return bad("cut short"),
                Some(Err(e)) => return Err(Unusable::Corrupt(e.to_string())),
                Some(Ok(l)) => match l.strip_prefix("end ") {
                    Some(n) if n.parse() == Ok(self.read) && self.lines.next().is_none() => {
                        self.tail = Some(self.overlay.present_sorted().into_iter());
                    }
                    Some(_) => return bad("its end does not match its records"),
                    None => {
                        self.read += 1;
                        let r = Record::parse(&l).ok_or_else(corrupt_record)?;
                        if self.overlay.get(&r.id).is_none() {
                            return Ok(Some(r));
                        }
                    }
                },
            }
        }
    }
}

/// A state that cannot be written costs no list (contract §9): said once, as a warning, and
/// the old state's links file is removed (where it can be) so that the next run reads the
/// group in full.
pub fn abandon(links: &Path, group: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(group, path = %links.display(), %error, "cannot write the delta state; the lists are written all the same, and the next run reads the group in full");
    if let Ok(t) = crate::files::write::Target::at(links) {
        // Nothing more to say if it is gone already, or cannot go (a read-only state_dir).
        let _ = t.remove();
    }
}

/// Where a safety-net read of the state at `links` that was not committed is noted.
fn net_path(links: &Path) -> PathBuf {
    links.with_extension("net")
}

/// How long after a safety-net read that was not committed the runs read by delta, not in
/// full again.
pub const NET_RETRY: u64 = 3600;

/// How old a state's temp or orphaned file must be to be taken for a killed run's: older
/// than any run (`[http] deadline_seconds` has no upper bound, but no run lasts a day).
const STALE_AGE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// New member data being written, staged next to the old until a commit puts it in place.
pub struct Writer {
    out: BufWriter<File>,
    /// The deflate stream (none: plain), and the lines made and not yet written: the block
    /// being made (deflated: the block is the unit), or up to [`PLAIN_BUFFER`] bytes of
    /// whole blocks (plain).
    z: Option<flate2::Compress>,
    block: Vec<u8>,
    deflated: Vec<u8>,
    /// Bytes written to the file so far.
    written: u64,
    state_dir: PathBuf,
    /// Where each block starts in the member data.
    starts: Vec<u64>,
    /// A mail being normalised.
    scratch: Vec<u8>,
    staged: Staged,
    /// The table entries by id and by normalised mail.
    ids: Table,
    mails: Table,
    counts: UserCounts,
    header: Header,
    links: PathBuf,
    replaces: Option<Header>,
}

impl Writer {
    /// Starts new member data for the state `header` describes, in `state_dir` (creating
    /// `<state_dir>/delta/`, mode 0700), as a new generation with no log, plain (see
    /// [`Commit::fit`]); `replaces` is the state it takes over from, whose member data is
    /// removed on commit.
    pub fn create(state_dir: &Path, header: Header, replaces: Option<Header>) -> Result<Self, WriteError> {
        Self::open(state_dir, header, replaces, false)
    }

    fn open(state_dir: &Path, mut header: Header, replaces: Option<Header>, deflate: bool) -> Result<Self, WriteError> {
        let links = header.key.path(state_dir);
        let fail = |action, source| WriteError { path: links.clone(), action, source };
        if let Some(dir) = links.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("create the directory of", e))?;
        }
        // A new generation, unless it deflates the one just staged plain (see
        // [`Commit::fit`]): the same version, as the instances' memos name it.
        if !deflate {
            header.generation = loop {
                let g = fastrand::u64(..);
                if replaces.as_ref().is_none_or(|r| r.generation != g) {
                    break g;
                }
            };
        }
        header.log = None;
        let (members, _) = data_paths(&links, header.generation);
        let mut staged = Staged::create(&members, 0o600)?;
        // Ages by the file system's clock (the new file's time), not the process's: one
        // shifted or stepped clock does not make every file old.
        if let Ok(now) = staged.file().metadata().and_then(|m| m.modified()) {
            clean_stale(&links, now);
        }
        let out = staged.file().try_clone().map_err(|e| fail("write", e))?;
        let mut block = Vec::with_capacity(PLAIN_BUFFER + (1 << 12));
        block.extend_from_slice(format!("{MAGIC} {FORMAT}\n").as_bytes());
        let w = Self {
            out: BufWriter::with_capacity(1 << 16, out),
            z: deflate.then(|| flate2::Compress::new(flate2::Compression::fast(), false)),
            written: 0,
            state_dir: state_dir.to_owned(),
            block,
            deflated: Vec::with_capacity(1 << 16),
            starts: vec![0],
            scratch: Vec::with_capacity(256),
            staged,
            ids: Table::default(),
            mails: Table::default(),
            counts: UserCounts::default(),
            header,
            links,
            replaces,
        };
        // The magic line is the first block's start (deflated, it is in its stream).
        Ok(w)
    }

    /// Adds a member.
    pub fn push(&mut self, r: &Record) -> Result<(), WriteError> {
        self.counts.count(&r.view(), true);
        // Only users give lines: only their mails are looked up.
        let mail = r.mail.as_deref().filter(|_| r.kind == ObjectKind::User).map(text);
        let mail = mail.and_then(|t| mail_hash(&t, &mut self.scratch));
        r.line_into(&mut self.block);
        self.add_line(hash32(r.id.as_bytes()), mail)
    }

    /// Adds what a page says of a member, as [`Record::of`] and [`Writer::push`] would,
    /// without making the record (a full read writes a million of them), with its mail as
    /// the roster normalised it (`None` if it kept none: not normalised twice); `false` for
    /// an object whose id is no object id (not kept).
    pub fn push_member(&mut self, m: &MemberView<'_>, phones: bool, mail: Option<&[u8]>) -> Result<bool, WriteError> {
        let mail = mail.map(hash32);
        if !crate::model::ids::is_object_id(&m.id) {
            return Ok(false);
        }
        self.counts.count(m, true);
        let line = &mut self.block;
        let at = line.len();
        line_head(line, m.id.as_bytes(), m.kind, m.account_enabled);
        let id = hash32(&line[at..at + m.id.len()]);
        match &m.mail {
            Some(t) => json_into(line, t),
            None => line.push(b'-'),
        }
        line.push(b'\t');
        match m.mobile_phone.as_ref().filter(|_| phones) {
            Some(t) => json_into(line, t),
            None => line.push(b'-'),
        }
        line.push(b'\n');
        self.add_line(id, mail)?;
        Ok(true)
    }

    /// Indexes the line just made by `id` and `mail`; a block full is ended.
    fn add_line(&mut self, id: u32, mail: Option<u32>) -> Result<(), WriteError> {
        let block = u32::try_from(self.starts.len() - 1).ok().filter(|b| *b <= MASK).ok_or_else(|| WriteError {
            path: self.links.clone(),
            action: "write",
            source: io::Error::other("over a billion members: more than a state holds"),
        })?;
        self.ids.push(id, block);
        if let Some(m) = mail {
            self.mails.push(m, block);
        }
        if self.ids.len() % BLOCK as usize == 0 {
            self.end_block(flate2::FlushCompress::Full)?;
            let held = if self.z.is_some() { 0 } else { self.block.len() as u64 };
            self.starts.push(self.written + held);
        }
        Ok(())
    }

    /// Writes the block made: deflated and ended with `flush`, or plain, once the blocks held
    /// reach [`PLAIN_BUFFER`] bytes or at the end (`Finish`).
    fn end_block(&mut self, flush: flate2::FlushCompress) -> Result<(), WriteError> {
        let fail = |e: io::Error| WriteError { path: self.links.clone(), action: "write", source: e };
        let Some(z) = &mut self.z else {
            if self.block.len() >= PLAIN_BUFFER || matches!(flush, flate2::FlushCompress::Finish) {
                self.out.write_all(&self.block).map_err(fail)?;
                self.written += self.block.len() as u64;
                self.block.clear();
            }
            return Ok(());
        };
        let mut input = &self.block[..];
        loop {
            self.deflated.clear();
            let before = z.total_in();
            let status = z.compress_vec(input, &mut self.deflated, flush).map_err(|e| fail(io::Error::other(e)))?;
            let used = usize::try_from(z.total_in() - before).unwrap_or(usize::MAX);
            input = &input[used.min(input.len())..];
            self.out.write_all(&self.deflated).map_err(&fail)?;
            // Done once the input is in and the output buffer was not filled up.
            let finished = status == flate2::Status::StreamEnd || !matches!(flush, flate2::FlushCompress::Finish);
            if input.is_empty() && self.deflated.len() < self.deflated.capacity() && finished {
                break;
            }
        }
        self.written = z.total_out();
        self.block.clear();
        Ok(())
    }

    /// The state's links file, for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.links
    }

    /// Ends the member data: the new state, staged, ready to commit.
    pub fn finish(mut self) -> Result<Commit, WriteError> {
        let end = format!("end {}\n", self.ids.len());
        self.block.extend_from_slice(end.as_bytes());
        self.end_block(flate2::FlushCompress::Finish)?;
        let fail = |source| WriteError { path: self.links.clone(), action: "write", source };
        self.out.flush().map_err(fail)?;
        drop(self.out);
        // The last start is where no block began (a full block ended the members).
        if self.starts.len() > 1 && self.ids.len() % BLOCK as usize == 0 {
            self.starts.pop();
        }
        let (ids, mails) = (std::mem::take(&mut self.ids).bucketed(), std::mem::take(&mut self.mails).bucketed());
        let (_, index_path) = data_paths(&self.links, self.header.generation);
        let mut index = Staged::create(&index_path, 0o600)?;
        {
            let mut w = BufWriter::with_capacity(1 << 16, index.file());
            w.write_all(if self.z.is_some() { INDEX_DEFLATED } else { INDEX_PLAIN }).map_err(fail)?;
            let c = self.counts;
            let sizes = [self.starts.len(), ids.len(), mails.len()].map(|n| n as u64);
            for n in sizes.into_iter().chain([c.users, c.with_attributes, c.with_mail, c.with_mail_and_enabled]) {
                w.write_all(&n.to_le_bytes()).map_err(fail)?;
            }
            for s in &self.starts {
                w.write_all(&s.to_le_bytes()).map_err(fail)?;
            }
            for e in ids.iter().chain(&mails) {
                w.write_all(&e.to_le_bytes()[..6]).map_err(fail)?;
            }
            w.flush().map_err(fail)?;
        }
        let index_bytes = INDEX_HEAD + START * self.starts.len() as u64 + ENTRY * (ids.len() + mails.len()) as u64;
        let links = stage_links(&self.links, &self.header)?;
        let replaced = self.replaces.as_ref().map(|r| files_of(&self.links, r)).unwrap_or_default();
        let plain = self.z.is_none().then(|| Plain {
            state_dir: self.state_dir.clone(),
            header: self.header.clone(),
            replaces: self.replaces.clone(),
            bytes: self.written + index_bytes,
        });
        Ok(Commit {
            data: vec![self.staged, index],
            links,
            replaced,
            version: self.header.version(),
            path: self.links,
            net_at: None,
            plain,
        })
    }
}

/// A table being made: (hash, block) entries, each packed as one number (hash above
/// block), in the order of their blocks, and how many fall in each bucket (the top
/// [`BUCKET_BITS`] of the hash).
#[derive(Default)]
struct Table {
    entries: Vec<u64>,
    buckets: Vec<u32>,
}

/// The bits of a hash a table is ordered by: the rest are looked through, a few hundred
/// entries at a million members.
const BUCKET_BITS: u32 = 12;

fn bucket_of(hash: u32) -> usize {
    (hash >> (BITS - BUCKET_BITS)) as usize
}

impl Table {
    fn push(&mut self, hash: u32, block: u32) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; 1 << BUCKET_BITS];
        }
        self.buckets[bucket_of(hash)] += 1;
        self.entries.push((u64::from(hash) << BITS) | u64::from(block));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries ordered by bucket, each bucket's in the order they came (so by block):
    /// one pass (a million entries in a few milliseconds).
    fn bucketed(self) -> Vec<u64> {
        let Self { entries, mut buckets } = self;
        let mut sum = 0;
        for c in &mut buckets {
            (*c, sum) = (sum, sum + *c);
        }
        let mut out = vec![0u64; entries.len()];
        for e in entries {
            #[allow(clippy::cast_possible_truncation, reason = "the hash is 24 bits")]
            let b = &mut buckets[bucket_of((e >> BITS) as u32)];
            out[*b as usize] = e;
            *b += 1;
        }
        out
    }
}

/// Why a compaction failed: the old state could not be read (a resync), or the new one
/// could not be written (it is abandoned, and the lists written all the same).
#[derive(Debug)]
pub enum Compaction {
    /// Reading the old state.
    Read(Unusable),
    /// Writing the new one.
    Write(WriteError),
}

/// A new generation of member data: the old state's, with its log and `changes` folded in,
/// under `header` (its links), staged to replace the old state's files.
pub fn compact(state_dir: &Path, old: &Opened, changes: &Overlay, header: Header) -> Result<Commit, Compaction> {
    let mut w = Writer::create(state_dir, header, Some(old.header.clone())).map_err(Compaction::Write)?;
    let mut r = old.records_with(changes).map_err(Compaction::Read)?;
    while let Some(rec) = r.next_record().map_err(Compaction::Read)? {
        w.push(&rec).map_err(Compaction::Write)?;
    }
    w.finish().map_err(Compaction::Write)
}

/// The links file of `header`, staged.
fn stage_links(links: &Path, header: &Header) -> Result<Staged, WriteError> {
    let fail = |source| WriteError { path: links.to_owned(), action: "write", source };
    let text = serde_json::to_vec(&LinksFile { format: FORMAT, header: header.clone() })
        .map_err(|e| fail(io::Error::other(e)))?;
    let mut staged = Staged::create(links, 0o600)?;
    staged.file().write_all(&text).map_err(fail)?;
    Ok(staged)
}

/// A new state, staged: [`Commit::commit`] puts the member data in place, then the links
/// file (the commit point), then removes the files it replaced. Dropped uncommitted, it
/// leaves nothing behind.
pub struct Commit {
    data: Vec<Staged>,
    links: Staged,
    replaced: Vec<PathBuf>,
    version: u64,
    /// The links file it replaces.
    path: PathBuf,
    /// For a safety-net read: when it was read, noted if it is not committed.
    net_at: Option<u64>,
    /// New member data written plain: what [`Commit::fit`] needs to deflate it.
    plain: Option<Plain>,
}

/// A plain generation, staged.
struct Plain {
    state_dir: PathBuf,
    header: Header,
    replaces: Option<Header>,
    /// Member data and index.
    bytes: u64,
}

impl Commit {
    /// The state made to fit in `limit` bytes (1.5 times the outputs the group feeds, so
    /// that with its log it stays under twice): new member data written plain that takes
    /// more is written again, deflated. Everything else is as it was.
    pub fn fit(mut self, limit: u64) -> Result<Self, WriteError> {
        let Some(p) = self.plain.take().filter(|p| p.bytes > limit) else { return Ok(self) };
        let fail = |source| WriteError { path: self.path.clone(), action: "read", source };
        let Some(members) = self.data.first() else { return Ok(self) };
        let file = members.read_back()?;
        let mut w = Writer::open(&p.state_dir, p.header.clone(), p.replaces.clone(), true)?;
        for line in BufReader::with_capacity(1 << 16, At { file, pos: 0 }).lines() {
            let line = line.map_err(fail)?;
            if line.starts_with(MAGIC) || line.starts_with("end ") {
                continue;
            }
            let r = Record::parse(&line).ok_or_else(|| fail(io::Error::other("a malformed record")))?;
            w.push(&r)?;
        }
        let mut c = w.finish()?;
        c.net_at = self.net_at;
        Ok(c)
    }

    /// The state's links moved, its members did not: only the links file is rewritten.
    pub fn links_only(state_dir: &Path, header: &Header) -> Result<Self, WriteError> {
        let path = header.key.path(state_dir);
        let links = stage_links(&path, header)?;
        Ok(Self { data: vec![], links, replaced: vec![], version: header.version(), path, net_at: None, plain: None })
    }

    /// The members of the state `old` changed by `changes`: its member data stays, and a
    /// new log (its log with the changes) replaces its log. `header` holds the new links.
    pub fn with_log(
        state_dir: &Path,
        header: &Header,
        old: &Opened,
        changes: &Overlay,
        (members, counts): (u64, UserCounts),
    ) -> Result<Self, WriteError> {
        let path = header.key.path(state_dir);
        let log = old.log.merged(changes);
        let mut header = header.clone();
        header.log = Some(loop {
            let l = fastrand::u64(..);
            if l != header.generation && old.header.log != Some(l) {
                break l;
            }
        });
        let mut staged = Staged::create(&log_path(&path, header.generation, header.log.unwrap_or_default()), 0o600)?;
        let fail = |source| WriteError { path: path.clone(), action: "write", source };
        staged.file().write_all(&log.to_log(members, counts).map_err(fail)?).map_err(fail)?;
        let links = stage_links(&path, &header)?;
        let replaced = old.header.log.map(|l| log_path(&path, old.header.generation, l)).into_iter().collect();
        Ok(Self { data: vec![staged], links, replaced, version: header.version(), path, net_at: None, plain: None })
    }

    /// The version of member data the state names (see [`Header::version`]).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// This commit is a safety-net read's, made at `now` (Unix seconds): if it is abandoned,
    /// that is noted beside the state it would have replaced (see [`Opened::net_tried`]).
    #[must_use]
    pub fn of_safety_net(mut self, now: u64) -> Self {
        self.net_at = Some(now);
        self
    }

    /// Drops the new state (an instance that used it was refused or failed: the old one
    /// stays, and the next run sees the same changes). A safety-net read's is noted, so
    /// that the runs of the next hour read by delta instead of in full each time: the lists
    /// are planned from every member either way, and a refusal may last a day.
    pub fn abandon(self) {
        if let Some(now) = self.net_at {
            let path = net_path(&self.path);
            if let Err(e) = crate::files::write::write_file(&path, 0o600, now.to_string().as_bytes()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot note the safety-net read that was not committed; the next run reads in full again");
            }
        }
    }

    /// Puts the new state in place.
    pub fn commit(self) -> Result<(), WriteError> {
        for d in self.data {
            d.commit()?;
        }
        self.links.commit()?;
        // Committed: a safety net noted as not committed is due again when the last full
        // read is old (a no-op, writing nothing, when there is no note).
        if let Ok(t) = crate::files::write::Target::at(&net_path(&self.path)) {
            let _ = t.remove();
        }
        for p in self.replaced {
            if let Ok(t) = crate::files::write::Target::at(&p) {
                let _ = t.remove();
            }
        }
        Ok(())
    }
}

/// Removes what killed runs left next to the state at `links`: temp files, and member data
/// or logs the links file does not name, once they are a day old (no lock spans the runs of
/// different instances: a younger file may be another run's, being written).
fn clean_stale(links: &Path, now: std::time::SystemTime) {
    let current = open_like_output(links)
        .ok()
        .and_then(|f| crate::files::trust::read_capped(f, LINKS_CAP).ok())
        .and_then(|b| serde_json::from_slice::<LinksFile>(&b).ok())
        .map(|f| (f.header.generation, f.header.log));
    let (Some(dir), Some(stem)) = (links.parent(), links.file_stem().and_then(|s| s.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let hex = |p: Option<&str>| p.and_then(|g| u64::from_str_radix(g, 16).ok());
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Names are ours, in exactly this case: no case-insensitive match.
        let ours = name.starts_with(&format!(".usersync-{stem}.")) && name.rsplit('.').next() == Some("tmp");
        let orphan = name.strip_prefix(&format!("{stem}.")).is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('.').collect();
            match parts.as_slice() {
                [g, "members" | "index"] => hex(Some(g)).is_some_and(|g| Some(g) != current.map(|c| c.0)),
                [g, l, "log"] => match (hex(Some(g)), hex(Some(l))) {
                    (Some(g), Some(l)) => Some((g, Some(l))) != current,
                    _ => false,
                },
                _ => false,
            }
        });
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| now.duration_since(m).unwrap_or_default() >= STALE_AGE);
        if (ours || orphan) && old && e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(path = %links.display(), removed, "removed files a killed run left behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::page::parse;

    fn key() -> Key {
        Key {
            token_url: "https://login.example/t/oauth2/v2.0/token".into(),
            graph: "https://graph.example".into(),
            client: "c".into(),
            group: "g".into(),
            attributes: "mail,mobilePhone".into(),
            isolated: None,
        }
    }

    fn header() -> Header {
        Header { key: key(), group_link: "gl".into(), users_link: "ul".into(), full_at: 2, generation: 0, log: None }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("delta"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A state dir holding a state of one member.
    fn one_member_state() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writer::create(t.path(), header(), None).unwrap();
        w.push(&Record { id: "1".into(), kind: ObjectKind::User, enabled: Some(true), mail: None, phone: None })
            .unwrap();
        w.finish().unwrap().commit().unwrap();
        t
    }

    #[test]
    fn files_a_killed_run_left_go_once_they_are_a_day_old() {
        let t = one_member_state();
        let stem = key().stem(t.path());
        let name = |s: &str| stem.with_file_name(format!("{}{s}", stem.file_name().unwrap().to_string_lossy()));
        let tmp_name = format!(".usersync-{}.x.tmp", stem.file_name().unwrap().to_string_lossy());
        let (old, young, orphan) = (stem.with_file_name(&tmp_name), name(".y.tmp"), name(".00000000000000ff.members"));
        // Ages by the file system's clock, as the run judges them (tests/clock-shift moves
        // this process's clock, not the file system's).
        let probe = t.path().join("probe");
        let now = File::create(&probe).unwrap().metadata().unwrap().modified().unwrap();
        let a_day_ago = now - std::time::Duration::from_secs(90_000);
        for (p, age) in [(&old, a_day_ago), (&young, now), (&orphan, a_day_ago)] {
            File::create(p).unwrap().set_modified(age).unwrap();
        }
        let _w = Writer::create(t.path(), header(), None).unwrap();
        assert!(!old.exists(), "a day old: a killed run's");
        assert!(!orphan.exists(), "member data no links file names, a day old");
        assert!(young.exists(), "maybe another run's, writing now");
    }

    #[test]
    fn members_round_trip_exactly_as_a_page_gave_them() {
        let page = parse(
            br##"{"value":[
            {"@odata.type":"#microsoft.graph.user","id":"ID-1","mail":"A\tb@x.com","mobilePhone":"+44 (0)20","accountEnabled":true},
            {"@odata.type":"#microsoft.graph.user","id":"2","mail":"a\ud800@x","mobilePhone":{"x":[1, 2]}},
            {"@odata.type":"#microsoft.graph.group","id":"3"},
            {"id":"4","mail":"n@x","accountEnabled":false},
            {"@odata.type":"#microsoft.graph.user","id":"5","mail":{"a":
	"\ud800"},"accountEnabled":true}]}"##,
        )
        .unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut w = Writer::create(t.path(), header(), None).unwrap();
        for m in &page.members {
            w.push(&Record::of(&MemberView::from(m), true).unwrap()).unwrap();
        }
        w.finish().unwrap().commit().unwrap();
        for f in files(t.path()) {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(t.path().join("delta").join(&f)).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let opened = Opened::open(t.path(), &key()).unwrap();
        assert_eq!((&opened.header.group_link, &opened.header.users_link), (&"gl".to_owned(), &"ul".to_owned()));
        assert_eq!(opened.lookup("id-1").unwrap().unwrap().mail.as_deref(), Some(r#""A\tb@x.com""#));
        assert_eq!(opened.lookup("6").unwrap(), None);
        let mut r = opened.records().unwrap();
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            back.push(crate::model::page::Member::from(rec.view()));
        }
        let mut want = page.members.clone();
        want[0].id = "id-1".into();
        // An undecodable value is kept for the log, made compact (one line).
        want[1].mobile_phone = Some(crate::model::page::Text::Undecodable(r#"{"x":[1,2]}"#.into()));
        // One that does not parse either: its line break and tab made spaces.
        want[4].mail = Some(crate::model::page::Text::Undecodable(r#"{"a":  "\ud800"}"#.into()));
        assert_eq!(back, want);
        assert!(matches!(Opened::open(t.path(), &Key { group: "other".into(), ..key() }), Err(Unusable::Missing)));
        assert!(matches!(Opened::open(&t.path().join("none"), &key()), Err(Unusable::Missing)));
    }

    /// A full read writes members straight from the page (`push_member`); a delta run
    /// writes records (`push`): byte for byte the same state, whatever the values hold.
    #[test]
    fn a_member_pushed_from_a_page_is_written_as_its_record() {
        let body = br##"{"value":[
            {"@odata.type":"#microsoft.graph.user","id":"ID-1","mail":"A\tb@x.com","mobilePhone":"+44 (0)20","accountEnabled":true},
            {"@odata.type":"#microsoft.graph.user","id":"2","mail":"a\ud800@x","mobilePhone":{"x":[1, 2]}},
            {"@odata.type":"#microsoft.graph.user","id":"5","mail":"q\"uote\\@x","mobilePhone":"\u00e9 1","accountEnabled":false},
            {"@odata.type":"#microsoft.graph.group","id":"3"},
            {"id":"bad id","mail":"n@x"},
            {"id":"4","mail":"n@x","accountEnabled":false}]}"##;
        for phones in [true, false] {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut by_record = Writer::create(a.path(), header(), None).unwrap();
            // As a full read writes them: with the mail its roster normalised.
            let mut by_member = Writer::create(b.path(), header(), None).unwrap();
            let mut roster = crate::model::roster::Roster::new(phones);
            crate::model::page::visit(body, |m| {
                if let Some(r) = Record::of(&m, phones) {
                    by_record.push(&r).unwrap();
                }
                let mail = roster.push(&m);
                assert_eq!(by_member.push_member(&m, phones, mail).unwrap(), m.id.as_ref() != "bad id");
            })
            .unwrap();
            let gens = [by_record.header.generation, by_member.header.generation];
            by_record.finish().unwrap().commit().unwrap();
            by_member.finish().unwrap().commit().unwrap();
            let read = |dir: &Path, g: u64| {
                let (members, ids) = data_paths(&key().path(dir), g);
                (std::fs::read_to_string(members).unwrap(), std::fs::read(ids).unwrap())
            };
            let (want, got) = (read(a.path(), gens[0]), read(b.path(), gens[1]));
            assert_eq!(want, got, "phones: {phones}");
            assert_eq!(want.0.lines().count(), 7, "magic, five members, end: {}", want.0);
        }
    }

    #[test]
    fn moving_links_rewrites_no_member_data_and_a_new_generation_replaces_the_old() {
        let t = one_member_state();
        let before = files(t.path());
        let opened = Opened::open(t.path(), &key()).unwrap();
        let moved = Header { group_link: "gl2".into(), ..opened.header.clone() };
        Commit::links_only(t.path(), &moved).unwrap().commit().unwrap();
        assert_eq!(files(t.path()), before, "the same files");
        assert_eq!(Opened::open(t.path(), &key()).unwrap().header.group_link, "gl2");
        // A reader opened before a new generation still reads the old one whole.
        let held = Opened::open(t.path(), &key()).unwrap();
        let w = Writer::create(t.path(), held.header.clone(), Some(held.header.clone())).unwrap();
        w.finish().unwrap().commit().unwrap();
        assert_eq!(files(t.path()).len(), 3, "the old generation removed: {:?}", files(t.path()));
        let mut r = held.records().unwrap();
        assert!(r.next_record().unwrap().is_some() && r.next_record().unwrap().is_none());
    }

    #[test]
    fn a_cut_short_or_mangled_state_is_corrupt_and_another_version_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writer::create(t.path(), header(), None).unwrap();
        let rec = Record {
            id: "1".into(),
            kind: ObjectKind::User,
            enabled: Some(true),
            mail: Some("\"a@x\"".into()),
            phone: None,
        };
        w.push(&rec).unwrap();
        w.push(&rec).unwrap();
        w.finish().unwrap().commit().unwrap();
        let generation = Opened::open(t.path(), &key()).unwrap().header.generation;
        let (members, _) = data_paths(&key().path(t.path()), generation);
        let whole = std::fs::read(&members).unwrap();
        let read_all = |bytes: &[u8]| {
            std::fs::write(&members, bytes).unwrap();
            let mut r = Opened::open(t.path(), &key())?.records()?;
            while r.next_record()?.is_some() {}
            Ok::<_, Unusable>(())
        };
        assert_eq!(read_all(&whole), Ok(()));
        assert!(read_all(&whole[..whole.len() - 10]).is_err(), "cut short");
        assert!(read_all(b"not member data at all").is_err());
        std::fs::write(key().path(t.path()), br#"{"format":99}"#).unwrap();
        assert_eq!(Opened::open(t.path(), &key()).unwrap_err(), Unusable::Version("99".into()));
    }

    fn user(id: &str, mail: &str) -> Record {
        Record {
            id: id.into(),
            kind: ObjectKind::User,
            enabled: Some(true),
            mail: Some(format!("\"{mail}\"")),
            phone: None,
        }
    }

    /// A log of changes: members looked up by id and by mail through it, streamed with it,
    /// and replaced (its old log removed) by the next; the member data is never rewritten.
    #[test]
    fn a_log_of_changes_overrides_the_member_data_without_rewriting_it() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writer::create(t.path(), header(), None).unwrap();
        for r in [user("1", "A@x"), user("2", "b@x"), user("3", "a@X")] {
            w.push(&r).unwrap();
        }
        w.finish().unwrap().commit().unwrap();
        let base = files(t.path());
        let old = Opened::open(t.path(), &key()).unwrap();
        let ids = |v: Vec<Record>| {
            let mut v: Vec<String> = v.into_iter().map(|r| r.id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(old.with_mail(b"a@x", &Overlay::default()).unwrap()), ["1", "3"], "by normalised mail");
        let mut changes = Overlay::default();
        changes.set("3".into(), None);
        changes.set("2".into(), Some(user("2", "a@x")));
        changes.set("4".into(), Some(user("4", "d@x")));
        assert_eq!(ids(old.with_mail(b"a@x", &changes).unwrap()), ["1"], "except what the changes say");
        let c = Commit::with_log(t.path(), &old.header, &old, &changes, (3, old.user_counts())).unwrap();
        let version = c.version();
        c.commit().unwrap();
        let now = Opened::open(t.path(), &key()).unwrap();
        assert_eq!(now.header.version(), version);
        assert_eq!(now.header.generation, old.header.generation, "the same member data");
        assert_eq!(files(t.path()).len(), base.len() + 1, "one log more: {:?}", files(t.path()));
        assert_eq!(now.members(), 3);
        assert_eq!(now.lookup("3").unwrap(), None);
        assert_eq!(now.lookup("2").unwrap(), Some(user("2", "a@x")));
        assert_eq!(ids(now.with_mail(b"a@x", &Overlay::default()).unwrap()), ["1", "2"]);
        let mut r = now.records().unwrap();
        let mut all = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            all.push(rec.id);
        }
        assert_eq!(all, ["1", "2", "4"], "the member data less the log's, then the log's");
        // The next log replaces this one.
        let mut more = Overlay::default();
        more.set("1".into(), None);
        Commit::with_log(t.path(), &now.header, &now, &more, (2, now.user_counts())).unwrap().commit().unwrap();
        assert_eq!(files(t.path()).len(), base.len() + 1, "{:?}", files(t.path()));
        let last = Opened::open(t.path(), &key()).unwrap();
        assert_eq!((last.lookup("1").unwrap(), last.lookup("3").unwrap(), last.members()), (None, None, 2));
        assert_eq!(last.log().len(), 4);
    }

    /// Members in many blocks, plain or deflated (a state that does not fit plain beside
    /// its outputs): each is found by id and by mail, reading its block alone.
    #[test]
    fn every_member_of_many_blocks_is_found_by_id_and_by_mail() {
        for limit in [u64::MAX, 0] {
            many_blocks(limit);
        }
    }

    fn many_blocks(limit: u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::create(dir.path(), header(), None).unwrap();
        // Past a write of the plain buffer (64 KiB), and a last block not full.
        let n = BLOCK * 40 + 17;
        let pad = "m".repeat(40);
        for i in 0..n {
            writer.push(&user(&format!("id{i}"), &format!("U{}.{pad}@x.example", i % 100))).unwrap();
        }
        let generation = writer.header.generation;
        writer.finish().unwrap().fit(limit).unwrap().commit().unwrap();
        assert_eq!(files(dir.path()).len(), 3, "links, members, index: {:?}", files(dir.path()));
        let s = Opened::open(dir.path(), &key()).unwrap();
        assert_eq!(s.index.deflated, limit == 0);
        assert_eq!(s.header.generation, generation, "deflated, still the version the memos name");
        assert_eq!(s.members(), u64::from(n));
        for i in 0..n {
            assert_eq!(s.lookup(&format!("id{i}")).unwrap().unwrap().id, format!("id{i}"));
        }
        assert_eq!(s.lookup("id-none").unwrap(), None);
        for m in 0..100 {
            let found = s.with_mail(format!("u{m}.{pad}@x.example").as_bytes(), &Overlay::default()).unwrap();
            let want = (0..n).filter(|i| i % 100 == m).count();
            assert_eq!(found.len(), want, "u{m}");
        }
        let mut records = s.records().unwrap();
        let mut read = 0;
        while records.next_record().unwrap().is_some() {
            read += 1;
        }
        assert_eq!(read, n);
    }

    /// A long log is folded into a new generation: the same members, no log, the old
    /// generation's files gone once it is committed.
    #[test]
    fn a_compaction_folds_the_log_into_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::create(dir.path(), header(), None).unwrap();
        for i in 0..100 {
            writer.push(&user(&format!("id{i}"), &format!("u{i}@x"))).unwrap();
        }
        writer.finish().unwrap().commit().unwrap();
        let old = Opened::open(dir.path(), &key()).unwrap();
        let mut log = Overlay::default();
        log.set("id1".into(), None);
        Commit::with_log(dir.path(), &old.header, &old, &log, (99, old.user_counts())).unwrap().commit().unwrap();
        let old = Opened::open(dir.path(), &key()).unwrap();
        let mut changes = Overlay::default();
        changes.set("id2".into(), Some(user("id2", "new@x")));
        changes.set("id200".into(), Some(user("id200", "u200@x")));
        let c = compact(dir.path(), &old, &changes, old.header.clone()).unwrap();
        c.commit().unwrap();
        assert_eq!(files(dir.path()).len(), 3, "links, members, index: {:?}", files(dir.path()));
        let new = Opened::open(dir.path(), &key()).unwrap();
        assert_ne!(new.header.generation, old.header.generation);
        assert_eq!((new.header.log, new.members(), new.log().len()), (None, 100, 0));
        assert_eq!(new.lookup("id1").unwrap(), None);
        assert_eq!(new.lookup("id2").unwrap(), Some(user("id2", "new@x")));
        assert_eq!(new.with_mail(b"u200@x", &Overlay::default()).unwrap(), [user("id200", "u200@x")]);
        assert_eq!(new.user_counts().users, 100);
    }

    #[test]
    fn table_entries_come_by_bucket_then_by_block() {
        // As a writer makes them: blocks in order, hashes at random (some repeated).
        for (n, hashes) in [(0, 1), (5, 1 << 24), (5000, 1 << 24), (5000, 16)] {
            let mut t = Table::default();
            let mut want = Vec::new();
            for i in 0..n {
                let h = fastrand::u32(..hashes);
                t.push(h, i / 64);
                want.push((u64::from(h) << BITS) | u64::from(i / 64));
            }
            let v = t.bucketed();
            let key = |e: &u64| (bucket_of(u32::try_from(e >> BITS).unwrap()), e & u64::from(MASK));
            assert!(v.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
            let (mut got, mut want) = (v, want);
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }
}
