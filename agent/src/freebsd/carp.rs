//! CARP (high-availability) state per virtual host id, from `ifconfig`.
//!
//! FreeBSD's `ifconfig` prints, for each CARP vhid configured on an
//! interface, a line `\tcarp: <STATE> vhid <n> advbase <n> advskew <n>`
//! (`sbin/ifconfig/carp.c`, `carp_status`; 14.x may append `peer …` /
//! `vrrpv3` fields). Interface blocks start unindented with `<name>: flags=`.
//! Exported: `nodewatch_carp_master{interface,vhid}` (1 MASTER, 0 otherwise)
//! and `nodewatch_carp_state{interface,vhid,state}` (1 for the current state:
//! `init`, `backup`, `master`), so a failover shows on both nodes of a pair.

use crate::collector::{CollectError, Collector, Sink};
use crate::sys::command::CommandRunner;

/// CARP states (`carp_states[]` in `sys/netinet/ip_carp.c`).
pub const STATES: &[&str] = &["init", "backup", "master"];

/// One vhid on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarpVhid {
    pub interface: String,
    pub vhid: u32,
    /// Upper case as printed: `MASTER`, `BACKUP`, `INIT`.
    pub state: String,
}

/// Parses `ifconfig` output (all interfaces).
#[must_use]
pub fn parse_ifconfig(text: &str) -> Vec<CarpVhid> {
    let mut out = Vec::new();
    let mut interface: Option<&str> = None;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            interface = line
                .split_once(": flags=")
                .map(|(name, _)| name)
                .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace));
            continue;
        }
        let Some(rest) = line.trim_start().strip_prefix("carp: ") else {
            continue;
        };
        let Some(interface) = interface else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let Some(state) = fields.first() else {
            continue;
        };
        let Some(vhid) = fields
            .iter()
            .position(|f| *f == "vhid")
            .and_then(|i| fields.get(i + 1))
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        out.push(CarpVhid {
            interface: interface.to_string(),
            vhid,
            state: (*state).to_string(),
        });
    }
    out
}

/// Writes the samples for every vhid.
pub fn write(sink: &mut Sink, vhids: &[CarpVhid]) {
    for c in vhids {
        let vhid = c.vhid.to_string();
        let state = c.state.to_ascii_lowercase();
        let labels = [("interface", c.interface.as_str()), ("vhid", vhid.as_str())];
        sink.gauge(
            "nodewatch_carp_master",
            "Whether this host is CARP master for the vhid (1) or not (0).",
            &labels,
            if state == "master" { 1.0 } else { 0.0 },
        );
        let mut states: Vec<&str> = STATES.to_vec();
        if !states.contains(&state.as_str()) {
            states.push(&state);
        }
        for s in states {
            sink.gauge(
                "nodewatch_carp_state",
                "CARP state of the vhid: 1 for the current state.",
                &[labels[0], labels[1], ("state", s)],
                if s == state { 1.0 } else { 0.0 },
            );
        }
    }
}

/// Runs `ifconfig` each collection.
pub struct CarpCollector {
    runner: Box<dyn CommandRunner>,
}

impl CarpCollector {
    #[must_use]
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self { runner }
    }
}

impl Collector for CarpCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let out = self
            .runner
            .run("ifconfig", &[])
            .map_err(|e| CollectError::Other(e.to_string()))?;
        if let Some(out) = out {
            write(sink, &parse_ifconfig(&out));
        }
        Ok(())
    }
}

#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::CollectorSpec::new("carp", |_| {
        Ok(Box::new(CarpCollector::new(Box::new(
            crate::sys::command::SystemRunner::default(),
        ))))
    });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{fuzz_inputs, value};

    /// `ifconfig` of an OPNsense HA node, in the format of FreeBSD 13/14
    /// `sbin/ifconfig` (`carp_status`: `"\tcarp: %s vhid %d advbase %d advskew %d"`).
    const IFCONFIG: &str = "\
vtnet0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\tdescription: WAN (wan)
\toptions=800a8<VLAN_MTU,JUMBO_MTU,VLAN_HWCSUM,LINKSTATE>
\tether 52:54:00:12:34:56
\tinet 192.0.2.2 netmask 0xffffff00 broadcast 192.0.2.255
\tinet 192.0.2.1 netmask 0xffffff00 broadcast 192.0.2.255 vhid 1
\tcarp: MASTER vhid 1 advbase 1 advskew 0
\tmedia: Ethernet autoselect (10Gbase-T <full-duplex>)
\tstatus: active
vtnet1: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\tinet 10.0.0.2 netmask 0xffffff00 broadcast 10.0.0.255
\tinet 10.0.0.1 netmask 0xffffff00 broadcast 10.0.0.255 vhid 3
\tcarp: BACKUP vhid 3 advbase 1 advskew 100
\tcarp: INIT vhid 4 advbase 1 advskew 0 peer 224.0.0.18 peer6 ff02::12
lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
";

    #[test]
    fn parses_vhids() {
        let v = parse_ifconfig(IFCONFIG);
        let got: Vec<(&str, u32, &str)> = v
            .iter()
            .map(|c| (c.interface.as_str(), c.vhid, c.state.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("vtnet0", 1, "MASTER"),
                ("vtnet1", 3, "BACKUP"),
                ("vtnet1", 4, "INIT")
            ]
        );
        let mut sink = Sink::new();
        write(&mut sink, &v);
        assert_eq!(
            value(
                &sink,
                "nodewatch_carp_master",
                &[("interface", "vtnet0"), ("vhid", "1")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_carp_master",
                &[("interface", "vtnet1"), ("vhid", "3")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &sink,
                "nodewatch_carp_state",
                &[("interface", "vtnet1"), ("vhid", "3"), ("state", "backup")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn never_panics() {
        for input in fuzz_inputs(&[IFCONFIG.to_string()], 0xca59) {
            write(&mut Sink::new(), &parse_ifconfig(&input));
        }
    }
}
