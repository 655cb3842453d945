//! Reading FreeBSD kernel state: sysctls by name, interface counters
//! (`getifaddrs(3)`) and the mount list (`getfsstat(2)`).
//!
//! Scalar sysctls (kstat/ARC, `vm.stats.*`, `hw.*`) go through the `sysctl`
//! crate. Three reads stay on the C interfaces, the one place in the agent
//! allowed `unsafe`: array and binary sysctls (`kern.cp_times`,
//! `kern.clockrate`, `kern.devstat.all`), of which the crate returns only the
//! first element (its `value()` decodes one integer of the sysctl's type);
//! the per-interface `struct if_data`, which `nix::ifaddrs` does not expose;
//! and the mount list, for which neither `nix` (it has `statfs` of one path,
//! but no `getfsstat`/`getmntinfo`) nor `sysinfo::Disks` (no free blocks or
//! inode counts, renamed devices, tmpfs dropped, `MNT_WAIT`) serves.
//! Everything unsafe is small, checked against the sizes the kernel reports,
//! and wrapped in safe functions; the rest of the FreeBSD code only sees
//! `u64`s and `String`s.
//!
//! The parsers at the end (`sysctl` command output) are pure and compile on
//! every OS, so the collectors' tests run anywhere on captured output.

/// Parses `sysctl` command output (`name: value` per line, e.g.
/// `kstat.zfs.misc.arcstats.hits: 1473806`) into `(name, value)` pairs.
/// Lines that are not `name: <integer>` are skipped.
#[must_use]
pub fn parse_sysctl_lines(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return None;
            }
            let value = value.trim().parse::<u64>().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// Counters of one interface (a safe copy of the kernel's `struct if_data` fields we use).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub name: String,
    pub ibytes: u64,
    pub obytes: u64,
    pub ipackets: u64,
    pub opackets: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub iqdrops: u64,
    pub oqdrops: u64,
}

/// One entry of `getfsstat(2)` (a safe copy of the `struct statfs` fields used).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statfs {
    /// `f_mntfromname`, e.g. `zroot/ROOT/default` or `/dev/ada0p2`.
    pub device: String,
    /// `f_fstypename`.
    pub fstype: String,
    /// `f_mntonname`.
    pub mountpoint: String,
    /// `f_flags` (`MNT_*`).
    pub flags: u64,
    /// `f_bsize`: the fragment size the block counts are in.
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    /// Negative when root has used into the reserve.
    pub bavail: i64,
    pub files: u64,
    pub ffree: i64,
}

#[cfg(target_os = "freebsd")]
pub use imp::*;

#[cfg(target_os = "freebsd")]
#[allow(
    unsafe_code,
    reason = "sysctlbyname(3) and getifaddrs(3) are C interfaces; each block has a SAFETY note"
)]
mod imp {
    use std::ffi::{CStr, CString};
    use std::io;

    use super::{IfCounters, Statfs};

    /// Reads a sysctl's raw bytes. The size is asked first; a value that
    /// grows between the two calls (`kern.cp_times` after CPU hotplug) is
    /// retried once with the new size.
    pub fn read_raw(name: &str) -> io::Result<Vec<u8>> {
        let cname =
            CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for _ in 0..2 {
            let mut len: libc::size_t = 0;
            // SAFETY: `cname` is a valid NUL-terminated string; a null `oldp`
            // with a valid `oldlenp` asks only for the size.
            let rc = unsafe {
                libc::sysctlbyname(
                    cname.as_ptr(),
                    std::ptr::null_mut(),
                    &raw mut len,
                    std::ptr::null(),
                    0,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; len];
            let mut got = len;
            // SAFETY: `buf` has `got` writable bytes; the kernel writes at
            // most `got` bytes and stores the count it wrote back in `got`.
            let rc = unsafe {
                libc::sysctlbyname(
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &raw mut got,
                    std::ptr::null(),
                    0,
                )
            };
            if rc == 0 {
                buf.truncate(got.min(len));
                return Ok(buf);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOMEM) {
                return Err(err);
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// An integer sysctl (`u_int`, `u_long`, `uint64_t`, …) as `u64`;
    /// negative values are an error rather than wrapped.
    pub fn read_u64(name: &str) -> io::Result<u64> {
        use sysctl::{Ctl, CtlValue, Sysctl as _};
        let bad =
            |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}"));
        let value = Ctl::new(name)
            .and_then(|c| c.value())
            .map_err(|e| io::Error::other(format!("{name}: {e}")))?;
        let signed = |v: i64| u64::try_from(v).map_err(|_| bad(format!("negative value {v}")));
        match value {
            CtlValue::Uint(v) | CtlValue::U32(v) => Ok(u64::from(v)),
            CtlValue::Ulong(v) | CtlValue::U64(v) => Ok(v),
            CtlValue::U16(v) => Ok(u64::from(v)),
            CtlValue::U8(v) => Ok(u64::from(v)),
            CtlValue::Int(v) | CtlValue::S32(v) => signed(i64::from(v)),
            CtlValue::Long(v) | CtlValue::S64(v) => signed(v),
            other => Err(bad(format!("not an integer: {other:?}"))),
        }
    }

    /// An array of C `long` (`kern.cp_times`); 64-bit targets only, as is
    /// every FreeBSD target the agent is built for.
    pub fn read_long_array(name: &str) -> io::Result<Vec<i64>> {
        let b = read_raw(name)?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// An array of C `int` (`kern.clockrate` is `struct clockinfo`, five ints).
    pub fn read_int_array(name: &str) -> io::Result<Vec<i32>> {
        let b = read_raw(name)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Every interface's counters (`getifaddrs(3)`: the `AF_LINK` entry of an
    /// interface carries a `struct if_data` in `ifa_data`, see `net/if.h`).
    pub fn interface_counters() -> io::Result<Vec<IfCounters>> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; on success the list is
        // freed below with `freeifaddrs`.
        if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a non-null node of the list getifaddrs
            // returned, valid until freeifaddrs.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_data.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: `ifa_addr` is non-null and points to at least a `sockaddr`.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family != libc::AF_LINK {
                continue;
            }
            // SAFETY: for AF_LINK entries FreeBSD's getifaddrs points
            // `ifa_data` at a `struct if_data` (lib/libc/net/getifaddrs.c);
            // read_unaligned because the buffer is only byte-aligned by contract.
            let data: libc::if_data = unsafe { std::ptr::read_unaligned(ifa.ifa_data.cast()) };
            // SAFETY: `ifa_name` is a non-null NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            out.push(IfCounters {
                name,
                ibytes: data.ifi_ibytes,
                obytes: data.ifi_obytes,
                ipackets: data.ifi_ipackets,
                opackets: data.ifi_opackets,
                ierrors: data.ifi_ierrors,
                oerrors: data.ifi_oerrors,
                iqdrops: data.ifi_iqdrops,
                oqdrops: data.ifi_oqdrops,
            });
        }
        // SAFETY: `head` came from a successful getifaddrs and is freed once;
        // no reference into the list outlives this point.
        unsafe { libc::freeifaddrs(head) };
        Ok(out)
    }

