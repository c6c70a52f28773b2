//! The builder's seccomp filter (`filter-syscalls = true`), a hand-written classic BPF
//! program with the rules of CppNix's `setupSeccomp`:
//!
//! | system call | condition | result |
//! |---|---|---|
//! | `chmod`, `fchmod` | mode (arg 1) has `S_ISUID` or `S_ISGID` | `EPERM` |
//! | `fchmodat`, `fchmodat2` | mode (arg 2) has `S_ISUID` or `S_ISGID` | `EPERM` |
//! | `setxattr`, `lsetxattr`, `fsetxattr` | always | `ENOTSUP` |
//! | anything else | | allowed |
//!
//! so a build can never leave a setuid/setgid file or an extended attribute (neither is
//! representable in a NAR) in its output. `fchmodat2` (Linux 6.6) is filtered as in current
//! Nix. Every ABI the machine can run is covered — on x86_64 the 64-bit, x32 (same numbers
//! with bit 30 set, masked off) and i386 tables; on aarch64 the 64-bit and 32-bit ARM
//! tables — and a system call from any other architecture kills the process (libseccomp's
//! default for a foreign architecture).
//!
//! Program layout:
//!
//! ```text
//!       ld  [arch]            ; seccomp_data.arch (offset 4)
//!       jeq ARCH_1 -> T1 ; jeq ARCH_2 -> T2 ; ret KILL_PROCESS
//! Tn:   ld  [nr]              ; offset 0 (and ~X32_BIT on x86_64)
//!       jeq <mode-in-arg1 calls> -> M1 ; jeq <mode-in-arg2 calls> -> M2
//!       jeq <xattr calls> -> NOTSUP ; ret ALLOW
//! M1:   ld [args[1] low word] ; jset 06000 -> EPERM : ALLOW
//! M2:   ld [args[2] low word] ; jset 06000 -> EPERM : ALLOW
//! ```
//!
//! The kernel truncates modes to `umode_t`, so testing the low 32 bits is exact.

use crate::error::{Error, Result};

/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}
const SUID_SGID: u32 = 0o6000;

/// The filtered system calls of one ABI.
#[derive(Clone, Copy, Debug)]
pub struct ArchRules {
    pub arch: u32,
    /// AND-ed into the syscall number first (x32 on x86_64).
    pub nr_mask: Option<u32>,
    /// `chmod`, `fchmod`: mode in argument 1.
    pub mode_arg1: &'static [u32],
    /// `fchmodat`, `fchmodat2`: mode in argument 2.
    pub mode_arg2: &'static [u32],
    /// `setxattr`, `lsetxattr`, `fsetxattr`.
    pub xattr: &'static [u32],
}

pub const X86_64: ArchRules = ArchRules {
    arch: AUDIT_ARCH_X86_64,
    nr_mask: Some(!X32_SYSCALL_BIT),
    mode_arg1: &[90, 91],
    mode_arg2: &[268, 452],
    xattr: &[188, 189, 190],
};

pub const I386: ArchRules = ArchRules {
    arch: AUDIT_ARCH_I386,
    nr_mask: None,
    mode_arg1: &[15, 94],
    mode_arg2: &[306, 452],
    xattr: &[226, 227, 228],
};

pub const AARCH64: ArchRules = ArchRules {
    arch: AUDIT_ARCH_AARCH64,
    nr_mask: None,
    mode_arg1: &[52],
    mode_arg2: &[53, 452],
    xattr: &[5, 6, 7],
};

pub const ARM: ArchRules = ArchRules {
    arch: AUDIT_ARCH_ARM,
    nr_mask: None,
    mode_arg1: &[15, 94],
    mode_arg2: &[333, 452],
    xattr: &[226, 227, 228],
};

/// The ABIs of the machine this was compiled for.
pub fn native_rules() -> Result<&'static [ArchRules]> {
    if cfg!(target_arch = "x86_64") {
        Ok(&[X86_64, I386])
    } else if cfg!(target_arch = "aarch64") {
        Ok(&[AARCH64, ARM])
    } else {
        Err(Error::Setup(
            "the syscall filter is not implemented for this architecture; set 'filter-syscalls = false'"
                .into(),
        ))
    }
}

#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

enum Ins {
    Ld(u32),
    And(u32),
    Jeq(u32, Target, Target),
    Jset(u32, Target, Target),
    Ret(u32),
    Label(usize),
}

