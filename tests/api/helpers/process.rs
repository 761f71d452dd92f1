//! Child processes with a deadline: a command that does not finish in time is killed and the
//! test fails with what it printed, instead of hanging.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not exit within {deadline:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
