//! Replays every fuzz target's corpus (and the inputs that once crashed it) through the
//! same entry points the fuzzers drive, on the stable toolchain: a regression in any parser
//! of client bytes fails here, in every CI run, without a fuzzer. One test per target, so
//! they replay in parallel.

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn replay(name: &str) {
    let Some((_, target)) = aviary_server::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
    else {
        panic!("no fuzz target {name} in aviary_server::fuzzing::TARGETS");
    };
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(name)) else {
            continue;
        };
        inputs.extend(entries.flatten().map(|e| e.path()));
    }
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no corpus for fuzz target {name} in {}",
        fuzz_dir().display()
    );
    for input in &inputs {
        let data = std::fs::read(input).expect("a corpus file");
        let result = std::panic::catch_unwind(|| target(&data));
        assert!(result.is_ok(), "{name}: {} panics", input.display());
    }
    eprintln!("{name}: replayed {} inputs", inputs.len());
}

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            replay(stringify!($name));
        })*

        /// A target added to `TARGETS` without a replay here fails this.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($name)),*];
            for (name, _) in aviary_server::fuzzing::TARGETS {
                assert!(replayed.contains(name), "fuzz target {name} has no replay test");
            }
        }
    };
}

replays!(
    signal_frame,
    sdp,
    datagram,
    tcp_framing,
    twirp,
    access_token,
    config
);
