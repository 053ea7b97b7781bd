//! The sandbox RUN steps execute in: a user namespace entered once per build
//! ([`userns`]), and per step new mount, pid, ipc, uts (and net) namespaces, a prepared
//! root, Docker's default capabilities, no_new_privs and the seccomp profile ([`run`]).
//! It knows nothing about Dockerfiles or layers.

pub mod caps;
pub mod run;
pub mod seccomp;
pub mod userns;

pub use crate::cancel::Cancel;
