//! Test support: a temporary server root, the Graph simulator, and a builder
//! that runs the real `usersync` binary and checks what it did.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use serde_json::{json, Value};
pub use usersync_sim::{
    aad_error, device, group, user, Directory, Fault, PageFault, Sim, SENDGRID_KEY, SENDGRID_READ_ONLY_KEY,
};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT: &str = "66666666-7777-8888-9999-000000000000";
pub const SECRET: &str = "sim-Secret~Value.0f9Q";
pub const STAFF: &str = "02bd9fd6-8f93-4758-87c3-1fb73740a315";
pub const SALES: &str = "0b0f1c3e-0000-4000-8000-000000000002";
pub const NESTED: &str = "0b0f1c3e-0000-4000-8000-000000000003";

/// The simulated directory: our app, no groups yet.
fn directory() -> Directory {
    Directory {
        apps: vec![usersync_sim::App {
            tenant: TENANT.into(),
            client_id: CLIENT.into(),
            client_secret: SECRET.into(),
            limited: false,
            certificate: None,
        }],
        ..Directory::default()
    }
}

/// What one run printed and how it ended.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

thread_local! {
    /// Runs so far of the test on this thread (each test has a thread of its own).
    static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// 1 for the test's first run, 2 for its second, whatever `Run` each came from.
fn next_run_of_this_test() -> usize {
    RUNS.with(|r| {
        r.set(r.get() + 1);
        r.get()
    })
}

/// What a run must print on stderr, after [`Run::placeholders`].
#[derive(Clone, Debug)]
enum Stderr {
    /// Exactly what `tests/fixtures/stderr/<test>.<n>.stderr` holds for the test's `n`th
    /// run (`UPDATE_GOLDEN=1` writes it, for review).
    Golden,
    /// Exactly this.
    Exactly(String),
    /// Whatever it is: the test says so (its stderr is not deterministic: retry jitter,
    /// random ports, the order of concurrent fetches), and checks what matters itself.
    Ignored,
}

/// A server root in a temp dir, a simulator, and the command to run. Every run checks the
/// exit status (0 unless told otherwise), stderr (exactly, against the test's golden file
/// unless given or explicitly ignored) and the files expected; expectations stay for the
/// next run until changed.
#[must_use]
pub struct Run {
    dir: tempfile::TempDir,
    pub sim: Sim,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// A program (and its arguments) that runs usersync, such as `setpriv …`.
    wrapper: Vec<String>,
    expect_exit: i32,
    stderr: Stderr,
    expect_files: std::collections::BTreeMap<String, Option<String>>,
}

impl Run {
    /// An empty server root, a default global config and a simulator knowing our app.
    pub fn new() -> Self {
        Self::with(Sim::start(directory()).expect("simulator starts"))
            .global("[http]\ntimeout_seconds = 10\nmax_retries = 3\n")
    }

    /// The same with an HTTPS simulator (`https://localhost:PORT`) whose CA is in
    /// `<tmp>/ca.pem`, named by `[http] ca_bundle` in the global config.
    pub fn new_tls() -> Self {
        let pki = usersync_sim::TestPki::new().expect("test CA");
        let r = Self::with(Sim::start_tls(directory(), &pki).expect("simulator starts"));
        let ca = r.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).expect("write ca.pem");
        r.global(&format!("[http]\ntimeout_seconds = 10\nmax_retries = 0\nca_bundle = \"{}\"\n", ca.display()))
    }

    fn with(sim: Sim) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("server")).expect("server root");
        Self {
            dir,
            sim,
            args: vec![],
            envs: vec![],
            wrapper: vec![],
            expect_exit: 0,
            stderr: Stderr::Golden,
            expect_files: std::collections::BTreeMap::new(),
        }
    }

    /// The temp dir holding `server/` and `usersync.toml`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<tmp>/server`
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// Replaces the global config; `state_dir` is the temp dir's `state/` unless `toml` sets it.
    pub fn global(self, toml: &str) -> Self {
        let mut text = String::new();
        if !toml.contains("state_dir") {
            let _ = writeln!(text, "state_dir = \"{}\"", self.dir.path().join("state").display());
        }
        text.push_str(toml);
        std::fs::write(self.dir.path().join("usersync.toml"), text).expect("write usersync.toml");
        self
    }

    /// Sets a group's direct members in the simulator.
    pub fn group(self, id: &str, members: Vec<Value>) -> Self {
        self.sim.state().directory.groups.insert(id.into(), members);
        self
    }

    /// Writes `<instance>/config/entraid/<name>.entraidconf`; credentials and the
    /// simulator's endpoints are added unless `body` sets them.
    pub fn conf(self, instance: &str, name: &str, body: &str) -> Self {
        self.conf_with(instance, name, body, true)
    }

    /// As [`Run::conf`], but without the simulator's endpoints (what an untrusted config
    /// must do: it reaches Microsoft's hosts, or the simulator through `Proxy::redirecting`).
    pub fn conf_no_endpoints(self, instance: &str, name: &str, body: &str) -> Self {
        self.conf_with(instance, name, body, false)
    }

    fn conf_with(self, instance: &str, name: &str, body: &str, endpoints: bool) -> Self {
        let mut text = String::new();
        let sim = if endpoints {
            vec![("authority_host", self.sim.url()), ("graph_endpoint", self.sim.url())]
        } else {
            vec![]
        };
        for (k, v) in
            [("tenant_id", TENANT.to_owned()), ("client_id", CLIENT.to_owned()), ("client_secret", SECRET.to_owned())]
                .into_iter()
                .chain(sim)
        {
            let set = body.lines().any(|l| l.split('=').next().unwrap_or_default().trim() == k);
            let credential_keys = [
                "client_secret",
                "client_secret_file",
                "client_secret_credential",
                "client_certificate",
                "client_certificate_credential",
            ];
            let secret_set = k == "client_secret"
                && body.lines().any(|l| credential_keys.contains(&l.split('=').next().unwrap_or_default().trim()));
            if !set && !secret_set {
                let _ = writeln!(text, "{k} = \"{v}\"");
            }
        }
        text.push_str(body);
        let rel = format!("{instance}/config/entraid/{name}.entraidconf");
        let r = self.file(&rel, &text);
        // Configs holding a secret are private, as an admin would keep them.
        std::fs::set_permissions(r.root().join(rel), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        r
    }

    /// Writes a file under the server root, creating directories.
    pub fn file(self, rel: &str, content: &str) -> Self {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
        self
    }

    /// Reads a file under the server root.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root().join(rel)).ok()
    }

    /// Arguments for the next run (after `-c` and `--server-root`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// An environment variable for the next run (the environment is otherwise scrubbed).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Runs from now on go through `program args… usersync …` (e.g. `setpriv` with the
    /// unit's capability bounding set).
    pub fn wrapped_in(mut self, program: &[&str]) -> Self {
        self.wrapper = program.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Runs from now on must exit with `code` (0 until this is called).
    pub fn expect_exit(mut self, code: i32) -> Self {
        self.expect_exit = code;
        self
    }

    /// Runs from now on must print exactly `text` on stderr (see [`Run::placeholders`]),
    /// instead of what the test's golden files hold.
    pub fn expect_stderr(mut self, text: &str) -> Self {
        self.stderr = Stderr::Exactly(text.to_owned());
        self
    }

    /// Runs from now on may print anything on stderr: the test checks what matters itself.
    pub fn ignore_stderr(mut self) -> Self {
        self.stderr = Stderr::Ignored;
        self
    }

    /// After each run from now on, `rel` must hold exactly `content` (`None`: must not
    /// exist); this replaces what was expected of `rel` before.
    pub fn expect_file(mut self, rel: &str, content: Option<&str>) -> Self {
        self.expect_files.insert(rel.into(), content.map(Into::into));
        self
    }

    /// Stderr with what differs from run to run put as `{root}` (the server root), `{tmp}`
    /// (the temp dir), `{sim}` (the simulator's URL), `{time}` (a log line's timestamp),
    /// `{host}` (this host's name), `{version}` (usersync's version and commit), `{port}`
    /// (a loopback server's ephemeral port) and `{ms}` (a backoff's jittered wait).
    pub fn placeholders(&self, stderr: &str) -> String {
        static TIME: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ").expect("regex")
        });
        static PORT: std::sync::LazyLock<regex::Regex> =
            std::sync::LazyLock::new(|| regex::Regex::new(r"(localhost|127\.0\.0\.1):\d+").expect("regex"));
        static WAIT: std::sync::LazyLock<regex::Regex> =
            std::sync::LazyLock::new(|| regex::Regex::new(r"wait_ms=\d+").expect("regex"));
        let s = stderr
            .replace(&self.root().display().to_string(), "{root}")
            .replace(&self.path().display().to_string(), "{tmp}")
            .replace(&self.sim.url(), "{sim}")
            .replace(usersync::cli::VERSION, "{version}")
            .replace(&format!(" {}: ", usersync::run::alert::hostname()), " {host}: ");
        let s = TIME.replace_all(&s, "{time} ");
        let s = PORT.replace_all(&s, "$1:{port}");
        WAIT.replace_all(&s, "wait_ms={ms}").into_owned()
    }

    /// The command line the next run uses.
    pub fn command(&self) -> Command {
        let bin = env!("CARGO_BIN_EXE_usersync");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("-c")
            .arg(self.dir.path().join("usersync.toml"))
            .arg("--server-root")
            .arg(self.root())
            .args(&self.args);
        // The clock-shifted run (tests/clock-shift) shifts usersync's clock too.
        for (k, v) in std::env::vars().filter(|(k, _)| k == "LD_PRELOAD" || k.starts_with("FAKETIME")) {
            cmd.env(k, v);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the binary on a pseudo-terminal (util-linux `script`), as an admin at a shell
    /// would: stdout and stderr are the terminal. Checks the exit code and the files, and
    /// returns everything the terminal received, escape sequences and all.
    pub fn run_in_terminal(&mut self) -> String {
        let cmd = self.command();
        let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        let mut line = quote(cmd.get_program());
        for a in cmd.get_args() {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let mut script = Command::new("script");
        script.env_clear().args(["-q", "-f", "-e", "-c", &line, "/dev/null"]);
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                script.env(k, v);
            }
        }
        let out =
            script.env("TERM", "xterm-256color").stdin(std::process::Stdio::null()).output().expect("script runs");
        let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(self.expect_exit), "exit code\n--- terminal\n{transcript}");
        for (rel, want) in &self.expect_files {
            assert_eq!(self.read(rel), *want, "content of {rel}\n--- terminal\n{transcript}");
        }
        transcript
    }

    /// Runs the binary, checks the expectations (then forgets them), returns what it printed.
    pub fn run(&mut self) -> Output {
        self.run_within(std::time::Duration::from_secs(300))
    }

    /// As [`Run::run`]; the run must end within `limit` (it is killed and the test fails
    /// otherwise), so that a run that blocks cannot hang the tests.
    pub fn run_within(&mut self, limit: std::time::Duration) -> Output {
        let mut child = self
            .command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("usersync runs");
        let (stdout, stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = r.read_to_end(&mut b);
                b
            })
        };
        let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
        let ended = usersync_sim::wait_for(limit, || child.try_wait().is_ok_and(|s| s.is_some()));
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().expect("usersync ends");
        assert!(ended, "usersync did not end within {limit:?}");
        let out = std::process::Output {
            status,
            stdout: stdout.join().expect("stdout read"),
            stderr: stderr.join().expect("stderr read"),
        };
        let o = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(o.code, self.expect_exit, "exit code\n--- stdout\n{}\n--- stderr\n{}", o.stdout, o.stderr);
        let got = self.placeholders(&o.stderr);
        match &self.stderr {
            Stderr::Golden => {
                let test = std::thread::current().name().unwrap_or("unnamed").replace("::", "/");
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/stderr")
                    .join(format!("{test}.{}.stderr", next_run_of_this_test()));
                if std::env::var_os("UPDATE_GOLDEN").is_some() {
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&path, &got).expect("write the golden file");
                }
                let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                    panic!("{} is missing: run with UPDATE_GOLDEN=1 and review it\n--- stderr\n{got}", path.display())
                });
                assert_eq!(got, want, "stderr differs from {}\n--- stdout\n{}", path.display(), o.stdout);
            }
            Stderr::Exactly(want) => assert_eq!(got, *want, "stderr\n--- stdout\n{}", o.stdout),
            Stderr::Ignored => {}
        }
        for (rel, want) in &self.expect_files {
            assert_eq!(self.read(rel), *want, "content of {rel}\n--- stdout\n{}\n--- stderr\n{}", o.stdout, o.stderr);
        }
        o
    }

    /// The next Graph request (a members page or a delta round's) answers `status` once
    /// (no `Retry-After`).
    pub fn fail_once(&self, status: u16) {
        self.sim.state().graph_faults.push(Fault::Status { status, retry_after: None, body: String::new() });
    }

    /// Members requests the simulator saw, in order.
    pub fn member_requests(&self) -> Vec<usersync_sim::Request> {
        let members =
            |r: &usersync_sim::Request| r.path.ends_with("/members") || r.path.ends_with("/transitiveMembers");
        self.sim.requests().into_iter().filter(|r| r.method == "GET" && members(r)).collect()
    }

    /// Delta and lookup requests the simulator saw (`groups/delta`, `users/delta`,
    /// `getByIds`, `users?$filter`), in order.
    pub fn delta_requests(&self) -> Vec<usersync_sim::Request> {
        let delta = |r: &usersync_sim::Request| {
            r.path.ends_with("/delta") || r.path.ends_with("/getByIds") || r.path == "/v1.0/users"
        };
        self.sim.requests().into_iter().filter(delta).collect()
    }

    /// Token requests the simulator saw.
    pub fn token_requests(&self) -> usize {
        self.sim.requests().iter().filter(|r| r.path.ends_with("/oauth2/v2.0/token")).count()
    }
}

