#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_adapter::fuzzing::http_head(data));
