//! The command runner: run a command and keep what it printed and how it ended.

use std::process::{Command, Stdio};

use anyhow::Result;

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl From<std::io::Result<std::process::Output>> for Out {
    /// A signal death reads as 128 + signal, the way a shell (and runc) reports it.
    fn from(r: std::io::Result<std::process::Output>) -> Out {
        use std::os::unix::process::ExitStatusExt;
        match r {
            Ok(o) => Out {
                code: o
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Out {
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }
}

pub fn run(cmd: &mut Command) -> Out {
    cmd.stdin(Stdio::null()).output().into()
}

pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Out {
    use std::io::Write;
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err(e).into(),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().into()
}

/// Fail with the command's output unless it exited with `code`.
pub fn expect_code(out: &Out, code: i32, what: &str) -> Result<()> {
    anyhow::ensure!(
        out.code == code,
        "{what}: exit code {} (expected {code})\nstdout: {}\nstderr: {}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// Run `cmd` under a pseudo-terminal (util-linux `script`), as a user at a terminal would.
pub fn in_tty(cmd: &str) -> Out {
    run(Command::new("script").args(["-qec", cmd, "/dev/null"]))
}
