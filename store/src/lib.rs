//! `nixnest-store`: the local Nix store on disk and in SQLite.
