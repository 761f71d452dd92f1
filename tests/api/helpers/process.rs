//! Child processes with a deadline: a command that does not finish in time is killed and the
//! test fails with what it printed, instead of hanging.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// How long a one-shot command (the CLI, initdb, pg_ctl) may run before the test gives up.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `command` with `stdin` as its input and returns its output; kills it and panics when
/// it has not exited by `deadline` (a guard against a hang).
pub fn output_within(command: &mut Command, stdin: Option<&str>, deadline: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let input = child.stdin.take().unwrap();
    let text = stdin.unwrap_or_default().to_string();
    // Writing, and reading both pipes, happen on threads so a full pipe never blocks us.
    let writer = std::thread::spawn(move || {
        let mut input = input;
        let _ = input.write_all(text.as_bytes());
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let status = exit_within(child, deadline)
        .unwrap_or_else(|| panic!("{command:?} did not exit within {deadline:?}: killed"));
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits for `child` to exit and returns its status; when it has not exited by `deadline` (a
/// guard against a hang) it is killed and `None` is returned. The wait blocks on the process
/// (on a thread of its own), so no clock paces it. Never panics: usable in a `Drop`.
pub fn exit_within(child: Child, deadline: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(deadline) {
        Ok(status) => status.ok(),
        Err(_) => {
            // Still running (its waiter holds it): killed by pid, then reaped by the waiter.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            None
        }
    }
}

#[test]
fn a_child_past_its_deadline_is_killed_and_one_that_exits_gives_its_status() {
    let done = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    assert_eq!(exit_within(done, COMMAND_DEADLINE).unwrap().code(), Some(3));

    // A child that would run for an hour, given a short guard: killed, and gone afterwards.
    let stuck = Command::new("sleep").arg("3600").spawn().unwrap();
    let pid = stuck.id().to_string();
    assert!(exit_within(stuck, Duration::from_millis(200)).is_none());
    let alive = Command::new("kill")
        .args(["-0", &pid])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "the stuck child was killed and reaped");
}
