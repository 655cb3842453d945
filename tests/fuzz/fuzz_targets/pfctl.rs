//! `pfctl -si` and `pfctl -sm` output on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::freebsd::pf;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        drop(pf::parse_info(text));
    } else {
        drop(pf::parse_limits(text));
    }
});
