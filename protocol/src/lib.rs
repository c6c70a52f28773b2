//! `nixnest-protocol`: the Nix daemon worker protocol (versions 1.21–1.38 with features).
