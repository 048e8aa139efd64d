//! Standalone log driver for containerd's `binary://` logging (see `shoal_containerd::logger`).
//! `shoald log-driver` does the same; this binary serves tests and hosts without `shoald`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shoal_containerd::run_logger(&args));
}
