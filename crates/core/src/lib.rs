//! `nixnest-core`: Nix's data model, free of async runtimes, sockets and databases.
//!
//! Everything here is a value type or a pure function over bytes (plus the NAR
//! dumper/restorer, which touch the file system through explicit directory handles).
//! Higher layers (`nixnest-protocol`, `nixnest-store`) build on these types; nothing here
//! depends on them.
pub mod nar;
