//! Running kernel requests inside the network namespace of the subscriber-facing interfaces.
//! Interface names resolve, and links attach, in the calling thread's namespace; the agent
//! itself (its socket, its files, its bpffs) stays where it is.

use std::{fs::File, path::PathBuf, thread};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// Runs `f` in namespace `netns` (a name under /run/netns), on a thread of its own; in the
/// caller's namespace when `netns` is `None`.
pub fn run_in<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let Some(name) = netns else {
        return Ok(f());
    };
    let path = PathBuf::from("/run/netns").join(name);
    let namespace = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&namespace, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {}", path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in network namespace {name} panicked"))?
    })
}