/// Builds the filter for `rules` as `sock_filter` instructions.
pub fn program(rules: &[ArchRules]) -> Result<Vec<libc::sock_filter>> {
    // Labels: 0 = EPERM, 1 = NOTSUP, 2 = ALLOW, 3 = M1, 4 = M2, 5.. = per-arch tables.
    const EPERM: usize = 0;
    const NOTSUP: usize = 1;
    const ALLOW: usize = 2;
    const M1: usize = 3;
    const M2: usize = 4;
    let mut ins = vec![Ins::Ld(OFF_ARCH)];
    for (i, r) in rules.iter().enumerate() {
        ins.push(Ins::Jeq(r.arch, Target::Label(5 + i), Target::Next));
    }
    ins.push(Ins::Ret(SECCOMP_RET_KILL_PROCESS));
    for (i, r) in rules.iter().enumerate() {
        ins.push(Ins::Label(5 + i));
        ins.push(Ins::Ld(OFF_NR));
        if let Some(mask) = r.nr_mask {
            ins.push(Ins::And(mask));
        }
        for &nr in r.mode_arg1 {
            ins.push(Ins::Jeq(nr, Target::Label(M1), Target::Next));
        }
        for &nr in r.mode_arg2 {
            ins.push(Ins::Jeq(nr, Target::Label(M2), Target::Next));
        }
        for &nr in r.xattr {
            ins.push(Ins::Jeq(nr, Target::Label(NOTSUP), Target::Next));
        }
        ins.push(Ins::Ret(SECCOMP_RET_ALLOW));
    }
    ins.push(Ins::Label(M1));
    ins.push(Ins::Ld(off_arg_low(1)));
    ins.push(Ins::Jset(
        SUID_SGID,
        Target::Label(EPERM),
        Target::Label(ALLOW),
    ));
    ins.push(Ins::Label(M2));
    ins.push(Ins::Ld(off_arg_low(2)));
    ins.push(Ins::Jset(
        SUID_SGID,
        Target::Label(EPERM),
        Target::Label(ALLOW),
    ));
    ins.push(Ins::Label(EPERM));
    ins.push(Ins::Ret(SECCOMP_RET_ERRNO | libc::EPERM as u32));
    ins.push(Ins::Label(NOTSUP));
    ins.push(Ins::Ret(SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32));
    ins.push(Ins::Label(ALLOW));
    ins.push(Ins::Ret(SECCOMP_RET_ALLOW));

    // Resolve labels to instruction indices.
    let mut labels = std::collections::HashMap::new();
    let mut n = 0usize;
    for i in &ins {
        match i {
            Ins::Label(l) => {
                labels.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    let jump = |from: usize, t: Target| -> Result<u8> {
        match t {
            Target::Next => Ok(0),
            Target::Label(l) => {
                let to = *labels
                    .get(&l)
                    .ok_or_else(|| Error::Setup("seccomp program: unknown label".into()))?;
                to.checked_sub(from + 1)
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or_else(|| Error::Setup("seccomp program: jump out of range".into()))
            }
        }
    };
    for i in &ins {
        let idx = out.len();
        let f = match *i {
            Ins::Label(_) => continue,
            Ins::Ld(k) => stmt(BPF_LD_W_ABS, k),
            Ins::And(k) => stmt(BPF_ALU_AND_K, k),
            Ins::Ret(k) => stmt(BPF_RET_K, k),
            Ins::Jeq(k, t, f) => jmp(BPF_JMP_JEQ_K, k, jump(idx, t)?, jump(idx, f)?),
            Ins::Jset(k, t, f) => jmp(BPF_JMP_JSET_K, k, jump(idx, t)?, jump(idx, f)?),
        };
        out.push(f);
    }
    Ok(out)
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jmp(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Sets `PR_SET_NO_NEW_PRIVS` (unless `allow_new_privileges`) and installs the filter on
/// the calling thread. Only called in the builder's setup, in the single-threaded helper's
/// child.
pub fn install(filter: &[libc::sock_filter], allow_new_privileges: bool) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if !allow_new_privileges && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions `program` emits, over a
    /// `seccomp_data` (nr, arch, args).
    fn run(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => acc &= i.k,
                BPF_RET_K => return i.k,
                BPF_JMP_JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                BPF_JMP_JSET_K => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }),
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const EPERM: u32 = SECCOMP_RET_ERRNO | 1;
    const NOTSUP: u32 = SECCOMP_RET_ERRNO | 95;

    #[test]
    fn x86_64_table() {
        let p = program(&[X86_64, I386]).unwrap();
        let x = AUDIT_ARCH_X86_64;
        // chmod("f", 04755) / chmod("f", 0755)
        assert_eq!(run(&p, 90, x, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 90, x, [0, 0o2755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 90, x, [0, 0o0755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        // fchmod
        assert_eq!(run(&p, 91, x, [3, 0o6000, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 91, x, [3, 0o1777, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        // fchmodat / fchmodat2: mode is argument 2
        assert_eq!(
            run(&p, 268, x, [0, 0o4755, 0o644, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(run(&p, 268, x, [0, 0, 0o4644, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 452, x, [0, 0, 0o2644, 0, 0, 0]), EPERM);
        // x32 numbers carry bit 30
        assert_eq!(run(&p, 90 | 0x4000_0000, x, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        // xattrs
        for nr in [188, 189, 190, 190 | 0x4000_0000] {
            assert_eq!(run(&p, nr, x, [0; 6]), NOTSUP);
        }
        // getxattr, open, write are fine
        for nr in [191, 2, 1] {
            assert_eq!(
                run(&p, nr, x, [0, 0o4755, 0o4755, 0, 0, 0]),
                SECCOMP_RET_ALLOW
            );
        }
    }

    #[test]
    fn i386_and_foreign_arches() {
        let p = program(&[X86_64, I386]).unwrap();
        let a = AUDIT_ARCH_I386;
        assert_eq!(run(&p, 15, a, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 306, a, [0, 0, 0o2755, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, 226, a, [0; 6]), NOTSUP);
        assert_eq!(run(&p, 90, a, [0, 0o4755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(
            run(&p, 90, AUDIT_ARCH_AARCH64, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn aarch64_table() {
        let p = program(&[AARCH64, ARM]).unwrap();
        assert_eq!(
            run(&p, 52, AUDIT_ARCH_AARCH64, [0, 0o4755, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(&p, 53, AUDIT_ARCH_AARCH64, [0, 0, 0o4755, 0, 0, 0]),
            EPERM
        );
        assert_eq!(run(&p, 5, AUDIT_ARCH_AARCH64, [0; 6]), NOTSUP);
        assert_eq!(run(&p, 333, AUDIT_ARCH_ARM, [0, 0, 0o4755, 0, 0, 0]), EPERM);
    }
}
