//! Fault injection: throttling, server errors, mangled answers, stalls,
//! deadlines, kill -9 mid-write, disk faults and concurrent runs. Each test
//! checks the exit code, the message and the bytes of the output files.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

fn staff(n: usize) -> Run {
    Run::new().group(STAFF, users(n)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
}

fn status(status: u16, retry_after: Option<&str>) -> Fault {
    Fault::Status { status, retry_after: retry_after.map(Into::into), body: String::new() }
}

#[test]
fn a_429_storm_on_every_second_page_completes_and_never_retries_early() {
    let mut r = staff(13).expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..13)));
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        for page in [1, 3, 5] {
            s.page_faults.push(PageFault { page, times: 2, fault: status(429, Some("0.3")) });
        }
    }
    r.run();
    let s = r.sim.state();
    assert_eq!(s.early_retries, 0, "a request came before its Retry-After");
    assert_eq!(s.requests.iter().filter(|q| q.status == 429).count(), 6);
}

#[test]
fn server_error_bursts_shorter_than_max_retries_recover() {
    let mut r =
        staff(7).global("[http]\nmax_retries = 3\n").expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..7)));
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        s.page_faults.push(PageFault { page: 0, times: 3, fault: status(503, Some("0")) });
        s.page_faults.push(PageFault { page: 2, times: 3, fault: status(504, Some("0")) });
    }
    r.run();
    assert_eq!(r.member_requests().len(), 4 + 6);
}

#[test]
fn mangled_answers_fail_the_instance_naming_instance_config_and_url() {
    let truncated = r##"{"@odata.context":"x","value":[{"@odata.type":"#microsoft.graph.user","id":"1","mail":"a@x.c"##;
    let cases: [(&str, Fault, &str); 5] = [
        ("truncated JSON", Fault::Body(truncated.into()), "EOF while parsing"),
        ("no value array", Fault::Body(r#"{"@odata.context":"x","values":[]}"#.into()), "missing field `value`"),
        ("an HTML error page", Fault::Body("<html><body>Proxy error</body></html>".into()), "expected value"),
        (
            "a nextLink to another host",
            Fault::Body(r#"{"value":[],"@odata.nextLink":"https://evil.example/v1.0/x"}"#.into()),
            "is not on",
        ),
        ("a page loop", Fault::LoopTo(1), "page loop"),
    ];
    for (what, fault, detail) in cases {
        let mut r =
            staff(7).file(SENDERS, "old@example.com\n").expect_exit(1).expect_file(SENDERS, Some("old@example.com\n"));
        {
            let mut s = r.sim.state();
            s.page_size = 2;
            s.page_faults.push(PageFault { page: 2, times: 1, fault });
        }
        let out = r.run();
        let conf = r.root().join("gw/config/entraid/staff.entraidconf");
        let url = format!("{}/v1.0/groups/{STAFF}/members?", r.sim.url());
        assert!(
            out.stderr.contains(&format!("error: instance `gw`, config {}: ", conf.display())),
            "{what}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(&url), "{what}: no URL in {}", out.stderr);
        assert!(out.stderr.contains(detail), "{what}: {}", out.stderr);
        assert!(out.stderr.contains("hint:"), "{what}: {}", out.stderr);
    }
}

#[test]
fn a_connection_stalled_past_the_timeout_is_retried() {
    let mut r = staff(5)
        .global("[http]\ntimeout_seconds = 1\nmax_retries = 2\n")
        .expect_exit(0)
        .expect_file(SENDERS, Some(&sender_lines(0..5)));
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        s.page_faults.push(PageFault { page: 1, times: 1, fault: Fault::Stall(Duration::from_secs(3)) });
    }
    let out = r.run();
    assert!(out.stderr.contains("retrying") && out.stderr.contains("timed out"), "{}", out.stderr);
}

#[test]
fn the_run_deadline_stops_a_slow_run_cleanly() {
    let mut r = staff(5)
        .group(SALES, users(2))
        .conf("fast", "sales", &format!("group_id = \"{SALES}\"\n"))
        // The fast instance needs well under a second, even on a loaded CI machine (2 s was
        // too tight there); the slow one stalls far past the deadline. Full reads: this is
        // about the deadline, and a first delta run makes two more requests.
        .global("[http]\ntimeout_seconds = 90\ndeadline_seconds = 8\n[delta]\nenabled = false\n")
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"))
        .expect_file("fast/config/allowed_senders_ldap.txt", Some(&sender_lines(0..2)));
    r.sim.state().group_latency.insert(STAFF.into(), Duration::from_secs(60));
    let started = Instant::now();
    let out = r.run();
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(out.stderr.contains("the run deadline of 8 s passed"), "{}", out.stderr);
}

#[test]
fn two_runs_started_together_one_syncs_the_other_exits_75() {
    let r = staff(3);
    r.sim.state().latency = Duration::from_millis(800);
    let quiet = || {
        let mut c = r.command();
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c
    };
    let mut a = quiet().spawn().unwrap();
    let mut b = quiet().spawn().unwrap();
    let mut codes = [a.wait().unwrap().code(), b.wait().unwrap().code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(75)]);
    assert_eq!(r.read(SENDERS).as_deref(), Some(sender_lines(0..3).as_str()));
}

/// A mount of a small tmpfs inside the test's directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .status();
        if ok.is_ok_and(|s| s.success()) {
            Some(Self(at.to_owned()))
        } else {
            eprintln!("cannot mount a tmpfs here (not root?): disk-fault test skipped");
            None
        }
    }

    fn read_only(&self) {
        assert!(Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap().success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".usersync-")).count()
    })
}

