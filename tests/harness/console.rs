//! `walguard console` as a real process with its token file: shared by the console tests and
//! the benchmark's `recovery` part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::BIN;

/// The token the console's `token_file` holds.
pub const TOKEN: &str = "console-test-token-0123456789abcdef";

pub struct ConsoleProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl ConsoleProcess {
    pub fn start(config: &Path, dir: &Path) -> ConsoleProcess {
        ConsoleProcess::start_with(&["-c", config.to_str().unwrap()], dir)
    }

    /// `walguard console ARGS --listen 127.0.0.1:PORT` on a free port.
    pub fn start_with(args: &[&str], dir: &Path) -> ConsoleProcess {
        let port = walguard::testkit::free_port();
        let log = dir.join(format!("console-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("console")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("WALGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn walguard console");
        ConsoleProcess { child, port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_token(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("console.token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