pub const SENDERS: &str = "gw/config/allowed_senders_ldap.txt";
pub const GSM: &str = "gw/config/gsm_list.txt";
pub const RULES: &str = "gw/config/gsm_auth_auto.txt";

/// Alice (with a phone), Bob (disabled), a user without mail, Carol (no phone), a device.
pub fn staff_members() -> Vec<Value> {
    vec![
        user("u1", Some("Alice@Example.com"), Some("+44 (0)20 7946 0958"), true),
        user("u2", Some("bob@example.com"), Some("040-123 1234"), false),
        user("u3", None, Some("+358401111111"), true),
        user("u4", Some("carol@example.com"), None, true),
        device("d1"),
    ]
}

/// One instance `gw` with one config `staff` feeding `allowed_senders` from `staff_members()`.
pub fn one_conf() -> Run {
    Run::new().group(STAFF, staff_members()).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
}

/// `n` enabled users `u0@example.com` … with phones.
pub fn users(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            user(&format!("id-{i:05}"), Some(&format!("u{i:05}@Example.com")), Some(&format!("+358 40 {i:07}")), true)
        })
        .collect()
}

/// The lines `u00000@example.com\n…` that `users(n)` gives in `allowed_senders`.
pub fn sender_lines(range: std::ops::Range<usize>) -> String {
    range.fold(String::new(), |mut s, i| {
        let _ = writeln!(s, "u{i:05}@example.com");
        s
    })
}

