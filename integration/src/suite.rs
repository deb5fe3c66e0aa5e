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
/// words), print each result, and the tail of `log` if any failed. Returns (passed, failed).
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
            }
        }
    }
    if failed > 0 {
        let log = log(suite);
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        println!("--- containerd log (last lines) ---");
        for l in tail.into_iter().rev() {
            println!("{l}");
        }
    }
    (passed, failed)
}
