//! The delta state of one group fetch, on disk: where its delta rounds left off, when it
//! was last read in full, and its members with their raw attributes, so that a delta run
//! rebuilds exactly what a full read would. One gzip'd file per (authority, tenant, client,
//! group, selected attributes) in `<state_dir>/delta/`, mode 0600, written atomically, and
//! read and written as a stream: a run never holds it whole.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::page::{MemberView, ObjectKind, TextRef};
use crate::write::{Staged, WriteError};

/// The format this build reads and writes; any other is read as no state (a full read).
/// 2: no `users_link_at` (links are never ordered by the local clock).
pub const FORMAT: u32 = 2;
const MAGIC: &str = "usersync-delta";

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
    /// `<state_dir>/delta/<digest of the key>.state`
    #[must_use]
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let hex = crate::ids::hex(&digest.as_ref()[..12]);
        state_dir.join("delta").join(format!("{hex}.state"))
    }
}

/// Where the rounds left off, and when the group was last read in full.
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

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let enabled = match self.enabled {
            Some(true) => "1",
            Some(false) => "0",
            None => "-",
        };
        let (mail, phone) = (self.mail.as_deref().unwrap_or("-"), self.phone.as_deref().unwrap_or("-"));
        writeln!(w, "{}\t{}\t{enabled}\t{mail}\t{phone}", self.id, kind_char(self.kind))
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