/// The SMTP test server (`tests/smtp/server.py`, aiosmtpd), killed on drop.
pub struct Smtp {
    child: std::process::Child,
    pub port: u16,
    out: tempfile::TempDir,
}

impl Smtp {
    /// Starts it with extra arguments (`--tls starttls --cert … --user …`).
    pub fn start(args: &[&str]) -> Self {
        let out = tempfile::tempdir().expect("tempdir");
        let port_file = out.path().join("port");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--out")
            .arg(out.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs tests/smtp/server.py (bash tests/setup)");
        let mut s = Self { child, port: 0, out };
        let ready = usersync_sim::wait_for(std::time::Duration::from_secs(15), || port_file.exists());
        assert!(ready, "the SMTP test server did not start; is aiosmtpd installed (bash tests/setup)?");
        s.port = std::fs::read_to_string(&port_file).expect("port").trim().parse().expect("a port");
        s
    }

    /// The messages received so far: (raw message, envelope JSON).
    pub fn messages(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(eml) = std::fs::read_to_string(self.out.path().join(format!("{n}.eml"))) else { break };
            let meta = std::fs::read_to_string(self.out.path().join(format!("{n}.json"))).unwrap_or_default();
            out.push((eml, serde_json::from_str(&meta).unwrap_or(Value::Null)));
        }
        out
    }
}

