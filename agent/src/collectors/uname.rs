//! `node_uname_info{sysname,release,version,machine,nodename,domainname}`:
//! what `uname(2)` returns, read from `/proc/sys/kernel/{ostype,osrelease,
//! version,hostname,domainname}` (the same kernel strings, for the reader's
//! UTS namespace) and the build's architecture.

use std::path::{Path, PathBuf};

use crate::collector::{
    read_file, CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable,
};

pub const SPEC: CollectorSpec = CollectorSpec::new("uname", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(UnameCollector {
        dir: paths.proc("sys/kernel"),
    }))
}

pub struct UnameCollector {
    dir: PathBuf,
}

/// One attribute, without its trailing newline (inner spaces are kept).
fn attr(dir: &Path, name: &str) -> Result<String, CollectError> {
    let t = read_file(&dir.join(name))?;
    Ok(t.trim_end_matches('\n').to_string())
}

impl Collector for UnameCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let sysname = attr(&self.dir, "ostype")?;
        let release = attr(&self.dir, "osrelease")?;
        let version = attr(&self.dir, "version")?;
        let nodename = attr(&self.dir, "hostname")?;
        let domainname = attr(&self.dir, "domainname")?;
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
}
