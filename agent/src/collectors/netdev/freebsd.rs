//! Interface counters on FreeBSD, as node_exporter's `netdev_bsd.go`
//! (`getifaddrs(3)`, the `if_data` of each `AF_LINK` entry): the
//! `{receive,transmit}_{bytes,packets,errs,drop}` of [`super`]'s families.

use crate::collector::Sink;

pub use crate::freebsd::sysctl::IfCounters;

/// Writes the node_exporter families for each interface.
pub fn write(sink: &mut Sink, interfaces: &[IfCounters]) {
    for i in interfaces {
        super::write_device(
            sink,
            &i.name,
            [
                ("receive_bytes", i.ibytes),
                ("receive_packets", i.ipackets),
                ("receive_errs", i.ierrors),
                ("receive_drop", i.iqdrops),
                ("transmit_bytes", i.obytes),
                ("transmit_packets", i.opackets),
                ("transmit_errs", i.oerrors),
                ("transmit_drop", i.oqdrops),
            ],
        );
    }
}

/// Registry entry: reads `getifaddrs` each collection.
#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::stateless_spec!("netdev", |sink| {
        let ifs = crate::freebsd::sysctl::interface_counters()
            .map_err(|e| crate::collector::CollectError::other("getifaddrs", e))?;
        write(sink, &ifs);
        Ok(())
    });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;

    #[test]
    fn names_and_values() {
        let mut sink = Sink::new();
        write(
            &mut sink,
            &[IfCounters {
                name: "vtnet0".into(),
                ibytes: 1,
                obytes: 2,
                ipackets: 3,
                opackets: 4,
                ierrors: 5,
                oerrors: 6,
                iqdrops: 7,
                oqdrops: 8,
            }],
        );
        let d = [("device", "vtnet0")];
        assert_eq!(
            value(&sink, "node_network_receive_bytes_total", &d),
            Some(1.0)
        );
        assert_eq!(
            value(&sink, "node_network_transmit_bytes_total", &d),
            Some(2.0)
        );
        assert_eq!(
            value(&sink, "node_network_receive_drop_total", &d),
            Some(7.0)
        );
        assert_eq!(
            value(&sink, "node_network_transmit_drop_total", &d),
            Some(8.0)
        );
        assert_eq!(sink.samples.len(), 8);
    }
}