impl Smtp {
    /// Message `n` (from 1) as a strict MIME reader sees it (`tests/smtp/mime_check.py`):
    /// its MIME headers and decoded body; the test fails on any defect.
    pub fn parsed(&self, n: usize) -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/mime_check.py");
        let out = Command::new("python3").arg(script).arg(self.out.path().join(format!("{n}.eml"))).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "message {n} is not valid MIME: {err}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives `path` (not what a symlink points to) to `nobody`: a file the gateway's
/// internet-facing account could have written.
pub fn give_away(path: &Path) {
    std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
}

/// The uid and gid of `nobody` on Debian.
pub const NOBODY: u32 = 65534;

/// Whether this test runs as root, which it needs to give files away; says why if not.
pub fn as_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: this test must run as root (CI does) to chown the attacker's files to nobody");
    }
    root
}

/// A throwaway CA with a `localhost` certificate, written as `ca.pem`, `cert.pem`, `key.pem` in `dir`.
pub fn write_pki(dir: &Path) -> usersync_sim::TestPki {
    let pki = usersync_sim::TestPki::new().expect("test CA");
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).expect("ca.pem");
    std::fs::write(dir.join("cert.pem"), &pki.cert_pem).expect("cert.pem");
    std::fs::write(dir.join("key.pem"), &pki.key_pem).expect("key.pem");
    pki
}