#[test]
fn a_full_disk_leaves_the_old_file_intact_with_exit_1() {
    let mut r = staff(5000).file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=lists/senders.txt\n");
    let lists = r.root().join("gw/lists");
    let Some(_fs) = Tmpfs::mount(&lists, "64k") else { return };
    let old = sender_lines(0..100);
    std::fs::write(lists.join("senders.txt"), &old).unwrap();
    r = r.args(&["--force"]).expect_exit(1).expect_file("gw/lists/senders.txt", Some(&old));
    let out = r.run();
    assert!(out.stderr.contains("No space left on device"), "{}", out.stderr);
    assert!(out.stderr.contains("is full"), "{}", out.stderr);
    assert_eq!(temp_files(&lists), 0, "the temp file is removed");
}

#[test]
fn a_read_only_output_directory_is_exit_1_with_a_hint() {
    let mut r = staff(3).file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=lists/senders.txt\n");
    let lists = r.root().join("gw/lists");
    let Some(fs) = Tmpfs::mount(&lists, "64k") else { return };
    std::fs::write(lists.join("senders.txt"), "old@example.com\n").unwrap();
    fs.read_only();
    r = r.expect_exit(1).expect_file("gw/lists/senders.txt", Some("old@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("Read-only file system"), "{}", out.stderr);
    assert!(out.stderr.contains("ReadWritePaths="), "{}", out.stderr);
}

#[test]
fn a_missing_output_directory_is_exit_1_with_a_hint() {
    let mut r = staff(3)
        .file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=no/such/dir/senders.txt\n")
        .expect_exit(1)
        .expect_file("gw/no/such/dir/senders.txt", None);
    let out = r.run();
    let dir = r.root().join("gw/no/such/dir");
    assert!(out.stderr.contains(&format!("the directory {} does not exist", dir.display())), "{}", out.stderr);
}

/// `trials` runs killed with SIGKILL at random moments while the group flips
/// between two memberships: every output is always one complete list, and
/// temp files never pile up.
fn kill_mid_write(trials: usize) {
    const N: usize = 20_000;
    let confs = format!("group_id = \"{STAFF}\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\n");
    // The runs here set the scene and clean up after kills: what they log depends on where
    // the last kill landed. The subject is the files, checked below.
    // Full reads: this is about the writes, and every flip would be a 20,000-member delta.
    let mut r = Run::new()
        .global("[delta]\nenabled = false\n")
        .conf("gw", "staff", &confs)
        .args(&["--force"])
        .expect_exit(0)
        .ignore_stderr();
    let all = users(2 * N);
    let members = |flip: bool| if flip { all[N / 2..N + N / 2].to_vec() } else { all[..N].to_vec() };
    let outputs = [SENDERS, GSM, RULES];
    let mut lists: Vec<[String; 3]> = Vec::new();
    let mut full_run = Duration::ZERO;
    for flip in [true, false] {
        r.sim.state().directory.groups.insert(STAFF.into(), members(flip));
        let t = Instant::now();
        r.run();
        full_run = full_run.max(t.elapsed());
        lists.push(outputs.map(|o| r.read(o).unwrap()));
    }
    let dir = r.root().join("gw/config");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut killed_with_temp = 0;
    for trial in 0..trials {
        r.sim.state().directory.groups.insert(STAFF.into(), members(trial % 2 == 0));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child =
            r.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        if trial % 2 == 0 {
            // Anywhere in the run.
            std::thread::sleep(full_run * 6 / 5 * u32::try_from(rng % 1000).unwrap() / 1000);
        } else {
            // Right in the write: as soon as a temp file exists, plus 0-2 ms.
            let until = Instant::now() + full_run * 2;
            while temp_files(&dir) == 0 && Instant::now() < until {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_micros(rng % 2000));
        }
        let _ = child.kill();
        let _ = child.wait();
        for (i, o) in outputs.iter().enumerate() {
            let now = r.read(o).unwrap();
            assert!(
                now == lists[0][i] || now == lists[1][i],
                "trial {trial}: {o} is neither list ({} bytes)",
                now.len()
            );
        }
        let temps = temp_files(&dir);
        assert!(temps <= outputs.len(), "trial {trial}: {temps} temp files piled up");
        killed_with_temp += usize::from(temps > 0);
    }
    r.run();
    assert_eq!(temp_files(&dir), 0, "the next run cleans stale temp files");
    eprintln!("{trials} kills, {killed_with_temp} left a temp file behind (full run {full_run:?})");
    // Half the trials wait for a temp file before killing: unless enough kills landed
    // while one existed, this test did not test a write cut short (19 to 20 of 25 do).
    assert!(
        killed_with_temp >= trials / 3,
        "only {killed_with_temp} of {trials} kills landed while a temp file existed"
    );
}

#[test]
fn kill_9_mid_write_leaves_old_or_new_lists_short() {
    kill_mid_write(25);
}

#[test]
#[ignore = "long: 200 kills; run with --ignored"]
fn kill_9_mid_write_leaves_old_or_new_lists_200_trials() {
    kill_mid_write(200);
}