    /// A fixed-size C string field (`char name[N]`) up to its NUL, as UTF-8
    /// with invalid bytes replaced (label values must be UTF-8).
    fn c_field(field: &[libc::c_char]) -> String {
        let bytes: Vec<u8> = field
            .iter()
            .map(|c| *c as u8)
            .take_while(|b| *b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Every mount, as `getfsstat(2)` with `MNT_NOWAIT` lists it: the
    /// kernel's cached `statfs` of each, without asking any file system
    /// (so it never blocks on a dead network mount).
    pub fn mounts() -> io::Result<Vec<Statfs>> {
        // A mount added between the count and the listing fills the spare
        // slots; a listing that fills them all is retried once, larger.
        let mut spare = 8;
        let mut list = Vec::new();
        for _ in 0..2 {
            // SAFETY: a null buffer asks only for the number of mounts.
            let n = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
            let Ok(n) = usize::try_from(n) else {
                return Err(io::Error::last_os_error());
            };
            let cap = n + spare;
            // SAFETY: `struct statfs` is plain data (integers and char
            // arrays), for which all-zero bytes are a valid value.
            let zero: libc::statfs = unsafe { std::mem::zeroed() };
            list = vec![zero; cap];
            let bytes = libc::c_long::try_from(cap * std::mem::size_of::<libc::statfs>())
                .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            // SAFETY: `list` has room for `cap` structures, `bytes` bytes,
            // and the kernel writes at most that many.
            let got = unsafe { libc::getfsstat(list.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
            let Ok(got) = usize::try_from(got) else {
                return Err(io::Error::last_os_error());
            };
            list.truncate(got.min(cap));
            if got < cap {
                break;
            }
            spare *= 8;
        }
        Ok(list
            .iter()
            .map(|s| Statfs {
                device: c_field(&s.f_mntfromname),
                fstype: c_field(&s.f_fstypename),
                mountpoint: c_field(&s.f_mntonname),
                flags: s.f_flags,
                bsize: s.f_bsize,
                blocks: s.f_blocks,
                bfree: s.f_bfree,
                bavail: s.f_bavail,
                files: s.f_files,
                ffree: s.f_ffree,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::{fixture_text, fuzz_inputs};

    #[test]
    fn parses_sysctl_output() {
        let v = parse_sysctl_lines(&fixture_text(
            "freebsd/sysctl-kstat.zfs.misc.arcstats-freebsd14.txt",
        ));
        assert_eq!(v.len(), 148);
        assert!(v.contains(&("kstat.zfs.misc.arcstats.hits".to_string(), 1_473_806)));
        assert!(parse_sysctl_lines("a b: 1\nx: y\n: 3\n").is_empty());
    }

    #[test]
    fn never_panics() {
        let seeds = [fixture_text(
            "freebsd/sysctl-kstat.zfs.misc.zfetchstats-freebsd14.txt",
        )];
        for input in fuzz_inputs(&seeds, 7) {
            let _ = parse_sysctl_lines(&input);
        }
    }
}
