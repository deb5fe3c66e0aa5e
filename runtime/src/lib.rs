//! Sandbox and container lifecycle for Stockade, independent of containerd.
//!
//! The shim (`shim/`) translates containerd's task API into calls on [`Runtime`];
//! this crate owns configuration, backend selection and the backends themselves.

mod backend;
pub mod config;
pub mod error;
pub mod exits;
pub mod linux;
pub mod logfmt;
pub mod mounts;
mod private;
pub mod probe;
mod process;
pub mod runtime;
pub mod select;
pub mod stdio;
#[cfg(feature = "vm")]
pub mod vm;

pub use config::Config;
pub use error::{Error, Result};
pub use runtime::{CreateRequest, Event, ExitInfo, ProcessSpec, Runtime, Status, TaskState};
pub use stdio::StdioPaths;
