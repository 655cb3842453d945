//! `node_uname_info{sysname,release,version,machine,nodename,domainname}`:
//! what `uname(2)` returns, read from `/proc/sys/kernel/{ostype,osrelease,
//! version,hostname,domainname}` (the same kernel strings, for the reader's
//! UTS namespace) and the build's architecture.

use std::path::Path;

use crate::collector::{path_spec, read_file, CollectError, CollectorSpec, DirCollector, Sink};

pub const SPEC: CollectorSpec =
    path_spec!("uname", DirCollector::boxed, proc, "sys/kernel", collect);

/// One attribute, without its trailing newline (inner spaces are kept).
fn attr(dir: &Path, name: &str) -> Result<String, CollectError> {
    let t = read_file(&dir.join(name))?;
    Ok(t.trim_end_matches('\n').to_string())
}

fn collect(dir: &Path, sink: &mut Sink) -> Result<(), CollectError> {
    let sysname = attr(dir, "ostype")?;
    let release = attr(dir, "osrelease")?;
    let version = attr(dir, "version")?;
    let nodename = attr(dir, "hostname")?;
    let domainname = attr(dir, "domainname")?;
    sink.gauge(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        &[
            ("sysname", &sysname),
            ("release", &release),
            ("version", &version),
            ("machine", std::env::consts::ARCH),
            ("nodename", &nodename),
            ("domainname", &domainname),
        ],
        1.0,
    );
    Ok(())
}
