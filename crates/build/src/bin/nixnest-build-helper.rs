//! The build helper as a program of its own (tests, and daemons that prefer a separate
//! binary): see `nixnest_build::helper`.

fn main() {
    nixnest_build::helper_main()
}
