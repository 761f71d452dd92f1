//! A throwaway PostgreSQL cluster of one test: `initdb` in a temporary directory, served on a
//! free loopback port with its unix socket in that directory, so a test may stop and start it
//! without touching the machine's PostgreSQL. Stopped and removed on drop, even on a panic.
//! Every `pg_ctl` call waits (`-w`) with a timeout, and every command runs with a deadline.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::{output_within, COMMAND_DEADLINE};
use super::unique;

/// How long `pg_ctl` waits for the server to start or stop (`-t`).
const PG_CTL_TIMEOUT_SECONDS: &str = "60";

pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Whether commands run as the `postgres` user (initdb refuses root).
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
        .1
}

fn is_root() -> bool {
    let out = output_within(Command::new("id").arg("-u"), None, COMMAND_DEADLINE);
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl PgCluster {
    /// Creates and starts a new cluster (trust authentication, superuser `postgres`).
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("tokenbox-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let out = output_within(
                Command::new("chown").arg("postgres:postgres").arg(&dir),
                None,
                COMMAND_DEADLINE,
            );
            assert!(out.status.success(), "chown: {out:?}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            dir,
            bin: postgres_bin(),
            port,
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The admin URL (over TCP on loopback) a `PgDatabase` is created from.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the cluster's binaries (as `postgres` when we are root); panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(&self.dir);
        let out = output_within(&mut command, None, COMMAND_DEADLINE);
        assert!(
            out.status.success(),
            "{program:?} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.data();
        let log = self.dir.join("postgres.log");
        let mut args = vec![
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECONDS,
        ];
        args.extend_from_slice(action);
        self.run("pg_ctl", &args);
    }

    /// Starts the server; returns when it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.pg_ctl(&["-o", &options, "start"]);
    }

    /// Stops the server (fast shutdown: sessions are cut); returns when it is down.
    pub fn stop_server(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Down at once, whatever state the test left it in; then the files go.
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command
            .arg("-D")
            .arg(&data)
            .args([
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECONDS,
                "-m",
                "immediate",
                "stop",
            ])
            .current_dir(&self.dir);
        // Not `output_within`: a panic in a drop during a panic would abort.
        if let Ok(child) = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            let _ = super::exit_within(child, Duration::from_secs(70));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
