//! Which memory cgroup a process is in, and which pod and container that
//! cgroup belongs to, from the cgroup path alone.
//!
//! Pure parsers (`parse_proc_cgroup`, `identify`) split from the file reads
//! (`memcg_of_pid`, `memcg_stats`, `path_of_cgroup_id`) so tests run on the
//! fixture table taken from coroot-node-agent and on real `/proc/<pid>/cgroup`
//! captures (`tests/fixtures/cgroup/`).
//!
//! Path shapes handled (kubelet's two cgroup drivers × the three runtimes):
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<64-hex id>`, CRI-O `.../crio-<id>`
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/{cri-containerd,crio,docker}-<id>.scope`
//! - containerd's systemd "colon" notation: `.../kubepods-…-pod<uid>.slice:cri-containerd:<id>`
//! - plain Docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::collector::Paths;

/// The memory cgroup of a process as `/proc/<pid>/cgroup` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memcg {
    /// Path below the hierarchy root, e.g. `/kubepods/burstable/pod…/…`.
    pub path: String,
    /// Which hierarchy the path is relative to.
    pub version: CgroupVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The v1 `memory` controller hierarchy (`/sys/fs/cgroup/memory`).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup` on v2 hosts).
    V2,
}

/// Container identity read from a cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Kubernetes pod UID with dashes (`0d08203e-255a-11e9-8cd9-0007cb0b2cc8`),
    /// or the 32-hex config hash kubelet uses for static pods.
    pub pod_uid: Option<String>,
    /// Full container id (64 hex digits).
    pub container_id: Option<String>,
    /// `docker`, `containerd` or `cri-o` when the path says so.
    pub runtime: Option<&'static str>,
}

/// Picks the memory cgroup from the text of `/proc/<pid>/cgroup`: the v1
/// `memory` controller line when there is one (hybrid hosts limit memory
/// there), otherwise the unified `0::` line. `None` when neither is present.
#[must_use]
pub fn parse_proc_cgroup(text: &str) -> Option<Memcg> {
    let mut unified = None;
    for line in text.lines() {
        // hierarchy-ID:controller-list:cgroup-path; the path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some(Memcg {
                path: path.to_string(),
                version: CgroupVersion::V1,
            });
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(Memcg {
                path: path.to_string(),
                version: CgroupVersion::V2,
            });
        }
    }
    unified
}

/// Reads pod UID and container id out of a cgroup path.
#[must_use]
pub fn identify(path: &str) -> Identity {
    let mut id = Identity::default();
    for segment in path.split('/') {
        // containerd's systemd notation packs three parts into one segment:
        // `<slice>:cri-containerd:<id>`.
        let mut colon = segment.split(':');
        let head = colon.next().unwrap_or_default();
        if let (Some(runtime), Some(cid)) = (colon.next(), colon.next()) {
            if let Some(uid) = pod_uid_of(head) {
                id.pod_uid = Some(uid);
            }
            if is_container_id(cid) {
                id.container_id = Some(cid.to_string());
                id.runtime = runtime_name(runtime);
            }
            continue;
        }
        if let Some(uid) = pod_uid_of(segment) {
            id.pod_uid = Some(uid);
            continue;
        }
        if let Some((cid, runtime)) = container_of(segment) {
            id.container_id = Some(cid.to_string());
            id.runtime = runtime;
        }
    }
    // A bare 64-hex segment is a container only where the layout says so:
    // below a pod (cgroupfs driver) or below /docker.
    if id.container_id.is_some() && id.runtime.is_none() && id.pod_uid.is_none() {
        let docker = path.split('/').any(|s| s == "docker");
        if docker {
            id.runtime = Some("docker");
        } else {
            id.container_id = None;
        }
    }
    id
}

fn runtime_name(prefix: &str) -> Option<&'static str> {
    match prefix {
        "docker" => Some("docker"),
        "cri-containerd" | "containerd" => Some("containerd"),
        "crio" => Some("cri-o"),
        _ => None,
    }
}

/// `<runtime>-<id>[.scope]` or a bare id.
fn container_of(segment: &str) -> Option<(&str, Option<&'static str>)> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    if is_container_id(s) {
        return Some((s, None));
    }
    let (prefix, cid) = s.rsplit_once('-')?;
    if !is_container_id(cid) {
        return None;
    }
    let runtime = runtime_name(prefix)?;
    Some((cid, Some(runtime)))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = if let Some(rest) = s.strip_prefix("pod") {
        rest
    } else if s.starts_with("kubepods") {
        let at = s.rfind("-pod")?;
        &s[at + 4..]
    } else {
        return None;
    };
    let uid = uid.replace('_', "-");
    let hex_or_dash = uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    // UUID (36 with dashes) or static-pod hash (32 hex).
    let ok = hex_or_dash
        && ((uid.len() == 36 && uid.bytes().filter(|&b| b == b'-').count() == 4)
            || (uid.len() == 32 && !uid.contains('-')));
    ok.then_some(uid)
}

/// The memory cgroup of a live process, from `/proc/<pid>/cgroup`.
#[must_use]
pub fn memcg_of_pid(paths: &Paths, pid: u32) -> Option<Memcg> {
    let text = std::fs::read_to_string(paths.proc(&format!("{pid}/cgroup"))).ok()?;
    parse_proc_cgroup(&text)
}

/// Directory of a memory cgroup on this host.
#[must_use]
pub fn memcg_dir(paths: &Paths, memcg: &Memcg) -> PathBuf {
    let rel = memcg.path.trim_start_matches('/');
    match memcg.version {
        CgroupVersion::V1 => paths.sys("fs/cgroup/memory").join(rel),
        CgroupVersion::V2 => unified_root(paths).join(rel),
    }
}

/// Root of the unified hierarchy: `/sys/fs/cgroup` on v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid v1 hosts (systemd's layout).
#[must_use]
pub fn unified_root(paths: &Paths) -> PathBuf {
    let root = paths.sys("fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root
    } else {
        root.join("unified")
    }
}

/// Limit and usage of a memory cgroup in bytes. A limit of 0 means none
/// (v1's `PAGE_COUNTER_MAX`-derived huge value and v2's `max` both map to 0).
#[must_use]
pub fn memcg_stats(paths: &Paths, memcg: &Memcg) -> (u64, u64) {
    let dir = memcg_dir(paths, memcg);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (limit, usage) = match memcg.version {
        CgroupVersion::V1 => (read("memory.limit_in_bytes"), read("memory.usage_in_bytes")),
        CgroupVersion::V2 => (read("memory.max"), read("memory.current")),
    };
    (
        limit.as_deref().map_or(0, parse_limit),
        usage
            .as_deref()
            .and_then(|u| u.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// v1 reports "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712
/// on 64-bit with 4 KiB pages, mm/memcontrol.c); v2 writes `max`.
#[must_use]
pub fn parse_limit(text: &str) -> u64 {
    /// Anything at or above 2^62 bytes is the unlimited sentinel, not a real limit.
    const UNLIMITED_FLOOR: u64 = 1 << 62;
    match text.trim() {
        "max" => 0,
        t => t
            .parse::<u64>()
            .ok()
            .filter(|&v| v < UNLIMITED_FLOOR)
            .unwrap_or(0),
    }
}

/// Most directories walked when mapping a cgroup id to its path: a busy
/// Kubernetes node has a few thousand cgroups; the walk gives up beyond this
/// rather than stall the event.
const MAX_CGROUP_WALK: usize = 20_000;

/// The hierarchy that holds the memory controller: the v1 `memory` mount
/// when there is one (v1 and hybrid hosts), else the unified one.
#[must_use]
pub fn memory_hierarchy(paths: &Paths) -> (PathBuf, CgroupVersion) {
    let v1 = paths.sys("fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        (v1, CgroupVersion::V1)
    } else {
        (unified_root(paths), CgroupVersion::V2)
    }
}

/// The memory cgroup with kernfs id `id` (as the `tp_btf` program reads it).
#[must_use]
pub fn memcg_of_id(paths: &Paths, id: u64) -> Option<Memcg> {
    let (root, version) = memory_hierarchy(paths);
    path_of_cgroup_id(&root, id).map(|path| Memcg { path, version })
}

/// Finds the path below `root` whose cgroup id is `id`, for when the victim
/// has already exited. The id is the kernfs node id, which cgroupfs exposes
/// as the directory's inode number (64-bit ids since v5.5).
#[must_use]
pub fn path_of_cgroup_id(root: &Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = 0usize;
    walk_cgroups(root, |dir| {
        seen += 1;
        if seen > MAX_CGROUP_WALK {
            return ControlFlow::Break(None);
        }
        match std::fs::metadata(dir) {
            Ok(meta) if meta.ino() == id => ControlFlow::Break(relative(root, dir)),
            _ => ControlFlow::Continue(()),
        }
    })
    .flatten()
}

/// `dir` as a cgroup path: relative to the hierarchy `root`, with a leading `/`.
fn relative(root: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.display()))
}

/// Visits `root` and every directory below it, depth first, until `visit`
/// breaks; its break value, or `None` when it never did.
fn walk_cgroups<B>(root: &Path, mut visit: impl FnMut(&Path) -> ControlFlow<B>) -> Option<B> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let ControlFlow::Break(b) = visit(&dir) {
            return Some(b);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    None
}

/// The `oom_kill` counter in a memcg's `memory.oom_control` (v1, local to
/// the group since v4.13) or `memory.events.local` / `memory.events` (v2).
#[must_use]
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("oom_kill"))
            .then(|| f.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

fn read_oom_kill(dir: &Path, version: CgroupVersion) -> Option<u64> {
    let files: &[&str] = match version {
        CgroupVersion::V1 => &["memory.oom_control"],
        // .local counts only the group's own kills (v5.2+); memory.events
        // also counts descendants', which still finds the right subtree.
        CgroupVersion::V2 => &["memory.events.local", "memory.events"],
    };
    files.iter().find_map(|f| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| parse_oom_kill(&t))
    })
}

/// Per-memcg OOM kill counters, to find which group lost a task when
/// nothing else can say (under lockdown=confidentiality on a cgroup v1 host,
/// where /proc shows an exiting task in `/`). The kernel counts the kill
/// before it marks the victim (`__oom_kill_process()`, `mm/oom_kill.c`), so
/// by the time the event is read the group's counter has moved.
#[derive(Debug)]
pub struct OomCounters {
    root: PathBuf,
    version: CgroupVersion,
    counts: std::collections::HashMap<String, u64>,
}

impl OomCounters {
    /// Takes the baseline.
    #[must_use]
    pub fn snapshot(paths: &Paths) -> Self {
        let (root, version) = memory_hierarchy(paths);
        let counts = scan_oom_kills(&root, version);
        Self {
            root,
            version,
            counts,
        }
    }

    /// Rescans; returns the deepest group whose counter rose since the last
    /// scan (the victim's own group, not an ancestor that counts it too),
    /// and makes the new counts the baseline.
    pub fn rescan(&mut self) -> Option<Memcg> {
        let now = scan_oom_kills(&self.root, self.version);
        let best = pick_increased(&self.counts, &now);
        self.counts = now;
        best.map(|path| Memcg {
            path,
            version: self.version,
        })
    }
}

/// The deepest path whose count rose (ties: the larger rise, then the name).
fn pick_increased(
    before: &std::collections::HashMap<String, u64>,
    now: &std::collections::HashMap<String, u64>,
) -> Option<String> {
    now.iter()
        .filter_map(|(path, n)| {
            let rise = n.saturating_sub(before.get(path).copied().unwrap_or(0));
            (rise > 0).then_some((path, rise))
        })
        .max_by(|a, b| {
            let depth = |p: &str| p.matches('/').count();
            depth(a.0)
                .cmp(&depth(b.0))
                .then(a.1.cmp(&b.1))
                .then(b.0.cmp(a.0))
        })
        .map(|(p, _)| p.clone())
}

fn scan_oom_kills(root: &Path, version: CgroupVersion) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    walk_cgroups(root, |dir| {
        if out.len() >= MAX_CGROUP_WALK {
            return ControlFlow::Break(());
        }
        if let (Some(n), Some(path)) = (read_oom_kill(dir, version), relative(root, dir)) {
            out.insert(path, n);
        }
        ControlFlow::Continue(())
    });
    out
}

#[cfg(test)]
#[allow(clippy::many_single_char_names)] // tests: short names for table rows
mod tests {
    use super::*;

    fn fixture(rel: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/cgroup")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Every row of coroot-node-agent's `TestContainerByCgroup` table.
    /// Rows coroot tags Docker/CRI-O/containerd must give the same id; rows it
    /// tags as systemd services, LXC, Talos runtime or standalone processes
    /// must give no pod. One deliberate difference: a `cri-containerd-<id>.scope`
    /// outside kubepods (L224) is a containerd container to us (it has
    /// memory of its own that can be OOM-killed), where coroot ignores it.
    #[test]
    fn coroot_table() {
        let table = fixture("cgroup-paths-container-detection.tsv");
        let mut rows = 0;
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let (path, kind, want, src) = (cols[0], cols[1], cols[2], cols[3]);
            let got = identify(path);
            match kind {
                "ContainerTypeDocker" | "ContainerTypeCrio" | "ContainerTypeContainerd" => {
                    assert_eq!(got.container_id.as_deref(), Some(want), "{src} {path}");
                    let runtime = match kind {
                        "ContainerTypeDocker" => "docker",
                        "ContainerTypeCrio" => "cri-o",
                        _ => "containerd",
                    };
                    // cgroupfs k8s paths with a bare id don't name the runtime.
                    if got.runtime.is_some() {
                        assert_eq!(got.runtime, Some(runtime), "{src} {path}");
                    }
                }
                _ if src == "L224" => {
                    assert_eq!(got.runtime, Some("containerd"), "{src}");
                    assert_eq!(got.pod_uid, None, "{src}");
                }
                _ => {
                    assert_eq!(got.container_id, None, "{src} {path}");
                    assert_eq!(got.pod_uid, None, "{src} {path}");
                }
            }
            rows += 1;
        }
        assert_eq!(rows, 28);
    }

    #[test]
    fn pod_uids() {
        let cases = [
            (
                "/kubepods/besteffort/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8/671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55/kube-proxy",
                "0d08203e-255a-11e9-8cd9-0007cb0b2cc8",
            ),
            (
                "/kubepods/burstable/pod9729a196c4723b60ab401eaff722982d/d166c6190614efc91956b78e96d74c3fbc96ca8e91948c36de3bc5b0e7b27d48",
                "9729a196c4723b60ab401eaff722982d",
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2942c55e_c9cb_428a_93f4_eaf89c1f3ce0.slice/crio-49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59.scope",
                "2942c55e-c9cb-428a-93f4-eaf89c1f3ce0",
            ),
            (
                "/system.slice/containerd.service/kubepods-burstable-pod4ed02c0b_0df8_4d14_a30e_fd589ee4143a.slice:cri-containerd:d4a9f9195eaf7e4a729f24151101e1de61f1398677e7b82acfb936dff0b4ce55",
                "4ed02c0b-0df8-4d14-a30e-fd589ee4143a",
            ),
            (
                "/kubepods.slice/kubepods-pod22949dce_fd8b_11ea_8ede_98f2b32c645c.slice/docker-b15a5bdedd2e7645c3be271364324321b908314e4c77857bbfd32a041148c07f.scope",
                "22949dce-fd8b-11ea-8ede-98f2b32c645c",
            ),
        ];
        for (path, uid) in cases {
            assert_eq!(identify(path).pod_uid.as_deref(), Some(uid), "{path}");
        }
    }

    /// Qard/container-info's expected result for its fixture: the memory line wins.
    #[test]
    fn proc_cgroup_v1_container_info() {
        let text = fixture("proc-pid-cgroup-v1-cgroupfs-kubepods-besteffort-container-info.txt");
        let m = parse_proc_cgroup(&text).unwrap();
        assert_eq!(m.version, CgroupVersion::V1);
        let id = identify(&m.path);
        assert_eq!(
            id.container_id.as_deref(),
            Some("34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376")
        );
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("74c13223-5a00-11e9-b385-42010a80018d")
        );
    }

    /// dd-trace-go's expected id for its burstable fixture (no memory line: falls back to nothing).
    #[test]
    fn proc_cgroup_v1_ddtrace() {
        let text = fixture("proc-pid-cgroup-v1-cgroupfs-kubepods-burstable-ddtracego.txt");
        // This capture has no memory controller line and no unified line.
        assert_eq!(parse_proc_cgroup(&text), None);
        let path = text.lines().next().unwrap().splitn(3, ':').nth(2).unwrap();
        assert_eq!(
            identify(path).container_id.as_deref(),
            Some("8c046cb0b72cd4c99f51b5591cd5b095967f58ee003710a45280c28ee1a9c7fa")
        );
        // Cloud Foundry Garden ids are not container runtimes we attribute.
        let garden = fixture("proc-pid-cgroup-v1-cloudfoundry-garden-ddtracego.txt");
        let m = parse_proc_cgroup(&garden).unwrap();
        assert_eq!(
            m.path,
            "/system.slice/garden.service/garden/6f265890-5165-7fab-6b52-18d1"
        );
        assert_eq!(identify(&m.path), Identity::default());
    }

    /// coroot's /proc/<pid>/cgroup captures: every file parses, v2 files give the `0::` path.
    #[test]
    fn coroot_proc_files() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cgroup/coroot-proc");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path().join("cgroup")).unwrap();
            let m = parse_proc_cgroup(&text);
            let has_memory_or_unified = text.lines().any(|l| {
                let mut p = l.splitn(3, ':');
                let (id, c) = (p.next(), p.next());
                c.is_some_and(|c| c.split(',').any(|x| x == "memory"))
                    || (id == Some("0") && c == Some(""))
            });
            assert_eq!(m.is_some(), has_memory_or_unified, "{}", e.path().display());
            n += 1;
        }
        assert_eq!(n, 13);
        let v2 = std::fs::read_to_string(dir.join("400/cgroup")).unwrap();
        let m = parse_proc_cgroup(&v2).unwrap();
        assert_eq!(m.version, CgroupVersion::V2, "{v2}");
    }

    #[test]
    fn oom_kill_counters() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"),
            Some(2)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);
        let before: std::collections::HashMap<String, u64> = [
            ("/".to_string(), 5),
            ("/kubepods".to_string(), 1),
            ("/kubepods/pod1/c1".to_string(), 1),
        ]
        .into();
        let mut now = before.clone();
        // v2 memory.events counts a kill in every ancestor: the deepest wins.
        now.insert("/kubepods".into(), 2);
        now.insert("/kubepods/pod1/c1".into(), 2);
        now.insert("/".into(), 6);
        assert_eq!(
            pick_increased(&before, &now).as_deref(),
            Some("/kubepods/pod1/c1")
        );
        // A group that appeared since the baseline, with a kill.
        now.insert("/kubepods/pod2/c9".into(), 1);
        let picked = pick_increased(&before, &now);
        assert!(picked
            .as_deref()
            .is_some_and(|p| p.starts_with("/kubepods/pod")));
        assert_eq!(pick_increased(&before, &before), None);
    }

    /// A fake v1 tree: the counter that moved names the group.
    #[test]
    fn oom_counters_on_a_tree() {
        let tmp = std::env::temp_dir().join(format!("nw-oomcnt-{}", std::process::id()));
        let mem = tmp.join("sys/fs/cgroup/memory");
        let grp = mem.join("kubepods/pod74c13223-5a00-11e9-b385-42010a80018d");
        std::fs::create_dir_all(&grp).unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(mem.join("memory.oom_control"), "oom_kill 0\n").unwrap();
        std::fs::write(grp.join("memory.oom_control"), "oom_kill 0\n").unwrap();
        let paths = Paths {
            procfs: tmp.join("proc"),
            sysfs: tmp.join("sys"),
            rootfs: tmp.clone(),
        };
        let mut c = OomCounters::snapshot(&paths);
        assert_eq!(c.rescan(), None);
        std::fs::write(grp.join("memory.oom_control"), "oom_kill 1\n").unwrap();
        let m = c.rescan().unwrap();
        assert_eq!(m.path, "/kubepods/pod74c13223-5a00-11e9-b385-42010a80018d");
        assert_eq!(m.version, CgroupVersion::V1);
        assert_eq!(c.rescan(), None);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), 0);
        assert_eq!(parse_limit("9223372036854771712\n"), 0);
        assert_eq!(parse_limit("33554432\n"), 33_554_432);
        assert_eq!(parse_limit("garbage"), 0);
    }

    /// No input panics: mutations of real paths and files.
    #[test]
    fn fuzz_no_panic() {
        let seeds = [
            fixture("cgroup-paths-container-detection.tsv"),
            fixture("proc-pid-cgroup-v1-cgroupfs-kubepods-besteffort-container-info.txt"),
        ];
        let alphabet: &[u8] = b"/:-_.podkubepods0123456789abcdef\n\t slicescope\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            for _ in 0..3000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..=(next() % 8) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = (next() as usize) % bytes.len();
                    match next() % 3 {
                        0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    }
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = parse_proc_cgroup(&text);
                for line in text.lines() {
                    let _ = identify(line);
                }
                let _ = parse_limit(&text);
                let _ = parse_oom_kill(&text);
            }
        }
    }
}
