//! Benchmarks of tidings. The criterion benches of the core live in `benches/`; see
//! `docs/BENCHMARKS.md` for the commands and the latest results.
