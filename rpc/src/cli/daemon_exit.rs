//! Waiting for the daemon to be gone after `shutdown`.
//!
//! The daemon answers `shutdown` first and then checkpoints every zone, stops the
//! reactors and exits; it stops accepting RPC connections early in that sequence, so
//! "the socket no longer answers" comes before "the pool files are closed". A script
//! that runs `sluice shutdown` and then copies or re-opens a pool needs the latter.
//! So before sending `shutdown` the CLI finds the process behind the Unix socket
//! (`SO_PEERCRED`: the pid of the process that listens on it) and holds a pidfd to it;
//! afterwards it waits on the pidfd, which becomes readable when that very process
//! has exited (no pid-reuse race, no polling). When the pid is not available (TCP,
//! another pid namespace, a kernel without pidfd) it falls back to waiting until the
//! socket stops accepting connections.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why the daemon could not be seen to exit.
#[derive(Debug, thiserror::Error)]
pub enum ExitWaitError {
    #[error(
        "sluiced (pid {pid}) accepted shutdown but is still running after {}s \
         (it may still be checkpointing; wait longer with -t SECONDS)",
        waited.as_secs_f64()
    )]
    StillRunning { pid: i32, waited: Duration },
    #[error(
        "sluiced accepted shutdown but its socket still accepts connections after {}s \
         (wait longer with -t SECONDS)",
        waited.as_secs_f64()
    )]
    StillAnswering { waited: Duration },
    #[error("cannot wait for sluiced (pid {pid}) to exit: {source}")]
    Wait { pid: i32, source: io::Error },
}

/// The daemon process, held by a pidfd.
#[derive(Debug)]
pub struct DaemonProcess {
    pid: i32,
    pidfd: OwnedFd,
}

impl DaemonProcess {
    /// The process listening on the Unix socket at `path`, or `None` when it cannot
    /// be identified (nobody listening, pid not visible from here, no pidfd support).
    pub fn behind_socket(path: &Path) -> Option<DaemonProcess> {
        let stream = UnixStream::connect(path).ok()?;
        let creds =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .ok()?;
        // 0: the listener lives in a pid namespace we cannot see.
        let pid = creds.pid();
        if pid <= 0 {
            return None;
        }
        // The daemon is alive now (it accepted us), so the pidfd names it and not a
        // later process that reuses the pid.
        let pidfd = pidfd_open(pid).ok()?;
        Some(DaemonProcess { pid, pidfd })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Blocks until the process has exited, or `timeout` has passed (`None`: forever).
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Result<(), ExitWaitError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let start = Instant::now();
        loop {
            let left = match timeout {
                None => PollTimeout::NONE,
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    // Round up so a sub-millisecond rest still waits.
                    let ms = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, left) {
                Ok(0) => {
                    return Err(ExitWaitError::StillRunning {
                        pid: self.pid,
                        waited: start.elapsed(),
                    })
                }
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(ExitWaitError::Wait {
                        pid: self.pid,
                        source: e.into(),
                    })
                }
            }
        }
    }
}

/// Fallback when the process is unknown: polls `answers` (does a connection to the
/// daemon's socket still succeed?) until it says no, or `timeout` has passed.
pub fn wait_unreachable(
    mut answers: impl FnMut() -> bool,
    timeout: Option<Duration>,
) -> Result<(), ExitWaitError> {
    const POLL: Duration = Duration::from_millis(20);
    let start = Instant::now();
    while answers() {
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Err(ExitWaitError::StillAnswering {
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes two integers and borrows no memory; it returns a new
    // descriptor or -1 with errno set.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::process::Command;

    #[test]
    fn finds_the_listening_process_and_times_out_while_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let me = DaemonProcess::behind_socket(&path).expect("our own listener");
        assert_eq!(me.pid(), std::process::id() as i32);
        let e = me.wait_exit(Some(Duration::from_millis(50))).unwrap_err();
        assert!(
            matches!(e, ExitWaitError::StillRunning { pid, .. } if pid == me.pid()),
            "{e}"
        );
        assert!(e.to_string().contains("still running"), "{e}");
    }

    #[test]
    fn returns_once_the_process_has_exited() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        let p = DaemonProcess {
            pid: child.id() as i32,
            pidfd,
        };
        p.wait_exit(Some(Duration::from_secs(30))).unwrap();
        // Exited (a zombie until reaped): reaping does not block.
        assert!(child.try_wait().unwrap().is_some());
    }

    #[test]
    fn nobody_behind_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DaemonProcess::behind_socket(&dir.path().join("none.sock")).is_none());
    }

    #[test]
    fn fallback_waits_until_unreachable_or_times_out() {
        let mut left = 3;
        wait_unreachable(
            || {
                left -= 1;
                left > 0
            },
            Some(Duration::from_secs(30)),
        )
        .unwrap();
        assert_eq!(left, 0);
        let e = wait_unreachable(|| true, Some(Duration::from_millis(30))).unwrap_err();
        assert!(matches!(e, ExitWaitError::StillAnswering { .. }), "{e}");
    }
}
