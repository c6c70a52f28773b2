//! `nixnest-build`: building derivations in a Linux sandbox.
