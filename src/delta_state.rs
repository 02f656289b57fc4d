//! The delta state of one group fetch, on disk: where its delta rounds left off, when it
//! was last read in full, and its members with their raw attributes, so that a delta run
//! rebuilds exactly what a full read would. Per (authority, tenant, client, group, selected
//! attributes), in `<state_dir>/delta/`, mode 0600, each file written atomically:
//!
//! - `<digest>.links`, small JSON: the two delta links, the last full read, and which
//!   generation of member data is current. Moving a link rewrites only this file, and it is
//!   renamed into place last: it is the commit.
//! - `<digest>.<generation>.members`, gzip'd: one line of raw attributes per member, read
//!   and written as a stream (a run never holds it whole); written only when members change.
//! - `<digest>.<generation>.ids`: the members' ids as sorted 64-bit hashes, so that whether
//!   a user who changed is a member costs a binary search, not a read of every member.
//!
//! A state is opened once per run: the files stay open, so that a commit by another run
//! meanwhile (a new generation, the old one removed) cannot mix two versions.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::page::{MemberView, ObjectKind, TextRef};
use crate::write::{Staged, WriteError};

/// The format this build reads and writes; any other is read as no state (a full read).
/// 2: no `users_link_at` (links are never ordered by the local clock). 3: links apart from
/// the member data, and an index of ids.
pub const FORMAT: u32 = 3;
const MAGIC: &str = "usersync-delta-members";
/// The most a links file may hold (two links and a key: a few kilobytes).
const LINKS_CAP: u64 = 1 << 20;

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
    /// [`crate::entraidconf::EntraConf::isolated`]); absent for a shared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<String>,
}

