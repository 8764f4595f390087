#![no_main]
// See aviary_server::fuzzing::datagram for what this drives. A panic inside str0m that the
// media core contains (it closes that peer's transport) is not a crash here; one that
// escapes is (libfuzzer-sys aborts on it).
libfuzzer_sys::fuzz_target!(
    init: { std::panic::set_hook(Box::new(|_| {})) },
    |data: &[u8]| aviary_server::fuzzing::datagram(data)
);
