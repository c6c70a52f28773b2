//! The `/etc` files of the sandbox, byte for byte as CppNix 2.8 writes them.
//!
//! ```text
//! /etc/passwd   root:x:0:0:Nix build user:<sandbox-build-dir>:/noshell
//!               nixbld:x:<uid>:<gid>:Nix build user:<sandbox-build-dir>:/noshell
//!               nobody:x:65534:65534:Nobody:/:/noshell
//! /etc/group    root:x:0:
//!               nixbld:!:<gid>:
//!               nogroup:x:65534:
//! /etc/hosts    127.0.0.1 localhost            (not for fixed-output derivations,
//!               ::1 localhost                   which get the host's file)
//! /etc/nsswitch.conf   hosts: files dns         (fixed-output derivations only)
//!                      services: files
//! ```
//!
//! `<uid>`/`<gid>` are the sandbox ids: 1000/100 inside a user namespace, else the build
//! user's real ids.

/// The uid a sandboxed builder has inside its user namespace.
pub const SANDBOX_UID: u32 = 1000;
/// The gid a sandboxed builder has inside its user namespace.
pub const SANDBOX_GID: u32 = 100;

pub fn passwd(uid: u32, gid: u32, build_dir: &str) -> String {
    format!(
        "root:x:0:0:Nix build user:{build_dir}:/noshell\n\
         nixbld:x:{uid}:{gid}:Nix build user:{build_dir}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

pub fn group(gid: u32) -> String {
    format!("root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n")
}

pub const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

pub const NSSWITCH_CONF: &str = "hosts: files dns\nservices: files\n";

/// Host files a fixed-output derivation sees (when they exist).
pub const FOD_HOST_FILES: [&str; 3] = ["/etc/resolv.conf", "/etc/services", "/etc/hosts"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        assert_eq!(
            passwd(1000, 100, "/build"),
            "root:x:0:0:Nix build user:/build:/noshell\n\
             nixbld:x:1000:100:Nix build user:/build:/noshell\n\
             nobody:x:65534:65534:Nobody:/:/noshell\n"
        );
        assert_eq!(group(100), "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n");
    }
}
