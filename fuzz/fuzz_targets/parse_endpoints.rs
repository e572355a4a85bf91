//! The command-line parsers of frontends and backends: any input gets a
//! value or an error, never a panic, and a parsed value prints back to a
//! string that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netnsxl::model::addr::BackendSpec;
use netnsxl::model::service::FrontendSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fe) = FrontendSpec::parse(s) {
        let again = FrontendSpec::parse(&fe.display()).expect("a shown frontend parses");
        assert_eq!(again, fe);
    }
    if let Ok(b) = BackendSpec::parse(s) {
        let mut shown = b.addr.to_string();
        if b.local {
            shown.push_str(",local");
        }
        if b.terminating {
            shown.push_str(",terminating");
        }
        assert_eq!(
            BackendSpec::parse(&shown).expect("a shown backend parses"),
            b
        );
    }
});
