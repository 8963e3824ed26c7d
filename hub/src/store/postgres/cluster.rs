//! A throwaway PostgreSQL cluster, for the test suites and the benchmark: `initdb` into a
//! folder of its own, `pg_ctl start` on a free port of 127.0.0.1, one database per caller,
//! stopped and removed when the process that started it ends.
//!
//! [`shared`] gives one cluster per process. With `HUREN_TEST_POSTGRES` set to the URL of a
//! superuser on a running server, that server is used instead (each caller still gets a
//! database of its own, named `huren_t_…`, left in place). Otherwise the server binaries are
//! looked for in `HUREN_PG_BIN`, then `/usr/lib/postgresql/<newest>/bin` (Debian's
//! `postgresql` package), then `PATH`. PostgreSQL refuses to run as root: as root, the
//! cluster runs as the user `postgres` (or `HUREN_PG_USER`). When none of this works the
//! caller gets an error saying what is missing; tests fail on it, they never skip.
//!
//! The cluster runs with `fsync = off`: it is thrown away with the process, and what the
//! tests check of durability is the hub's (a transaction committed before a receipt), not the
//! disk's. The benchmark's cluster ([`Cluster::start_with_fsync`]) runs as a server an
//! alliance would operate: fsync on, 1 GiB of shared buffers, and checkpoints spaced by WAL
//! volume and time as PostgreSQL's manual advises for write-heavy loads (`max_wal_size` 8 GB,
//! `checkpoint_timeout` 15 min). `HUREN_PG_SERVER_OPTIONS` adds server options (`-c name=value`
//! …) after these, to measure another setting without a rebuild.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running server and how to reach it as a superuser.
pub struct Cluster {
    /// `postgres://user[:password]@host:port` with no database.
    base: String,
    /// The database an admin connection opens.
    admin_db: String,
    /// Set for a cluster this process started: its folder, data folder, binaries and user.
    owned: Option<Owned>,
}

struct Owned {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    user: Option<String>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The process's cluster: `HUREN_TEST_POSTGRES`, or one started on first use (and stopped
/// and removed once the process has ended).
pub fn shared() -> Result<&'static Cluster, String> {
    SHARED
        .get_or_init(|| match std::env::var("HUREN_TEST_POSTGRES") {
            Ok(url) if !url.trim().is_empty() => Cluster::external(url.trim()),
            _ => Cluster::start().and_then(|c| {
                c.clean_up_after(std::process::id())?;
                Ok(c)
            }),
        })
        .as_ref()
        .map_err(|e| e.clone())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The folder holding `initdb` and `pg_ctl`.
fn find_binaries() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("HUREN_PG_BIN") {
        candidates.push(dir.into());
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "cannot find PostgreSQL's server programs (initdb, pg_ctl): install Debian's \
             `postgresql` package, set HUREN_PG_BIN to their folder, or set HUREN_TEST_POSTGRES \
             to the URL of a superuser on a running server"
                .to_owned()
        })
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u"), "id -u").is_ok_and(|uid| uid.trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

impl Owned {
    /// A command run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }
}

impl Cluster {
    /// A server someone else runs: `url` names a superuser (and a database it may connect to).
    pub fn external(url: &str) -> Result<Cluster, String> {
        let (base, db) = split_url(url)?;
        Ok(Cluster {
            base,
            admin_db: db.unwrap_or_else(|| "postgres".into()),
            owned: None,
        })
    }

    /// Starts a new cluster in a folder of its own under the system's temporary folder, with
    /// `fsync` off (for tests: see the module doc).
    pub fn start() -> Result<Cluster, String> {
        Self::start_with_fsync(false)
    }

    /// [`Cluster::start`], with `fsync` on, 1 GiB of shared buffers (like the sled store's
    /// default page cache) and spaced checkpoints when `fsync`: what the benchmark measures, as
    /// a real server runs (see the module doc).
    pub fn start_with_fsync(fsync: bool) -> Result<Cluster, String> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let bin = find_binaries()?;
        let user = match is_root() {
            false => None,
            true => {
                let user = std::env::var("HUREN_PG_USER").unwrap_or_else(|_| "postgres".into());
                run(Command::new("id").arg("-u").arg(&user), "id").map_err(|_| {
                    format!(
                        "PostgreSQL refuses to run as root and there is no user `{user}` to run \
                         it as: install Debian's `postgresql` package (it creates `postgres`), \
                         create an unprivileged user and set HUREN_PG_USER, or set \
                         HUREN_TEST_POSTGRES"
                    )
                })?;
                Some(user)
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "huren-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(&dir), "chown")?;
        }
        let owned = Owned {
            data: dir.join("data"),
            dir,
            bin,
            user,
        };
        let mut cluster = Cluster {
            base: String::new(),
            admin_db: "postgres".into(),
            owned: Some(owned),
        };
        let port = cluster.boot(fsync)?;
        cluster.base = format!("postgres://huren@127.0.0.1:{port}");
        Ok(cluster)
    }