impl Key {
    /// `<state_dir>/delta/<digest of the key>`: the state's files are named from it.
    #[must_use]
    pub fn stem(&self, state_dir: &Path) -> PathBuf {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        state_dir.join("delta").join(crate::ids::hex(&digest.as_ref()[..12]))
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

/// The member data of `generation` next to `links`: (members, ids).
fn data_paths(links: &Path, generation: u64) -> (PathBuf, PathBuf) {
    let stem = links.with_extension("");
    (with_suffix(&stem, &format!("{generation:016x}.members")), with_suffix(&stem, &format!("{generation:016x}.ids")))
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
    /// Which member data is current (`<stem>.<generation>.members` and `.ids`).
    pub generation: u64,
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
        crate::ids::is_object_id(&m.id).then(|| Self {
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

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split('\t');
        let id = f.next().filter(|i| crate::ids::is_object_id(i))?.to_owned();
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
    line.extend(id.iter().map(u8::to_ascii_lowercase));
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
        TextRef::Str(s) if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
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

/// A state, opened: its links read, its member data held open for the run.
#[derive(Debug)]
pub struct Opened {
    /// Where the rounds left off.
    pub header: Header,
    members: File,
    ids: File,
    links: PathBuf,
}

impl Opened {
    /// Opens the state of `key` in `state_dir`: its links file, then its current member
    /// data. Each file is opened as an output is: never through a symlink, never blocking
    /// (a FIFO is no state), and never a second name of another file where someone else
    /// controls the directory.
    pub fn open(state_dir: &Path, key: &Key) -> Result<Self, Unusable> {
        let links = key.path(state_dir);
        let bytes = crate::trust::read_capped(open_like_output(&links)?, LINKS_CAP)
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
        let (members, ids) = data_paths(&links, file.header.generation);
        let missing = |e: Unusable| match e {
            Unusable::Missing => Unusable::Corrupt("its member data is missing".into()),
            other => other,
        };
        let members = open_like_output(&members).map_err(missing)?;
        let ids = open_like_output(&ids).map_err(missing)?;
        Ok(Self { header: file.header, members, ids, links })
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
        let bytes = crate::trust::read_capped(file, 32).ok()?;
        let at: u64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
        (at >= self.header.full_at).then_some(at)
    }

    /// How many members it holds (by its index; 0 if that cannot be read).
    #[must_use]
    pub fn members(&self) -> u64 {
        self.ids.metadata().map_or(0, |m| m.len() / 8)
    }

    /// Whether any of `ids` (lower-cased) is a member, by the index: a hash collision may
    /// say yes for one that is not (the caller then reads the members), never no for one
    /// that is.
    pub fn has_any<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<bool, Unusable> {
        let corrupt = |e: io::Error| Unusable::Corrupt(format!("ids: {e}"));
        let len = self.ids.metadata().map_err(corrupt)?.len();
        if len % 8 != 0 {
            return Err(Unusable::Corrupt("ids: not a list of hashes".into()));
        }
        let n = len / 8;
        let at = |i: u64| -> Result<u64, Unusable> {
            let mut b = [0u8; 8];
            self.ids.read_exact_at(&mut b, i * 8).map_err(corrupt)?;
            Ok(u64::from_le_bytes(b))
        };
        for id in ids {
            let want = id_hash(id);
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match at(mid)?.cmp(&want) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Ok(true),
                }
            }
        }
        Ok(false)
    }

    /// Its members, as a stream.
    pub fn records(self) -> Result<Reader, Unusable> {
        let mut lines = BufReader::new(GzDecoder::new(BufReader::new(self.members))).lines();
        let magic = lines.next().transpose().map_err(|e| Unusable::Corrupt(e.to_string()))?.unwrap_or_default();
        if magic.strip_prefix(MAGIC).map(str::trim) != Some(&FORMAT.to_string()) {
            return Err(Unusable::Corrupt("not the member data of a state".into()));
        }
        Ok(Reader { header: self.header, lines, read: 0, ended: false })
    }
}

/// Opens `path` for reading as an output is opened (see [`Opened::open`]).
fn open_like_output(path: &Path) -> Result<File, Unusable> {
    let (file, trust) = match crate::judged::open(&crate::judged::absolute(path)) {
        Ok(opened) => opened,
        // No file, or no directory where `delta/` should be: no state.
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Err(Unusable::Missing)
        }
        Err(e) => return Err(Unusable::Corrupt(crate::resolve::explain(&e))),
    };
    match rustix::fs::fstat(&file) {
        Ok(st) if st.st_nlink > 1 && !trust.is_trusted() => {
            Err(Unusable::Corrupt(format!("it has {} hard links", st.st_nlink)))
        }
        Ok(_) => Ok(file),
        Err(e) => Err(Unusable::Corrupt(e.to_string())),
    }
}

/// A stable 64-bit hash of a member's id (FNV-1a: the same in every build and run).
#[must_use]
pub fn id_hash(id: &str) -> u64 {
    id_hash_bytes(id.as_bytes())
}

fn id_hash_bytes(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A state's members being read, one at a time.
pub struct Reader {
    /// Where the rounds left off.
    pub header: Header,
    lines: io::Lines<BufReader<GzDecoder<BufReader<File>>>>,
    read: u64,
    ended: bool,
}

impl Reader {
    /// The next record, `None` after the last; an error if the file is cut short (no end
    /// line, or another count than it holds) or mangled.
    pub fn next_record(&mut self) -> Result<Option<Record>, Unusable> {
        if self.ended {
            return Ok(None);
        }
        let corrupt = |m: &str| Err(Unusable::Corrupt(m.to_owned()));
        match self.lines.next() {
            None => corrupt("cut short"),
            Some(Err(e)) => Err(Unusable::Corrupt(e.to_string())),
            Some(Ok(l)) => match l.strip_prefix("end ") {
                Some(n) if n.parse() == Ok(self.read) && self.lines.next().is_none() => {
                    self.ended = true;
                    Ok(None)
                }
                Some(_) => corrupt("its end does not match its records"),
                None => {
                    self.read += 1;
                    Record::parse(&l).map(Some).ok_or_else(|| Unusable::Corrupt("a malformed record".into()))
                }
            },
        }
    }
}

/// A state that cannot be written costs no list (contract §9): said once, as a warning, and
/// the old state's links file is removed (where it can be) so that the next run reads the
/// group in full.
pub fn abandon(links: &Path, group: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(group, path = %links.display(), %error, "cannot write the delta state; the lists are written all the same, and the next run reads the group in full");
    if let Ok(t) = crate::write::Target::at(links) {
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
    /// Buffered in front as well: flate2 zero-fills its output buffer on every `write`,
    /// and a record is several small writes (measured: 65% of an unchanged run's CPU).
    gz: BufWriter<GzEncoder<BufWriter<File>>>,
    /// The line being made (one allocation for all of them).
    line: Vec<u8>,
    staged: Staged,
    ids: Vec<u64>,
    header: Header,
    links: PathBuf,
    replaces: Option<u64>,
}

impl Writer {
    /// Starts new member data for the state `header` describes, in `state_dir` (creating
    /// `<state_dir>/delta/`, mode 0700), as a new generation; `replaces` is the generation it
    /// takes over from, removed on commit.
    pub fn create(state_dir: &Path, mut header: Header, replaces: Option<u64>) -> Result<Self, WriteError> {
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
        header.generation = loop {
            let g = fastrand::u64(..);
            if Some(g) != replaces {
                break g;
            }
        };
        let (members, _) = data_paths(&links, header.generation);
        let mut staged = Staged::create(&members, 0o600)?;
        // Ages by the file system's clock (the new file's time), not the process's: one
        // shifted or stepped clock does not make every file old.
        if let Ok(now) = staged.file().metadata().and_then(|m| m.modified()) {
            clean_stale(&links, now);
        }
        let file = staged.file().try_clone().map_err(|e| fail("write", e))?;
        let mut gz = BufWriter::with_capacity(
            1 << 16,
            GzEncoder::new(BufWriter::with_capacity(1 << 16, file), flate2::Compression::fast()),
        );
        writeln!(gz, "{MAGIC} {FORMAT}").map_err(|e| fail("write", e))?;
        Ok(Self { gz, line: Vec::with_capacity(256), staged, ids: Vec::new(), header, links, replaces })
    }

    /// Adds a member.
    pub fn push(&mut self, r: &Record) -> Result<(), WriteError> {
        self.ids.push(id_hash(&r.id));
        self.line.clear();
        r.line_into(&mut self.line);
        self.gz.write_all(&self.line).map_err(|source| WriteError { path: self.links.clone(), action: "write", source })
    }

    /// Adds what a page says of a member, as [`Record::of`] and [`Writer::push`] would,
    /// without making the record (a full read writes a million of them); `false` for an
    /// object whose id is no object id (not kept).
    pub fn push_member(&mut self, m: &MemberView<'_>, phones: bool) -> Result<bool, WriteError> {
        if !crate::ids::is_object_id(&m.id) {
            return Ok(false);
        }
        let line = &mut self.line;
        line.clear();
        line_head(line, m.id.as_bytes(), m.kind, m.account_enabled);
        self.ids.push(id_hash_bytes(&line[..m.id.len()]));
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
        self.gz.write_all(line).map_err(|source| WriteError { path: self.links.clone(), action: "write", source })?;
        Ok(true)
    }

    /// Members added so far.
    #[must_use]
    pub fn members(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The state's links file, for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.links
    }

    /// Ends the member data: the new state, staged, ready to commit.
    pub fn finish(mut self) -> Result<Commit, WriteError> {
        let fail = |source| WriteError { path: self.links.clone(), action: "write", source };
        writeln!(self.gz, "end {}", self.ids.len()).map_err(fail)?;
        let gz = self.gz.into_inner().map_err(|e| fail(e.into_error()))?;
        let buf = gz.finish().map_err(fail)?;
        buf.into_inner().map_err(|e| fail(e.into_error()))?;
        self.ids.sort_unstable();
        self.ids.dedup();
        let (_, ids_path) = data_paths(&self.links, self.header.generation);
        let mut ids = Staged::create(&ids_path, 0o600)?;
        let bytes: Vec<u8> = self.ids.iter().flat_map(|h| h.to_le_bytes()).collect();
        ids.file().write_all(&bytes).map_err(fail)?;
        let links = stage_links(&self.links, &self.header)?;
        let replaced = self.replaces.map(|g| data_paths(&self.links, g));
        Ok(Commit {
            data: Some((self.staged, ids)),
            links,
            replaced,
            generation: self.header.generation,
            path: self.links,
            net_at: None,
        })
    }
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
/// file (the commit point), then removes the generation it replaced. Dropped uncommitted,
/// it leaves nothing behind.
pub struct Commit {
    data: Option<(Staged, Staged)>,
    links: Staged,
    replaced: Option<(PathBuf, PathBuf)>,
    generation: u64,
    /// The links file it replaces.
    path: PathBuf,
    /// For a safety-net read: when it was read, noted if it is not committed.
    net_at: Option<u64>,
}

impl Commit {
    /// The state's links moved, its members did not: only the links file is rewritten.
    pub fn links_only(state_dir: &Path, header: &Header) -> Result<Self, WriteError> {
        let path = header.key.path(state_dir);
        let links = stage_links(&path, header)?;
        Ok(Self { data: None, links, replaced: None, generation: header.generation, path, net_at: None })
    }

    /// The generation of member data the state names.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
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
            if let Err(e) = crate::write::write_file(&path, 0o600, now.to_string().as_bytes()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot note the safety-net read that was not committed; the next run reads in full again");
            }
        }
    }

    /// Puts the new state in place.
    pub fn commit(self) -> Result<(), WriteError> {
        if let Some((members, ids)) = self.data {
            members.commit()?;
            ids.commit()?;
        }
        self.links.commit()?;
        // Committed: a safety net noted as not committed is due again when the last full
        // read is old (a no-op, writing nothing, when there is no note).
        if let Ok(t) = crate::write::Target::at(&net_path(&self.path)) {
            let _ = t.remove();
        }
        if let Some((members, ids)) = self.replaced {
            for p in [members, ids] {
                if let Ok(t) = crate::write::Target::at(&p) {
                    let _ = t.remove();
                }
            }
        }
        Ok(())
    }
}

/// Removes what killed runs left next to the state at `links`: temp files, and member data
/// of a generation the links file does not name, once they are a day old (no lock spans
/// the runs of different instances: a younger file may be another run's, being written).
fn clean_stale(links: &Path, now: std::time::SystemTime) {
    let current = open_like_output(links)
        .ok()
        .and_then(|f| crate::trust::read_capped(f, LINKS_CAP).ok())
        .and_then(|b| serde_json::from_slice::<LinksFile>(&b).ok())
        .map(|f| f.header.generation);
    let (Some(dir), Some(stem)) = (links.parent(), links.file_stem().and_then(|s| s.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Names are ours, in exactly this case: no case-insensitive match.
        let ours = name.starts_with(&format!(".usersync-{stem}.")) && name.rsplit('.').next() == Some("tmp");
        let orphan = name.strip_prefix(&format!("{stem}.")).is_some_and(|rest| {
            let mut parts = rest.split('.');
            let gen = parts.next().and_then(|g| u64::from_str_radix(g, 16).ok());
            matches!(parts.next(), Some("members" | "ids")) && parts.next().is_none() && gen.is_some() && gen != current
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
    use crate::page::parse;

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
        Header { key: key(), group_link: "gl".into(), users_link: "ul".into(), full_at: 2, generation: 0 }
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
        assert!(opened.has_any(["zz", "id-1"]).unwrap());
        assert!(!opened.has_any(["zz", "6"]).unwrap());
        let mut r = opened.records().unwrap();
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            back.push(crate::page::Member::from(rec.view()));
        }
        let mut want = page.members.clone();
        want[0].id = "id-1".into();
        // An undecodable value is kept for the log, made compact (one line).
        want[1].mobile_phone = Some(crate::page::Text::Undecodable(r#"{"x":[1,2]}"#.into()));
        // One that does not parse either: its line break and tab made spaces.
        want[4].mail = Some(crate::page::Text::Undecodable(r#"{"a":  "\ud800"}"#.into()));
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
            let mut by_member = Writer::create(b.path(), header(), None).unwrap();
            crate::page::visit(body, |m| {
                if let Some(r) = Record::of(&m, phones) {
                    by_record.push(&r).unwrap();
                }
                assert_eq!(by_member.push_member(&m, phones).unwrap(), m.id.as_ref() != "bad id");
            })
            .unwrap();
            let (ga, gb) = (by_record.header.generation, by_member.header.generation);
            by_record.finish().unwrap().commit().unwrap();
            by_member.finish().unwrap().commit().unwrap();
            let read = |dir: &Path, g: u64| {
                let (members, ids) = data_paths(&key().path(dir), g);
                let mut text = String::new();
                io::Read::read_to_string(&mut GzDecoder::new(File::open(members).unwrap()), &mut text).unwrap();
                (text, std::fs::read(ids).unwrap())
            };
            let (want, got) = (read(a.path(), ga), read(b.path(), gb));
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
        let w = Writer::create(t.path(), held.header.clone(), Some(held.header.generation)).unwrap();
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
        assert!(read_all(b"not gzip at all").is_err());
        std::fs::write(key().path(t.path()), br#"{"format":99}"#).unwrap();
        assert_eq!(Opened::open(t.path(), &key()).unwrap_err(), Unusable::Version("99".into()));
    }
}
