//! What the `audit` and `recovery` parts measure of a walguard command run to completion
//! (wall time, CPU seconds and peak RSS, as GNU time reports the kernel's rusage), optional
//! `perf record` of a process, and a minimal HTTP GET (walguard's /metrics, the console).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One finished command: what the kernel accounted for it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Measured {
    pub wall_s: f64,
    /// User + system CPU seconds of the process.
    pub cpu_s: f64,
    /// The process's peak resident set (`ru_maxrss`, GNU time's `%M`).
    pub peak_rss_mib: f64,
    #[serde(skip)]
    pub code: i32,
    /// Its stdout and stderr, kept for the error message and the figures it prints.
    #[serde(skip)]
    pub output: String,
}

/// Runs `cmd` to completion under GNU time (`/usr/bin/time`, its rusage of the command:
/// no unsafe `wait4` here) with stdout and stderr into `log`; with `BENCH_PERF_DIR`, a `perf
/// record` of the command's process into `{BENCH_PERF_DIR}/{perf_name}.data` while it runs.
pub fn run(cmd: Command, log: &Path, perf_name: Option<&str>) -> Measured {
    let file = std::fs::File::create(log).expect("create the command's log");
    let usage = log.with_extension("time");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(&usage)
        .arg(cmd.get_program());
    timed.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let mut child = timed
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("run /usr/bin/time {cmd:?} (apt-get install time): {e}"));
    let profiler = perf_name.and_then(|name| perf_pid(child_of(child.id())?, name));
    let status = child.wait().expect("wait for the command");
    stop_perf(profiler);
    let text = std::fs::read_to_string(&usage).unwrap_or_default();
    // GNU time's last line is the format; a line before it says a signal ended the command.
    let f: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(f.len(), 4, "GNU time's figures for {cmd:?}: {text:?}");
    Measured {
        wall_s: f[0],
        cpu_s: f[1] + f[2],
        peak_rss_mib: f[3] / 1024.0,
        code: status.code().unwrap_or(-1),
        output: std::fs::read_to_string(log).unwrap_or_default(),
    }
}

/// The first child process of `pid` (the command GNU time runs), once it exists.
fn child_of(pid: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(first) = children.split_whitespace().next() {
            return first.parse().ok();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// `run`, and the command must succeed.
pub fn run_ok(cmd: Command, log: &Path, perf_name: Option<&str>) -> Measured {
    let what = format!("{cmd:?}");
    let m = run(cmd, log, perf_name);
    assert_eq!(m.code, 0, "{what} failed:\n{}", m.output);
    m
}

/// `BENCH_PERF_DIR=DIR`: `perf record` (call graphs) of `pid` into `DIR/{name}.data`; `None`
/// (with a message) when perf is not installed.
pub fn perf_pid(pid: u32, name: &str) -> Option<Child> {
    let dir = PathBuf::from(std::env::var_os("BENCH_PERF_DIR")?);
    if Command::new("perf").arg("--version").output().is_err() {
        eprintln!("BENCH_PERF_DIR is set but perf is not installed: no profile of {name}");
        return None;
    }
    std::fs::create_dir_all(&dir).expect("create BENCH_PERF_DIR");
    let out = dir.join(format!("{name}.data"));
    eprintln!("  perf record of {name} (pid {pid}) into {}", out.display());
    Some(perf_record(&out.to_string_lossy(), &call_graph_of(pid)))
}

/// `perf record`'s arguments for call graphs of one process: DWARF unwinding, since the
/// release build keeps no frame pointers.
pub fn call_graph_of(pid: u32) -> Vec<String> {
    ["--call-graph", "dwarf,16384", "-p", &pid.to_string()]
        .map(str::to_owned)
        .to_vec()
}

/// `perf record` of `target` into `out` (software clock, so it works where hardware counters
/// are not exposed), until [`stop_perf`].
pub fn perf_record(out: &str, target: &[String]) -> Child {
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "1999", "-o", out])
        .args(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run perf");
    std::thread::sleep(Duration::from_millis(200));
    child
}

pub fn stop_perf(profiler: Option<Child>) {
    if let Some(mut perf) = profiler {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(perf.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = perf.wait();
    }
}

/// One HTTP/1.1 GET on loopback with `Connection: close` and the extra header lines
/// `headers` (each `Name: value`): the status and the body; `None` when nothing answers.
pub async fn http_get(port: u16, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
