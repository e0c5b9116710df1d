//! Which processes the agent may sample.
//!
//! The agent learns a service's processes from the `process.pid` its spans carry, and
//! anything that can reach the OTLP port can send a span. So before sampling a
//! process the agent checks it against its own configuration, not the span:
//!
//! * never the host's init (pid 1): a service in a container that names no container
//!   reports pid 1, which on the host is another process;
//! * with `--profile-cgroup`, only processes whose cgroup path matches one of the
//!   globs (e.g. `*kubepods*`: only pods, never the node's own daemons).
//!
//! `--profile-allow` (which services) is checked where sessions and triggers start.

use std::path::{Path, PathBuf};

/// The sampling policy of an agent: where `/proc` is and the allowed cgroups.
#[derive(Debug, Clone)]
pub struct ProcessPolicy {
    proc_root: PathBuf,
    cgroups: Option<Vec<String>>,
}

impl ProcessPolicy {
    pub fn new(proc_root: impl Into<PathBuf>, cgroups: Option<Vec<String>>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cgroups,
        }
    }

    /// `Ok` if `pid` may be sampled, else why not.
    pub fn check(&self, pid: u32) -> Result<(), String> {
        let dir = self.proc_root.join(pid.to_string());
        if pid == 0 || !dir.exists() {
            return Err("the process is gone".to_string());
        }
        if pid == 1 {
            return Err(
                "pid 1 is the host's init: a span from a container must carry \
                        container.id or k8s.pod.uid for the agent to find its process"
                    .to_string(),
            );
        }
        let Some(globs) = &self.cgroups else {
            return Ok(());
        };
        let cgroups = cgroup_paths(&dir);
        if cgroups
            .iter()
            .any(|path| globs.iter().any(|glob| glob_matches(glob, path)))
        {
            return Ok(());
        }
        Err(format!(
            "its cgroup {} matches no --profile-cgroup pattern ({})",
            cgroups.first().map_or("(unreadable)", String::as_str),
            globs.join(", ")
        ))
    }
}

/// The cgroup paths in `/proc/PID/cgroup` (one line per hierarchy: `ID:CONTROLLERS:PATH`).
fn cgroup_paths(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .map(str::to_string)
        .collect()
}

/// `*` matches any run of characters (slashes too); everything else matches itself.
fn glob_matches(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (glob, text, matches) in [
            (
                "*kubepods*",
                "/kubepods.slice/kubepods-pod1.slice/cri-x.scope",
                true,
            ),
            ("*kubepods*", "/system.slice/sshd.service", false),
            ("/system.slice/*", "/system.slice/sshd.service", true),
            ("*.service", "/system.slice/sshd.service", true),
            ("*.service", "/system.slice/sshd.scope", false),
            ("/a/*/c", "/a/b/x/c", true),
            ("/a/*/c", "/a/c", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*a", "aba", true),
            ("a*b*a", "ab", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_matches(glob, text), matches, "{glob} ~ {text}");
        }
    }

    fn fake_proc(processes: &[(u32, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (pid, cgroup) in processes {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }
        root
    }

    #[test]
    fn only_allowed_cgroups_and_never_init() {
        let root = fake_proc(&[
            (1, "0::/init.scope\n"),
            (
                10,
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope\n",
            ),
            (20, "0::/system.slice/kubelet.service\n"),
            (
                30,
                "12:cpu,cpuacct:/kubepods/pod1/abc\n1:name=systemd:/kubepods/pod1/abc\n",
            ),
        ]);
        let any = ProcessPolicy::new(root.path(), None);
        assert!(any.check(10).is_ok() && any.check(20).is_ok());
        assert!(any.check(1).unwrap_err().contains("host's init"));
        assert!(any.check(99).unwrap_err().contains("gone"));

        let pods = ProcessPolicy::new(root.path(), Some(vec!["*kubepods*".to_string()]));
        assert!(pods.check(10).is_ok());
        assert!(pods.check(30).is_ok(), "cgroup v1 paths count too");
        let refused = pods.check(20).unwrap_err();
        assert!(
            refused.contains("/system.slice/kubelet.service") && refused.contains("*kubepods*"),
            "{refused}"
        );
    }
}
