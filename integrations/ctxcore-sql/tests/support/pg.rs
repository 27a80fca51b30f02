//! A throwaway PostgreSQL cluster for tests, examples and benches.
//!
//! Tests: `mod support;` then `support::pg::PgCluster`. Examples and benches:
//! `#[path = "../tests/support/pg.rs"] mod pg;`.
//!
//! [`PgCluster::start`] runs `initdb -A trust -U postgres` in a fresh temporary
//! directory, starts the server with `pg_ctl start -w` on a free port of
//! 127.0.0.1 (its Unix socket in the same directory), and waits until it
//! accepts connections. [`PgCluster::create_database`] gives each test its own
//! database. `Drop` runs `pg_ctl stop -m immediate` and removes the directory.
//!
//! [`PgCluster::shared`] is one cluster per test binary (statics are never
//! dropped). Every cluster, shared or owned, gets a small watchdog process as
//! soon as its directory exists: when the process exits, however it exits
//! (a panic that skips `Drop`, SIGKILL), the watchdog stops the server and
//! removes the directory; for an owned cluster it ends by itself once `Drop`
//! has removed the directory. Measured here: initdb + start ≈ 0.8 s,
//! `CREATE DATABASE` ≈ 70 ms.
//!
//! The binaries: `$PG_BIN` if set, else the newest
//! `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`. If none has
//! `initdb` and we are root, `apt-get install -y postgresql` is tried once;
//! otherwise the cluster fails with a clear message. As root, initdb and
//! postgres refuse to run: they are run as user `postgres` through `runuser`
//! (the directory is handed to that user first).
#![allow(dead_code)]

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub(crate) struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `Some(user)` when we run the server binaries as another user (we are root).
    run_as: Option<String>,
    /// A shared cluster is stopped by its watchdog, not by `Drop`.
    shared: bool,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static SHARED_INIT: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl PgCluster {
    /// Starts a new cluster (owned by the caller; stopped on drop). Panics
    /// with a clear message when PostgreSQL cannot be found or started.
    pub(crate) fn start() -> PgCluster {
        match Self::try_start(false) {
            Ok(c) => c,
            Err(e) => panic!("could not start a throwaway PostgreSQL cluster: {e}"),
        }
    }

    /// One cluster for the whole test binary, started on first use and
    /// stopped (by a watchdog process) when the test process exits.
    pub(crate) fn shared() -> &'static PgCluster {
        if let Some(c) = SHARED.get() {
            return c;
        }
        let _g = SHARED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = SHARED.get() {
            return c;
        }
        let c = match Self::try_start(true) {
            Ok(c) => c,
            Err(e) => panic!("could not start a throwaway PostgreSQL cluster: {e}"),
        };
        let _ = SHARED.set(c);
        SHARED.get().expect("just set")
    }

    fn try_start(shared: bool) -> Result<PgCluster, String> {
        let bin = find_bin()?;
        let run_as = if is_root() { Some("postgres".to_string()) } else { None };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "ctxcore-pg-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let mut cluster = PgCluster {
            bin,
            dir,
            port: 0,
            run_as,
            shared: false,
        };
        // From here on a process that dies (even by SIGKILL) leaves nothing.
        cluster.spawn_watchdog();
        let data = cluster.data_dir();
        let out = cluster
            .server_cmd("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", output_text(&out)));
        }
        // A free port: bind :0, let go, start on it; retry if someone took it meanwhile.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("find a free port: {e}"))?;
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=200",
                cluster.dir.display()
            );
            let out = cluster
                .server_cmd("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("server.log"))
                .arg("-o")
                .arg(opts)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("run pg_ctl start: {e}"))?;
            if out.status.success() {
                cluster.port = port;
                // Not shared yet: if the server never gets ready, `Drop`
                // stops it and removes the directory.
                cluster.wait_ready()?;
                cluster.shared = shared;
                return Ok(cluster);
            }
            let log = fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
            last = format!("pg_ctl start failed: {}\nserver.log:\n{log}", output_text(&out));
        }
        Err(last)
    }

    /// Waits (at most 30 s) until the server answers `SELECT 1` over TCP.
    fn wait_ready(&self) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.psql("postgres", "SELECT 1") {
                Ok(s) if s.trim() == "1" => return Ok(()),
                Ok(s) => return Err(format!("unexpected answer to SELECT 1: {s:?}")),
                Err(e) if Instant::now() >= until => return Err(format!("server not ready after 30 s: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The TCP port (host 127.0.0.1).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, log in `server.log`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a database `name_<n>` that no other test uses and returns its
    /// name. Panics on failure.
    pub(crate) fn create_database(&self, name: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let db: String = format!("{name}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE \"{db}\"")) {
            panic!("CREATE DATABASE {db}: {e}");
        }
        db
    }

    /// A tokio-postgres / libpq key-value connection string for `db`.
    pub(crate) fn config(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10",
            self.port
        )
    }

    /// A `postgres://` URL for `db` (sqlx, deadpool).
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with psql against `db` (synchronously, at most ~10 s to
    /// connect) and returns its unaligned, tuples-only output.
    pub(crate) fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(output_text(&out))
        }
    }

    /// The server log so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A server binary, run as the unprivileged user when we are root.
    fn server_cmd(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// A process that outlives nothing: it polls the test process and, once
    /// that has exited, stops the cluster and removes its directory. It ends
    /// at once if the directory is gone (an owned cluster dropped normally).
    fn spawn_watchdog(&self) {
        let stop = {
            let c = self.server_cmd("pg_ctl");
            let mut parts: Vec<String> = vec![c.get_program().to_string_lossy().into_owned()];
            parts.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
            parts.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" ")
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d {dir} ]; do sleep 0.2; done; \
             if [ -d {dir} ]; then {stop} stop -m immediate -D {data} >/dev/null 2>&1; rm -rf {dir}; fi",
            pid = std::process::id(),
            data = shell_quote(&self.data_dir().to_string_lossy()),
            dir = shell_quote(&self.dir.to_string_lossy()),
        );
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("warning: no watchdog for the PostgreSQL cluster ({e}); a killed process will leave it running");
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.shared {
            return; // the watchdog stops it when the process exits
        }
        if self.port != 0 {
            let _ = self
                .server_cmd("pg_ctl")
                .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                .arg(self.data_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let o = Command::new("id")
            .arg(flag)
            .arg(user)
            .output()
            .map_err(|e| format!("run id: {e}"))?;
        String::from_utf8_lossy(&o.stdout).trim().parse().map_err(|_| {
            format!("we are root, but there is no user {user:?} to run PostgreSQL as (id {flag} {user} failed)")
        })
    };
    Ok((id("-u")?, id("-g")?))
}

/// The directory holding `initdb`, `pg_ctl` and `psql`.
fn find_bin() -> Result<PathBuf, String> {
    if let Some(p) = search_bin() {
        return Ok(p);
    }
    if is_root() {
        static TRIED: OnceLock<bool> = OnceLock::new();
        TRIED.get_or_init(|| {
            eprintln!("PostgreSQL not found; trying `apt-get install -y postgresql`");
            Command::new("apt-get")
                .args(["install", "-y", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if let Some(p) = search_bin() {
            return Ok(p);
        }
    }
    Err("PostgreSQL's initdb was not found (looked at $PG_BIN, /usr/lib/postgresql/*/bin, `pg_config --bindir`). \
         Install it (Debian: `apt-get install postgresql`) or set PG_BIN to the directory holding initdb, pg_ctl and psql."
        .to_string())
}

fn search_bin() -> Option<PathBuf> {
    let ok = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file() && p.join("psql").is_file();
    if let Some(p) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if ok(&p) {
            return Some(p);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v: Vec<u32> = name.split('.').map(|x| x.parse().ok()).collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            ok(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Some(p);
    }
    let o = Command::new("pg_config").arg("--bindir").output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    ok(&p).then_some(p)
}
