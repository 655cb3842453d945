//! External commands (`zpool`, `pfctl`, `ifconfig`) run with a deadline
//! and an output cap, behind a [`CommandRunner`] that tests replace with
//! fixture output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command invocation (`zpool`, `pfctl`) may run. `zpool status` blocks when a pool
/// is suspended or a disk hangs in I/O; after this the child is killed so the
/// collection interval is not lost. Normal runs take milliseconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Output beyond this is not read: a pool with thousands of vdevs prints a
/// few hundred KiB, so this only guards against a runaway child.
pub const MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// How often a running child is polled for exit while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Why a command gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {args}: timed out after {timeout:?}, killed")]
    Timeout {
        program: String,
        args: String,
        timeout: Duration,
    },
    #[error("{program} {args}: exit status {status}: {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

/// Runs a command and returns its standard output. Collectors take one so
/// tests feed fixture output instead of running `zpool` or `pfctl`.
pub trait CommandRunner: Send {
    /// `Ok(None)` when the program does not exist on this host (no data, not
    /// an error); `Err` when it ran and failed or timed out.
    fn run(&self, program: &str, args: &[&str]) -> Result<Option<String>, CommandError>;
}

/// Runs real processes, killing any that outlive `timeout`.
#[derive(Clone, Debug)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self {
            timeout: COMMAND_TIMEOUT,
        }
    }
}

fn read_capped(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(r) = r {
            // A read error leaves what was read; the exit status says the rest.
            let _ = r.take(MAX_OUTPUT_BYTES).read_to_end(&mut buf);
        }
        buf
    })
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Option<String>, CommandError> {
        let io_err = |source| CommandError::Io {
            program: program.to_string(),
            source,
        };
        let spawned = Command::new(program)
            .args(args)
            // Untranslated messages and `.` decimals whatever the host's locale.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        // Pipes are drained on their own threads so a chatty child cannot
        // block on a full pipe while we wait for it to exit.
        let out = read_capped(child.stdout.take());
        let err = read_capped(child.stderr.take());
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CommandError::Timeout {
                        program: program.to_string(),
                        args: args.join(" "),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_err(e));
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(CommandError::Failed {
                program: program.to_string(),
                args: args.join(" "),
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        Ok(Some(String::from_utf8_lossy(&stdout).into_owned()))
    }
}

/// The first executable file named `name` in `PATH` or in `extra`.
pub fn find_program(name: &str, extra: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_times_out_and_kills() {
        let r = SystemRunner {
            timeout: Duration::from_millis(200),
        };
        let start = Instant::now();
        let err = r.run("sleep", &["30"]).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(r.run("echo", &["hi"]).unwrap().as_deref(), Some("hi\n"));
        assert!(matches!(
            r.run("false", &[]),
            Err(CommandError::Failed { .. })
        ));
    }
}
