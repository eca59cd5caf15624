//! The lock service with real programs and real failures: two mounts of one volume on a
//! 3-node playground, PHP `flock`, sqlite3's fcntl locks, appenders under `flock`, and a
//! holder that dies, a leader that dies, a waiter that gets a signal, and a holder cut off
//! for longer than its lease.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plait_tests::{Playground, leader, mount_pid, script};

/// Lease of the mounts in the failure tests, in milliseconds (short, to keep them quick).
const LEASE_MS: u64 = 2_000;

/// Slack for process start-up, the sweeper interval and a loaded machine, in ms.
const SLACK_MS: u128 = 8_000;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_all(children: Vec<Child>) {
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `flock -n` from a fresh process: true if the lock was free.
fn flock_free(path: &Path) -> bool {
    Command::new("flock")
        .args(["-n", "-E", "75"])
        .arg(path)
        .arg("true")
        .status()
        .expect("flock")
        .success()
}

/// Starts `flock -x PATH sleep SECS` and waits until it holds the lock (as seen from
/// `probe`, the same file through another mount).
fn hold(path: &Path, secs: u32, probe: &Path) -> Child {
    let child = Command::new("flock")
        .arg("-x")
        .arg(path)
        .args(["sleep", &secs.to_string()])
        .spawn()
        .expect("flock holder");
    let deadline = Instant::now() + Duration::from_secs(20);
    while flock_free(probe) {
        assert!(Instant::now() < deadline, "holder never got the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn php_counter_sqlite_and_appenders_across_two_mounts() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let (m1, m2) = (pg.mnt.clone(), pg.mount().unwrap());

    // Two PHP processes, one per mount, 500 flock'ed increments each.
    fs::write(m1.join("counter"), "0").unwrap();
    let t = Instant::now();
    let php = |m: &Path| {
        Command::new("php")
            .arg(script("counter.php"))
            .arg(m.join("counter"))
            .arg("500")
            .stderr(Stdio::piped())
            .spawn()
            .expect("php")
    };
    wait_all(vec![php(&m1), php(&m2)]);
    let total = fs::read_to_string(m2.join("counter")).unwrap();
    eprintln!("php counter: {total} after {:?}", t.elapsed());
    assert_eq!(total.trim(), "1000", "increments were lost");

    // Four appenders (two per mount) under flock: no line lost or torn.
    let log = "app.log";
    fs::write(m1.join(log), "").unwrap();
    let t = Instant::now();
    let appender = |m: &Path, tag: &str| {
        Command::new("php")
            .arg(script("append.php"))
            .arg(m.join(log))
            .arg(tag)
            .arg("100")
            .stderr(Stdio::piped())
            .spawn()
            .expect("php")
    };
    wait_all(vec![
        appender(&m1, "a"),
        appender(&m1, "b"),
        appender(&m2, "c"),
        appender(&m2, "d"),
    ]);
    let text = fs::read_to_string(m1.join(log)).unwrap();
    eprintln!(
        "appenders: {} lines in {:?}",
        text.lines().count(),
        t.elapsed()
    );
    for tag in ["a", "b", "c", "d"] {
        let mut seen: Vec<usize> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                assert_eq!(parts.len(), 3, "torn line {l:?}");
                assert_eq!(parts[2], "x".repeat(60), "torn line {l:?}");
                parts[1].parse().unwrap()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "lines of {tag} lost");
    }
    assert_eq!(text.lines().count(), 400);

    // Two sqlite3 processes, one per mount, inserting into one database.
    let db1 = m1.join("test.db");
    run_ok(Command::new("sqlite3").arg(&db1).arg(
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, n INT);",
    ));
    let t = Instant::now();
    let writer = |m: &Path, who: &str| {
        let mut sql = String::from(".timeout 60000\n");
        for n in 0..100 {
            sql.push_str(&format!("INSERT INTO t(who, n) VALUES('{who}', {n});\n"));
        }
        let mut c = Command::new("sqlite3")
            .arg(m.join("test.db"))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite3");
        c.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
        c
    };
    wait_all(vec![writer(&m1, "one"), writer(&m2, "two")]);
    let count = run_ok(
        Command::new("sqlite3")
            .arg(&db1)
            .arg("SELECT count(*) FROM t;"),
    );
    let check = run_ok(
        Command::new("sqlite3")
            .arg(m2.join("test.db"))
            .arg("PRAGMA integrity_check;"),
    );
    eprintln!(
        "sqlite: {} rows, integrity {} after {:?}",
        count.trim(),
        check.trim(),
        t.elapsed()
    );
    assert_eq!(count.trim(), "200");
    assert_eq!(check.trim(), "ok");
}

#[test]
fn a_dead_holder_loses_its_lock_after_the_lease_and_signals_end_waits() {
    let lease = format!("--lease-ms={LEASE_MS}");
    let mut pg = Playground::up_with(3, 3, &[], &[&lease]).unwrap();
    let m1 = pg.mnt.clone();
    let m2 = pg.mount_with(&[&lease]).unwrap();
    fs::write(m1.join("f"), "x").unwrap();

    // A waiter that gets a signal returns within a second and leaves nothing behind.
    let mut holder = hold(&m1.join("f"), 600, &m2.join("f"));
    let waiter = |code: &str| {
        Command::new("python3")
            .arg("-c")
            .arg(code)
            .arg(m2.join("f"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3")
    };
    let py = "import fcntl,signal,sys\n\
              def h(s,f): raise KeyboardInterrupt\n\
              signal.signal(signal.SIGUSR1,h)\n\
              f=open(sys.argv[1])\n\
              print('waiting',flush=True)\n\
              try:\n fcntl.flock(f,fcntl.LOCK_EX)\n print('granted')\n\
              except KeyboardInterrupt: print('interrupted')\n";
    for signal in [libc::SIGUSR1, libc::SIGKILL] {
        let mut w = waiter(py);
        let mut out = BufReader::new(w.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(w.id() as i32, signal) };
        let status = w.wait().unwrap();
        let took = t.elapsed();
        line.clear();
        out.read_line(&mut line).unwrap();
        eprintln!("waiter got signal {signal}: {status}, {line:?} after {took:?}");
        assert!(took < Duration::from_secs(1), "waiter took {took:?}");
        if signal == libc::SIGUSR1 {
            assert_eq!(line.trim(), "interrupted");
        }
    }
    let listed = pg.admin(&["lock", "list", "--output", "json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "a phantom waiter is left: {listed}");
    assert_eq!(rows[0]["state"], "held");
    assert_eq!(rows[0]["path"], "/f");

    // The holder's mount dies: the lock is free once its lease ran out.
    let pid = mount_pid(&pg, &m1).expect("mount pid");
    let t = Instant::now();
    // SAFETY: killing the playground's mount process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let granted = Command::new("flock")
        .args(["-x", "-w", "60"])
        .arg(m2.join("f"))
        .arg("true")
        .status()
        .unwrap();
    let took = t.elapsed();
    eprintln!("holder's mount killed: lock granted elsewhere after {took:?} (lease {LEASE_MS} ms)");
    assert!(granted.success());
    assert!(
        took.as_millis() >= u128::from(LEASE_MS) - 500,
        "freed before the lease ran out"
    );
    assert!(
        took.as_millis() <= u128::from(LEASE_MS) + SLACK_MS,
        "took {took:?}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn locks_survive_the_leader_being_killed() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let (m1, m2) = (pg.mnt.clone(), pg.mount().unwrap());
    fs::write(m1.join("f"), "x").unwrap();
    let mut holder = hold(&m1.join("f"), 6, &m2.join("f"));
    let started = Instant::now();
    let waiter = Command::new("flock")
        .args(["-x", "-w", "60"])
        .arg(m2.join("f"))
        .arg("true")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let old = leader(&pg).expect("leader");
    pg.cmd("stop-node", &[&old.to_string()]).unwrap();
    eprintln!("leader {old} killed while a lock is held and a waiter queued");
    // The holder still holds: nobody else gets the lock before it lets go. (A probe that
    // spans a failover may return after the holder's sleep ended: only a probe that got
    // the lock while the holder still runs is a violation.)
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let free = flock_free(&m2.join("f"));
        let holder_running = holder.try_wait().unwrap().is_none();
        assert!(
            !(free && holder_running),
            "lock free while its holder holds it"
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(holder.wait().unwrap().success());
    let out = waiter.wait_with_output().unwrap();
    let took = started.elapsed();
    eprintln!("{probes} probes refused; waiter granted {took:?} after queueing (holder held 6 s)");
    assert!(out.status.success(), "waiter not granted");
    assert!(took < Duration::from_secs(6) + Duration::from_millis(SLACK_MS as u64));
    let _ = pg.cmd("start-node", &[&old.to_string()]);
}

#[test]
fn a_holder_cut_off_past_its_lease_is_fenced() {
    let lease = format!("--lease-ms={LEASE_MS}");
    let mut pg = Playground::up_with(3, 3, &[], &[&lease]).unwrap();
    let m1 = pg.mnt.clone();
    let m2 = pg.mount_with(&[&lease]).unwrap();
    fs::write(m1.join("f"), "").unwrap();
    // The holder: lock, write, fsync; then (after a line on stdin) write and fsync again.
    let py = "import fcntl,os,sys\n\
              fd=os.open(sys.argv[1],os.O_WRONLY)\n\
              fcntl.lockf(fd,fcntl.LOCK_EX)\n\
              os.write(fd,b'first holder\\n'); os.fsync(fd)\n\
              print('locked',flush=True)\n\
              sys.stdin.readline()\n\
              try:\n os.write(fd,b'FENCING FAILED\\n'); os.fsync(fd); print('written')\n\
              except OSError as e: print('refused',e.errno)\n";
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(m1.join("f"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");

    // Cut the holder's mount off (SIGSTOP: no renewals, no reset) past its lease.
    let pid = mount_pid(&pg, &m1).expect("mount pid") as i32;
    // SAFETY: stopping the playground's mount process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = Instant::now();
    let py2 = "import fcntl,os,sys\n\
               fd=os.open(sys.argv[1],os.O_WRONLY|os.O_APPEND)\n\
               fcntl.lockf(fd,fcntl.LOCK_EX)\n\
               os.write(fd,b'second holder\\n'); os.fsync(fd)\n\
               fcntl.lockf(fd,fcntl.LOCK_UN)\n";
    let second = Command::new("timeout")
        .arg("60")
        .args(["python3", "-c", py2])
        .arg(m2.join("f"))
        .status()
        .unwrap();
    eprintln!(
        "second mount got the lock {:?} after the holder was cut off",
        t.elapsed()
    );
    assert!(second.success());
    // SAFETY: resuming it.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    // The old holder wakes up believing it holds the lock: its write must be refused.
    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    eprintln!("old holder after resuming: {}", line.trim());
    assert_eq!(line.trim(), format!("refused {}", libc::EIO));
    let _ = holder.wait();
    let text = fs::read_to_string(m2.join("f")).unwrap();
    assert_eq!(text, "first holder\nsecond holder\n");
}

#[test]
fn a_delegated_lock_is_listed_and_recalled_by_getlk_from_another_mount() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let (m1, m2) = (pg.mnt.clone(), pg.mount().unwrap());
    fs::write(m1.join("g"), "0123456789").unwrap();
    // The only locker of the file: its mount gets the file's delegation.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,sys,time\n\
             f=open(sys.argv[1],'r+')\n\
             fcntl.lockf(f,fcntl.LOCK_EX,10,0)\n\
             print('locked',flush=True)\n\
             time.sleep(30)\n",
        )
        .arg(m1.join("g"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let rows = |pg: &Playground| -> Vec<serde_json::Value> {
        let listed = pg.admin(&["lock", "list", "--output", "json"]).unwrap();
        serde_json::from_str::<serde_json::Value>(&listed)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let listed = rows(&pg);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "delegated");
    assert_eq!(listed[0]["path"], "/g");

    // F_GETLK from the other mount needs the real table: the delegation is recalled and
    // the holder's lock (range and pid) is reported.
    let t = Instant::now();
    let getlk = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,struct,sys\n\
                 f=open(sys.argv[1],'r+')\n\
                 req=struct.pack('hhqqi4x',fcntl.F_WRLCK,0,5,1,0)\n\
                 t,w,s,l,p=struct.unpack('hhqqi4x',fcntl.fcntl(f,fcntl.F_GETLK,req))\n\
                 print(t==fcntl.F_WRLCK,s,l,p)\n",
            )
            .arg(m2.join("g")),
    );
    eprintln!(
        "F_GETLK across mounts (recall): {getlk:?} after {:?}",
        t.elapsed()
    );
    assert_eq!(getlk.trim(), format!("True 0 10 {}", holder.id()));
    let listed = rows(&pg);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "held");
    assert_eq!(listed[0]["pid"], holder.id());
    assert_eq!(listed[0]["end"], 9);
    holder.kill().unwrap();
    holder.wait().unwrap();
}