    fn boot(&self, fsync: bool) -> Result<u16, String> {
        let Some(o) = &self.owned else {
            return Err("not a cluster of this process".into());
        };
        run(
            o.command("initdb").arg("-D").arg(&o.data).args([
                "-U",
                "huren",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        )?;
        let durability = match fsync {
            true => "-c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=15min",
            false => "-c fsync=off -c full_page_writes=off",
        };
        let extra = std::env::var("HUREN_PG_SERVER_OPTIONS").unwrap_or_default();
        let mut attempts = 0;
        loop {
            // A port the system just gave out; another process's connection may be given it
            // before the server binds it: then another port, a few times.
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 {durability} -c max_connections=400 {extra}",
                o.dir.display()
            );
            let started = run(
                o.command("pg_ctl")
                    .arg("-D")
                    .arg(&o.data)
                    .arg("-l")
                    .arg(o.dir.join("server.log"))
                    .args(["-w", "-t", "60", "-o", &options, "start"]),
                "pg_ctl start",
            );
            let Err(e) = started else { return Ok(port) };
            let log = std::fs::read_to_string(o.dir.join("server.log")).unwrap_or_default();
            attempts += 1;
            if attempts < 3 && log.contains("Address already in use") {
                continue;
            }
            return Err(format!("{e}\nserver log:\n{log}"));
        }
    }

    /// Leaves a watcher behind that stops the cluster and removes its folder once the process
    /// `pid` has ended (a static is never dropped, so the process cannot do it itself).
    fn clean_up_after(&self, pid: u32) -> Result<(), String> {
        let Some(o) = &self.owned else { return Ok(()) };
        let mut stop = o.command("pg_ctl");
        stop.arg("-D")
            .arg(&o.data)
            .args(["-m", "immediate", "stop"]);
        let stop_line = std::iter::once(stop.get_program())
            .chain(stop.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop_line} >/dev/null 2>&1; rm -rf {}",
            shell_quote(&o.dir.to_string_lossy())
        );
        Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot leave the cluster's clean-up behind (setsid): {e}"))?;
        Ok(())
    }

    /// Leaves a watcher behind that stops this cluster and removes its folder once this
    /// process has ended, however it ends (a SIGKILL skips `Drop`).
    pub fn remove_when_this_process_ends(&self) -> Result<(), String> {
        self.clean_up_after(std::process::id())
    }

    /// Stops a cluster this process started and removes its folder.
    pub fn stop(&self) {
        if let Some(o) = &self.owned {
            let _ = o
                .command("pg_ctl")
                .arg("-D")
                .arg(&o.data)
                .args(["-m", "immediate", "stop"])
                .output();
            let _ = std::fs::remove_dir_all(&o.dir);
        }
    }

    /// The folder of a cluster this process started.
    pub fn dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|o| o.dir.as_path())
    }

    /// The URL of the database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// A new, empty database; its URL (as the superuser).
    pub async fn create_database(&self) -> Result<String, String> {
        let name = format!(
            "huren_t_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.execute(&format!("CREATE DATABASE {name}")).await?;
        Ok(self.url(&name))
    }

    /// Runs SQL on the admin database as the superuser.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        let url = self.url(&self.admin_db);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to the test PostgreSQL at {}: {e}",
                    self.base_place()
                )
            })?;
        let task = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"));
        drop(client);
        let _ = task.await;
        result
    }

    fn base_place(&self) -> String {
        match self.base.rsplit_once('@') {
            Some((_, host)) => host.to_owned(),
            None => self.base.clone(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `postgres://user@host:port/db?x` into (`postgres://user@host:port`, Some(`db`)).
fn split_url(url: &str) -> Result<(String, Option<String>), String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| format!("HUREN_TEST_POSTGRES is not a postgres:// URL: {url}"))?;
    let rest = &url[scheme_end + 3..];
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if authority.contains('?') {
        return Err("HUREN_TEST_POSTGRES: put query parameters after a database name".into());
    }
    let db = path
        .map(|p| p.split('?').next().unwrap_or_default().to_owned())
        .filter(|d| !d.is_empty());
    Ok((format!("{}{authority}", &url[..scheme_end + 3]), db))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