/// A value as compact JSON text: one line, no tab.
fn json(t: &TextRef<'_>) -> String {
    match t {
        TextRef::Str(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
        // A number or object: made compact; a string that does not decode stays as it was
        // (JSON strings hold no raw control characters).
        TextRef::Undecodable(raw) => {
            serde_json::from_str::<serde_json::Value>(raw).map_or_else(|_| (*raw).to_owned(), |v| v.to_string())
        }
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

/// A state file being read: its header, then its records as a stream.
pub struct Reader {
    /// Where the rounds left off.
    pub header: Header,
    lines: io::Lines<BufReader<GzDecoder<BufReader<File>>>>,
    read: u64,
    ended: bool,
}

impl Reader {
    /// Opens the state at `path` and reads its header; the state of `key` only. The file is
    /// opened as an output is: never through a symlink, never blocking (a FIFO is no
    /// state), and never a second name of another file.
    pub fn open(path: &Path, key: &Key) -> Result<Self, Unusable> {
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
                return Err(Unusable::Corrupt(format!("it has {} hard links", st.st_nlink)));
            }
            Ok(_) => {}
            Err(e) => return Err(Unusable::Corrupt(e.to_string())),
        }
        let mut lines = BufReader::new(GzDecoder::new(BufReader::new(file))).lines();
        let mut line = || lines.next().transpose().map_err(|e| Unusable::Corrupt(e.to_string()));
        let magic = line()?.unwrap_or_default();
        let version =
            magic.strip_prefix(MAGIC).map(str::trim).ok_or_else(|| Unusable::Corrupt("not a delta state".into()))?;
        if version != FORMAT.to_string() {
            return Err(Unusable::Version(version.chars().take(16).collect()));
        }
        let header: Header = serde_json::from_str(&line()?.unwrap_or_default())
            .map_err(|e| Unusable::Corrupt(format!("header: {e}")))?;
        if header.key != *key {
            return Err(Unusable::Corrupt("it belongs to another query".into()));
        }
        Ok(Self { header, lines, read: 0, ended: false })
    }

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
/// the old state is removed (where it can be) so that the next run reads the group in full.
pub fn abandon(path: &Path, group: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(group, path = %path.display(), %error, "cannot write the delta state; the lists are written all the same, and the next run reads the group in full");
    if let Ok(t) = crate::write::Target::at(path) {
        // Nothing more to say if it is gone already, or cannot go (a read-only state_dir).
        let _ = t.remove();
    }
}

/// How old a state's temp file must be to be taken for a killed run's: older than any run
/// (`[http] deadline_seconds` has no upper bound, but an hourly tool never runs for a day).
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A new state being written, staged next to the old one until a commit puts it in place.
pub struct Writer {
    /// Buffered in front as well: flate2 zero-fills its output buffer on every `write`,
    /// and a record is several small writes (measured: 65% of an unchanged run's CPU).
    gz: BufWriter<GzEncoder<BufWriter<File>>>,
    staged: Staged,
    members: u64,
    path: PathBuf,
}

impl Writer {
    /// Starts the state at `path` (creating `<state_dir>/delta/`, mode 0700) with `header`.
    pub fn create(path: &Path, header: &Header) -> Result<Self, WriteError> {
        let fail = |action, source| WriteError { path: path.to_owned(), action, source };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("create the directory of", e))?;
        }
        // A run killed while writing a state leaves its temp file. Runs of other instances
        // may be writing the same state now (no lock spans them), but none for a day.
        if let Ok(t) = crate::write::Target::at(path) {
            match t.clean_stale_temps(STALE_TEMP_AGE) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(path = %path.display(), removed = n, "removed temp files a killed run left behind");
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp files"),
            }
        }
        let mut staged = Staged::create(path, 0o600)?;
        let file = staged.file().try_clone().map_err(|e| fail("write", e))?;
        let mut gz = BufWriter::with_capacity(
            1 << 16,
            GzEncoder::new(BufWriter::with_capacity(1 << 16, file), flate2::Compression::fast()),
        );
        let head = serde_json::to_string(header).map_err(|e| fail("write", io::Error::other(e)))?;
        writeln!(gz, "{MAGIC} {FORMAT}\n{head}").map_err(|e| fail("write", e))?;
        Ok(Self { gz, staged, members: 0, path: path.to_owned() })
    }

    /// Adds a member.
    pub fn push(&mut self, r: &Record) -> Result<(), WriteError> {
        self.members += 1;
        r.write_to(&mut self.gz).map_err(|source| WriteError { path: self.path.clone(), action: "write", source })
    }

    /// Members added so far.
    #[must_use]
    pub fn members(&self) -> u64 {
        self.members
    }

    /// The state's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends the file: the staged state, ready to commit.
    pub fn finish(mut self) -> Result<Staged, WriteError> {
        let fail = |source| WriteError { path: self.path.clone(), action: "write", source };
        writeln!(self.gz, "end {}", self.members).map_err(fail)?;
        let gz = self.gz.into_inner().map_err(|e| fail(e.into_error()))?;
        let buf = gz.finish().map_err(fail)?;
        buf.into_inner().map_err(|e| fail(e.into_error()))?;
        Ok(self.staged)
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
        Header { key: key(), group_link: "gl".into(), users_link: "ul".into(), full_at: 2 }
    }

    #[test]
    fn a_temp_file_a_killed_run_left_goes_once_it_is_a_day_old() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("abc.state");
        let (old, young) = (t.path().join(".usersync-abc.state.1.tmp"), t.path().join(".usersync-abc.state.2.tmp"));
        // Both ages are set here, by this process's clock (which tests/clock-shift moves),
        // not left to the file system's.
        let now = std::time::SystemTime::now();
        let a_day_ago = now - std::time::Duration::from_secs(90_000);
        for (p, age) in [(&old, a_day_ago), (&young, now)] {
            File::create(p).unwrap().set_modified(age).unwrap();
        }
        let w = Writer::create(&path, &header()).unwrap();
        assert!(!old.exists(), "a day old: a killed run's");
        assert!(young.exists(), "maybe another run's, writing now");
        w.finish().unwrap().commit().unwrap();
    }

    #[test]
    fn members_round_trip_exactly_as_a_page_gave_them() {
        let page = parse(
            br##"{"value":[
            {"@odata.type":"#microsoft.graph.user","id":"ID-1","mail":"A\tb@x.com","mobilePhone":"+44 (0)20","accountEnabled":true},
            {"@odata.type":"#microsoft.graph.user","id":"2","mail":"a\ud800@x","mobilePhone":{"x":[1, 2]}},
            {"@odata.type":"#microsoft.graph.group","id":"3"},
            {"id":"4","mail":"n@x","accountEnabled":false}]}"##,
        )
        .unwrap();
        let t = tempfile::tempdir().unwrap();
        let path = key().path(t.path());
        let mut w = Writer::create(&path, &header()).unwrap();
        for m in &page.members {
            w.push(&Record::of(&MemberView::from(m), true).unwrap()).unwrap();
        }
        w.finish().unwrap().commit().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let mut r = Reader::open(&path, &key()).unwrap();
        assert_eq!(r.header, header());
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            back.push(crate::page::Member::from(rec.view()));
        }
        let mut want = page.members.clone();
        want[0].id = "id-1".into();
        // An undecodable value is kept for the log, made compact (one line).
        want[1].mobile_phone = Some(crate::page::Text::Undecodable(r#"{"x":[1,2]}"#.into()));
        assert_eq!(back, want);
        assert!(matches!(Reader::open(&path, &Key { group: "other".into(), ..key() }), Err(Unusable::Corrupt(_))));
        assert!(matches!(Reader::open(&t.path().join("none"), &key()), Err(Unusable::Missing)));
    }

    #[test]
    fn a_cut_short_or_mangled_state_is_corrupt_and_another_version_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let path = key().path(t.path());
        let mut w = Writer::create(&path, &header()).unwrap();
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
        let whole = std::fs::read(&path).unwrap();
        let read_all = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let mut r = Reader::open(&path, &key())?;
            while r.next_record()?.is_some() {}
            Ok::<_, Unusable>(())
        };
        assert_eq!(read_all(&whole), Ok(()));
        assert!(read_all(&whole[..whole.len() - 10]).is_err(), "cut short");
        assert!(read_all(b"not gzip at all").is_err());
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(gz, "{MAGIC} 99\n{{}}").unwrap();
        assert_eq!(read_all(&gz.finish().unwrap()), Err(Unusable::Version("99".into())));
    }
}
