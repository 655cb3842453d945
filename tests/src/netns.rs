//! Network namespaces joined to the host by a veth pair, for tests that cut
//! or thin one agent's network with firewall rules inside its namespace.
//! Host-wide state: a test that makes one holds the host lock (see
//! [`crate::host_exclusive`]).

use std::process::Command;

use crate::{find_program, missing};

/// Runs `program` with `args`; on failure, says which command and why.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a veth link to the host: the host side is
/// `<net>.1`, the namespace's side `<net>.2`. Removed on drop (deleting the
/// namespace deletes the veth pair and its firewall rules).
pub struct Netns {
    pub name: String,
    host_if: String,
    /// The host's address on the veth (`<net>.1`).
    pub host_ip: String,
    /// The namespace's address on the veth (`<net>.2`).
    pub ns_ip: String,
}

impl Netns {
    /// Namespace `name` with the veth pair `host_if` / `ns_if` on the /24
    /// `net` ("10.213.7"). A leftover of the same names from an earlier run
    /// killed before its cleanup is removed first.
    pub fn create(name: &str, host_if: &str, ns_if: &str, net: &str) -> Result<Self, String> {
        let _ = run("ip", &["netns", "del", name]);
        let _ = run("ip", &["link", "del", host_if]);
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            host_if: host_if.to_string(),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
            ],
        )?;
        run("ip", &["link", "set", ns_if, "netns", name])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", ns.host_ip), "dev", host_if],
        )?;
        run("ip", &["link", "set", host_if, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.ns_ip),
            "dev",
            ns_if,
        ])?;
        ns.exec(&["ip", "link", "set", ns_if, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`Netns::create`] where the test can run: `None` (after
    /// [`missing`], a failure under `CI=true`) without `ip` and `iptables`,
    /// without root, or where the namespace cannot be made.
    #[must_use]
    pub fn for_test(name: &str, host_if: &str, ns_if: &str, net: &str) -> Option<Self> {
        if find_program("ip").is_none() || find_program("iptables").is_none() {
            missing("ip and iptables (Debian packages `iproute2`, `iptables`)");
            return None;
        }
        if !nix::unistd::Uid::effective().is_root() {
            missing("root, for network namespaces and iptables");
            return None;
        }
        Self::create(name, host_if, ns_if, net)
            .map_err(|e| missing(&format!("network namespaces with veth: {e}")))
            .ok()
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}
