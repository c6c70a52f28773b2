//! Dumping and restoring a 100 MiB file must not buffer it.
//!
//! Two independent checks, in a test binary of its own (one test, so nothing else runs in
//! the process): every single read and write the NAR code asks of its streams is at most
//! 1 MiB (guard wrappers panic otherwise), and the process's peak resident set (`VmHWM`)
//! grows by far less than the file's size while a NAR of it is dumped into a pipe and
//! restored from the other end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use nixnest_core::nar::{NarHasher, dump_path, nar_hash_and_size, restore};

const SIZE: usize = 100 << 20;
const MAX_CALL: usize = 1 << 20;

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct GuardReader<R>(R);

impl<R: Read> Read for GuardReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(
            buf.len() <= MAX_CALL,
            "asked to read {} bytes at once",
            buf.len()
        );
        self.0.read(buf)
    }
}

struct GuardWriter<W>(W);

impl<W: Write> Write for GuardWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(
            buf.len() <= MAX_CALL,
            "asked to write {} bytes at once",
            buf.len()
        );
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn dump_and_restore_of_100_mib_stream_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    {
        let mut file = fs::File::create(src.join("blob")).unwrap();
        let mut chunk = vec![0u8; 1 << 16];
        for i in 0..SIZE / chunk.len() {
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i ^ j) as u8);
            file.write_all(&chunk).unwrap();
        }
    }
    fs::set_permissions(src.join("blob"), fs::Permissions::from_mode(0o755)).unwrap();

    let Some(before) = vm_hwm_kib() else {
        eprintln!("skipping the VmHWM part: /proc/self/status has no VmHWM");
        return;
    };

    // Dump into a pipe on one thread, restore from it on this one; hash what crossed.
    let (pipe_reader, pipe_writer) = io::pipe().unwrap();
    let dump_src = src.clone();
    let dumper = std::thread::spawn(move || {
        let mut hasher = NarHasher::new();
        let mut tee = GuardWriter(Tee(pipe_writer, &mut hasher));
        dump_path(&dump_src, &mut tee).unwrap();
        drop(tee);
        hasher.finish()
    });
    let restored = tmp.path().join("restored");
    let size = restore(GuardReader(pipe_reader), &restored).unwrap();
    let sent = dumper.join().unwrap();
    assert_eq!(size, sent.size);
    assert!(size > SIZE as u64);
    assert_eq!(nar_hash_and_size(&restored).unwrap(), sent);

    let after = vm_hwm_kib().unwrap();
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "VmHWM before {before} KiB, after {after} KiB (+{growth_mib} MiB) for a 100 MiB file"
    );
    assert!(
        growth_mib < 16,
        "peak memory grew by {growth_mib} MiB while streaming a 100 MiB file"
    );
}

struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}
