//! The containerd and Docker the suites run against: the machine's own (containerd 1.7
//! and Docker 26, installed by `packaging/setup.sh --deps`), or the second column of the
//! version matrix, containerd 2.1 and Docker 28 from Debian unstable, which setup.sh
//! unpacks under [`MATRIX_PREFIX`] (never installed over the system's). The
//! environment variable `STOCKADE_DAEMONS=2` picks the second.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where setup.sh unpacks containerd 2.x and Docker 28 (`dpkg -x`).
pub const MATRIX_PREFIX: &str = "/var/cache/stockade/matrix/containerd2";

pub struct Daemons {
    /// As the README's compatibility table names it.
    pub name: &'static str,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub dockerd: PathBuf,
    pub docker: PathBuf,
    /// First on the daemons' `PATH`: the release's own helpers (runc's shim,
    /// docker-init, docker-proxy).
    pub bin_dirs: Vec<PathBuf>,
    /// containerd's config format: 2 (1.x) or 3 (2.x).
    pub config_version: u32,
}

impl Daemons {
    fn system() -> Daemons {
        Daemons {
            name: "containerd 1.7 + Docker 26",
            containerd: "/usr/bin/containerd".into(),
            ctr: "/usr/bin/ctr".into(),
            dockerd: "/usr/sbin/dockerd".into(),
            docker: "/usr/bin/docker".into(),
            bin_dirs: Vec::new(),
            config_version: 2,
        }
    }

    fn matrix() -> Daemons {
        let p = Path::new(MATRIX_PREFIX);
        Daemons {
            name: "containerd 2.1 + Docker 28",
            containerd: p.join("usr/bin/containerd"),
            ctr: p.join("usr/bin/ctr"),
            dockerd: p.join("usr/sbin/dockerd"),
            docker: p.join("usr/bin/docker"),
            bin_dirs: vec![p.join("usr/bin"), p.join("usr/sbin")],
            config_version: 3,
        }
    }

    /// The binaries that must exist for a suite to run.
    pub fn missing(&self) -> Vec<&Path> {
        [&self.containerd, &self.ctr]
            .into_iter()
            .map(PathBuf::as_path)
            .filter(|p| !p.exists())
            .collect()
    }

    /// `path` with the release's helper dirs first.
    pub fn path_with(&self, path: &str) -> String {
        let mut dirs: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.push(path.to_string());
        dirs.join(":")
    }
}

/// The daemons this run tests (see the module's documentation).
pub fn daemons() -> &'static Daemons {
    static D: OnceLock<Daemons> = OnceLock::new();
    D.get_or_init(|| match std::env::var("STOCKADE_DAEMONS").as_deref() {
        Ok("2") => Daemons::matrix(),
        _ => Daemons::system(),
    })
}
