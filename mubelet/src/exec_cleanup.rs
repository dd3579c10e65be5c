//! Ending the processes of an exec whose client went away. containerd 1.6
//! (Debian's) keeps an exec's process running when its stream closes: a
//! `kubectl exec -- sleep 1000` killed on the client's side would leave
//! `sleep` in the container for good. (Newer runtimes kill it themselves.)
//!
//! An exec's process runs in the container's PID namespace but is not a
//! descendant of the container's first process: its parent is the
//! runtime's shim, outside. So the exec's process trees are found on the
//! host as the processes in the container's namespace whose parent is not
//! in it; those that appeared while the stream was open and are still
//! there when its client went away are the ones it left, and are killed
//! with everything under them. CRI has no call for this; /proc does it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A process's parent PID and PID namespace.
fn process(pid: u32) -> Option<(u32, std::path::PathBuf)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let after = stat.rsplit_once(')')?.1;
    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    Some((ppid, ns))
}

/// Every process in `init`'s PID namespace, with its parent.
fn namespace_members(init: u32) -> HashMap<u32, u32> {
    let Some((_, ns)) = process(init) else {
        return HashMap::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, their_ns) = process(pid)?;
            (their_ns == ns).then_some((pid, ppid))
        })
        .collect()
}

/// The roots of the container's exec processes: members whose parent is
/// outside the namespace, other than its first process.
fn exec_roots(init: u32, members: &HashMap<u32, u32>) -> HashSet<u32> {
    members
        .iter()
        .filter(|(pid, ppid)| **pid != init && !members.contains_key(*ppid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// A process's command line, as exec gave it.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The exec processes one stream started: the roots that appear in the
/// container after it opened, running its command (looked for for up to
/// two seconds, the time a runtime takes to start one). A command that
/// replaced itself at once (`exec`) is found as whatever new root
/// appeared, and an exec into the same container started by someone else
/// in that same moment could then be taken for this one's.
pub struct Tracker {
    init: u32,
    before: HashSet<u32>,
    command: Vec<String>,
    mine: Arc<Mutex<HashSet<u32>>>,
}

/// Of the roots `new`, those running `command`, else all of them.
fn pick(new: HashSet<u32>, command: &[String]) -> HashSet<u32> {
    let running_it: HashSet<u32> = new
        .iter()
        .copied()
        .filter(|p| cmdline(*p) == command)
        .collect();
    if running_it.is_empty() {
        new
    } else {
        running_it
    }
}

impl Tracker {
    /// Call before the stream opens.
    pub fn start(init: u32, command: Vec<String>) -> Tracker {
        let before = exec_roots(init, &namespace_members(init));
        let mine: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let (found, seen_before, wanted) = (mine.clone(), before.clone(), command.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = exec_roots(init, &namespace_members(init));
                let new: HashSet<u32> = now.difference(&seen_before).copied().collect();
                if new.is_empty() {
                    continue;
                }
                let picked = pick(new, &wanted);
                let exact = picked.iter().any(|p| cmdline(*p) == wanted);
                *found.lock().unwrap_or_else(|p| p.into_inner()) = picked;
                if exact {
                    return;
                }
            }
        });
        Tracker {
            init,
            before,
            command,
            mine,
        }
    }

    /// Kills (SIGKILL) this stream's exec processes that still run, and
    /// everything under them. Returns how many it killed.
    pub fn kill(&self) -> usize {
        let members = namespace_members(self.init);
        let roots = exec_roots(self.init, &members);
        let mut mine = self.mine.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if mine.is_empty() {
            // Gone before the search above saw it start: what is new now.
            mine = pick(
                roots.difference(&self.before).copied().collect(),
                &self.command,
            );
        }
        let mut doomed: Vec<u32> = mine.intersection(&roots).copied().collect();
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            doomed.extend(
                members
                    .iter()
                    .filter(|(_, pp)| **pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        doomed
            .into_iter()
            .filter_map(|pid| {
                i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
            })
            .filter(|pid| {
                rustix::process::kill_process(*pid, rustix::process::Signal::KILL).is_ok()
            })
            .count()
    }
}
