//! The runtime: each tenant's application runs as workers confined by the
//! operating system (own user, namespaces, Landlock, seccomp, cgroups), started,
//! watched and restarted by a supervisor. See `docs/runtime.md`.

pub mod cgroup;
pub mod forward;
pub mod health;
pub mod launch;
pub mod logs;
pub mod netns;
pub mod sandbox;
pub mod spec;
pub mod supervisor;
