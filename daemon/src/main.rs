//! `nixnest-daemon`: entry point.

fn main() {
    eprintln!("nixnest-daemon: not yet serving");
    std::process::exit(1);
}
