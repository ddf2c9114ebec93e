//! Config text for every entry point: the worker, the router and local mode each load it
//! or answer with errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tailgate::worker::config::parse_worker(text);
    let _ = tailgate::router::config::parse_router(text);
    let _ = tailgate::local::parse_local(text);
});
