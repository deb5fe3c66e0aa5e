//! The suite runner: whether a suite can run here, its daemons, and its named cases.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::containerd::TestContainerd;
use crate::docker::TestDocker;
use crate::image::build_image;

/// Why the end-to-end suite cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: containerd and the shim need root".into());
    }
    if let Some(bin) = crate::daemons::daemons().missing().first() {
        return Some(format!(
            "{} missing: run packaging/setup.sh --deps",
            bin.display()
        ));
    }
    None
}

/// A suite's containerd with the test image imported, and a dockerd on it with the
/// image loaded (None, with the reason printed, when dockerd does not start: the
/// Docker cases then fail on their own).
pub fn start_suite(mode: &str, extra: &str) -> Result<(TestContainerd, Option<TestDocker>)> {
    print_daemons();
    let ctd = TestContainerd::start_with(mode, extra)?;
    let tar = ctd.dir.path().join("busybox.tar");
    build_image(&tar)?;
    ctd.import_image(&tar)?;
    let docker = match TestDocker::start(&ctd) {
        Ok(d) => {
            let o = d.docker(&["load", "-i", &tar.display().to_string()]);
            if !o.ok() {
                bail!("docker load: {}", o.stderr);
            }
            Some(d)
        }
        Err(e) => {
            eprintln!("dockerd failed to start: {e:#}");
            None
        }
    };
    Ok((ctd, docker))
}

/// Which containerd and Docker the suite runs against, as they report themselves.
pub fn print_daemons() {
    let d = crate::daemons::daemons();
    let version = |bin: &std::path::Path| {
        crate::command::run(std::process::Command::new(bin).arg("--version"))
            .stdout
            .trim()
            .to_string()
    };
    println!(
        "daemons: {} ({}; {})",
        d.name,
        version(&d.containerd),
        version(&d.dockerd)
    );
}

/// One named case of a suite.
pub type Case<S> = (&'static str, fn(&S) -> Result<()>);

/// Run the cases whose names contain one of the command line's words (all without
/// words), print each result and, for a failed case, what `log` gained while it ran
/// (see [`case_log`]). Returns (passed, failed).
pub fn run_cases<S>(suite: &S, cases: &[Case<S>], log: impl Fn(&S) -> String) -> (usize, usize) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let logged_before = log(suite).len();
        match case(suite) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", start.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED ({:.1}s)\n{e:#}",
                    start.elapsed().as_secs_f64()
                );
                let log = log(suite);
                println!("--- containerd log during {name} ---");
                for l in case_log(log.get(logged_before..).unwrap_or_default()) {
                    println!("{l}");
                }
            }
        }
    }
    (passed, failed)
}

/// What a failed case's log shows: all of it when short; else its first and last lines
/// and every warning and error between (the shim's and the guest's among them), so a
/// failure minutes into a case still shows why.
pub fn case_log(log: &str) -> Vec<&str> {
    const ENDS: usize = 60;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 4 * ENDS {
        return lines;
    }
    let middle = &lines[ENDS..lines.len() - ENDS];
    let notable = |l: &&str| {
        [
            "level=warn",
            "level=error",
            "level=fatal",
            "died",
            "exited",
            "stockade-agent:",
        ]
        .iter()
        .any(|w| l.contains(w))
    };
    let kept: Vec<&str> = middle.iter().copied().filter(notable).collect();
    let mut out = lines[..ENDS].to_vec();
    out.push("[…]");
    out.extend(kept.iter().rev().take(4 * ENDS).rev());
    out.push("[…]");
    out.extend(&lines[lines.len() - ENDS..]);
    out
}

#[cfg(test)]
mod tests {
    use super::case_log;

    #[test]
    fn a_short_case_log_is_shown_whole() {
        let log = "a\n\nb\nc\n";
        assert_eq!(case_log(log), ["a", "b", "c"]);
    }

    #[test]
    fn a_long_case_log_keeps_its_ends_and_what_went_wrong_between() {
        let mut lines: Vec<String> = (0..1000).map(|i| format!("level=debug n={i}")).collect();
        lines[500] = "level=error msg=\"the VM died\"".into();
        lines[501] = "stockade-agent: level=info msg=\"process exited\"".into();
        let log = lines.join("\n");
        let shown = case_log(&log);
        assert_eq!(shown[0], "level=debug n=0");
        assert_eq!(shown[59], "level=debug n=59");
        assert_eq!(*shown.last().unwrap(), "level=debug n=999");
        assert!(shown.contains(&lines[500].as_str()));
        assert!(shown.contains(&lines[501].as_str()));
        assert!(!shown.contains(&"level=debug n=499"));
        assert_eq!(shown.len(), 60 + 1 + 2 + 1 + 60);
    }
}
