//! `walguard witness` as a real process, and what a walguard config needs to name it: shared
//! by the witness, transparency and console tests and by the benchmark's `audit` part.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use walguard::event::Signer;
use walguard::tlog::Vkey;
use walguard::witness::WitnessClient;

use super::{Env, BIN};

/// A `walguard witness` process; SIGKILLed on drop.
pub struct WitnessProcess {
    pub child: Option<Child>,
    pub port: u16,
    pub vkey: Vkey,
}

impl WitnessProcess {
    pub fn start(dir: &Path, key: &Path, log: &Vkey) -> WitnessProcess {
        WitnessProcess::start_with(&dir.join("state"), key, log, &[])
    }

    pub fn start_with(state: &Path, key: &Path, log: &Vkey, extra: &[&str]) -> WitnessProcess {
        WitnessProcess::start_on(walguard::testkit::free_port(), state, key, log, extra)
    }

    /// On `port` (a restart where its clients know it).
    pub fn start_on(port: u16, state: &Path, key: &Path, log: &Vkey, extra: &[&str]) -> WitnessProcess {
        let mut child = Command::new(BIN)
            .args(["witness", "--listen", &format!("127.0.0.1:{port}"), "--key"])
            .arg(key)
            .arg("--state")
            .arg(state)
            .args(extra)
            .args(["--name", "witness.test/w1", "--log", &log.to_string()])
            .env("WALGUARD_LOG", "info,walguard=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn walguard witness");
        // The first line on stdout is the witness's verifier key, printed once it listens.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let vkey = Vkey::parse(line.trim_end()).unwrap_or_else(|e| panic!("witness printed {line:?}: {e}"));
        WitnessProcess {
            child: Some(child),
            port,
            vkey,
        }
    }

    pub fn client(&self) -> WitnessClient {
        WitnessClient::new(
            &format!("http://127.0.0.1:{}", self.port),
            self.vkey.clone(),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn witness_key(dir: &Path) -> PathBuf {
    let path = dir.join("witness.key");
    Signer::generate(&path).unwrap();
    path
}

/// The log's key as a C2SP vkey for this environment's origin (what `walguard witness --log`
/// takes), and the origin.
pub async fn log_vkey(env: &Env) -> (walguard::tlog::Vkey, String) {
    let row = env
        .db
        .query_one("select system_identifier::text from pg_control_system()", &[])
        .await
        .unwrap();
    let sysid: String = row.get(0);
    let origin = format!("walguard/{sysid}/postgres/{}", env.slot);
    let signer = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    let vkey = walguard::tlog::Vkey::new(&origin, walguard::tlog::KeyKind::Ed25519, signer.verifying_key()).unwrap();
    (vkey, origin)
}

pub fn witness_section(witness: &WitnessProcess) -> String {
    format!(
        "[[audit.witnesses]]\nurl = \"http://127.0.0.1:{}\"\nkey = \"{}\"",
        witness.port, witness.vkey
    )
}
