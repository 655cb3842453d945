//! `pfctl -si` and `pfctl -sm` output on arbitrary text, and the binary
//! `kern.devstat.all` sysctl on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::freebsd::{devstat, pf};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 3 == 2 {
        drop(devstat::parse(rest));
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 3 == 0 {
        drop(pf::parse_info(text));
    } else {
        drop(pf::parse_limits(text));
    }
});
