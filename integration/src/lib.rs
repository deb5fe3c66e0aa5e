//! Harness for Stockade's end-to-end tests: a private containerd (and dockerd) in a
//! temp dir, the test image built offline and imported, and leak checks.
//!
//! - [`command`]: the command runner ([`Out`], [`run`], [`expect_code`], [`in_tty`]).
//! - [`paths`]: the workspace root and the shim binary under test.
//! - [`containerd`]: a private containerd ([`TestContainerd`]).
//! - [`docker`]: a private dockerd on top of it ([`TestDocker`]) and its bridge.
//! - [`image`]: the test image builder ([`build_image`]).
//! - [`suite`]: the suite runner ([`start_suite`], [`run_cases`], [`skip_reason`]).
//! - [`vm`]: VM config helpers ([`guest_config`], [`hypervisor_toml`]).
//! - [`pss`]: PSS measurement of a VM sandbox's host processes.
//! - [`cri`]: containerd's CRI plugin and a CRI client, as kubelet uses it.
//! - [`escape`]: the escape suite, run in every kind of exec in both backends.
//! - [`hostile`]: a compromised guest (the test-only hostile agent) against the host.
//!
//! ```no_run
//! use stockade_integration::{TestContainerd, build_image};
//! let env = TestContainerd::start().unwrap();
//! let tar = env.dir.path().join("busybox.tar");
//! build_image(&tar).unwrap();
//! env.import_image(&tar).unwrap();
//! let out = env.run_rm("t1", &["echo", "hi"]);
//! assert_eq!(out.stdout, "hi\n");
//! ```

pub mod bench;
pub mod bootstrap;
pub mod command;
pub mod containerd;
pub mod cri;
pub mod ctr_cni;
pub mod daemons;
pub mod docker;
pub mod docker_options;
pub mod escape;
pub mod hostile;
pub mod image;
pub mod paths;
pub mod pool;
pub mod pss;
pub mod suite;
pub mod timens;
pub mod vm;

pub use command::{Out, expect_code, in_tty, run, run_with_stdin};
pub use containerd::TestContainerd;
pub use daemons::daemons;
pub use docker::{TEST_BRIDGE, TEST_BRIDGE_CIDR, TestDocker};
pub use image::{build_image, build_image_as};
pub use paths::{shim_dir, workspace_root};
pub use pss::{SandboxMemory, pids, pss_kib, report_sandbox_memory, sandbox_memory};
pub use suite::{Case, run_cases, skip_reason, start_suite};
pub use vm::{cloud_guest_assets, guest_assets, guest_config, guest_config_at, hypervisor_toml};

pub const RUNTIME: &str = "io.containerd.stockade.v2";
pub const NAMESPACE: &str = "stockade-test";
pub const IMAGE: &str = "stockade.test/busybox:latest";
