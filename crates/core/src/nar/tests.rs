//! Byte-exact tables for the NAR encoder and parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sha2::{Digest, Sha256};

use super::*;

/// One NAR token: length word, bytes, zero padding.
fn tok(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out.resize(out.len() + padding_len(s.len() as u64), 0);
    out
}

/// Concatenated tokens.
fn toks(tokens: &[&[u8]]) -> Vec<u8> {
    tokens.iter().flat_map(|t| tok(t)).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// All events of a NAR, with each regular file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Regular(bool, Vec<u8>),
    Symlink(Vec<u8>),
    Directory,
    Entry(Vec<u8>),
    End,
}

fn parse(nar: &[u8]) -> Result<(Vec<Ev>, u64), NarError> {
    let mut reader = NarReader::new(nar);
    let mut events = Vec::new();
    while let Some(event) = reader.next()? {
        events.push(match event {
            NarEvent::Regular { executable, size } => {
                let mut contents = Vec::new();
                std::io::Read::read_to_end(&mut reader.contents(), &mut contents)
                    .map_err(|e| NarError::from_io(e).unwrap())?;
                assert_eq!(contents.len() as u64, size);
                Ev::Regular(executable, contents)
            }
            NarEvent::Symlink { target } => Ev::Symlink(target),
            NarEvent::Directory => Ev::Directory,
            NarEvent::Entry { name } => Ev::Entry(name),
            NarEvent::End => Ev::End,
        });
    }
    Ok((events, reader.position()))
}

fn write(events: &[Ev]) -> Result<Vec<u8>, NarError> {
    let mut w = NarWriter::new(Vec::new())?;
    for event in events {
        match event {
            Ev::Regular(x, data) => w.regular(*x, data.len() as u64, data.as_slice())?,
            Ev::Symlink(t) => w.symlink(t)?,
            Ev::Directory => w.directory()?,
            Ev::Entry(n) => w.entry(n)?,
            Ev::End => w.end()?,
        }
    }
    w.finish()
}

fn malformation(nar: &[u8]) -> Malformation {
    match parse(nar) {
        Err(NarError::BadArchive { problem, .. }) => problem,
        other => panic!("expected a bad archive, got {other:?}"),
    }
}

const HELLO_NAR_HEX: &str = "
    0d00000000000000 6e69782d61726368 6976652d31000000
    0100000000000000 2800000000000000
    0400000000000000 7479706500000000
    0700000000000000 726567756c617200
    0800000000000000 636f6e74656e7473
    0c00000000000000 68656c6c6f20776f 726c640a00000000
    0100000000000000 2900000000000000";

#[test]
fn hello_world_regular_file_is_byte_exact() {
    let expected = unhex(HELLO_NAR_HEX);
    let nar = write(&[Ev::Regular(false, b"hello world\n".to_vec())]).unwrap();
    assert_eq!(hex(&nar), hex(&expected));
    assert_eq!(nar.len(), 128);
    assert_eq!(
        hex(&Sha256::digest(&nar)),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );
    let (events, size) = parse(&expected).unwrap();
    assert_eq!(events, vec![Ev::Regular(false, b"hello world\n".to_vec())]);
    assert_eq!(size, 128);
}

#[test]
#[rustfmt::skip]
fn simple_directory_tokenises_as_upstream() {
    // The `simple` output of the spec: contents of lengths 3, 11 and 48.
    let (bin, input, r) = (b"ab\n".to_vec(), b"input file\n".to_vec(), vec![b'r'; 48]);
    let events = vec![
        Ev::Directory,
        Ev::Entry(b"bin".to_vec()),
        Ev::Regular(true, bin.clone()),
        Ev::Entry(b"input".to_vec()),
        Ev::Regular(false, input.clone()),
        Ev::Entry(b"link".to_vec()),
        Ev::Symlink(b"ref".to_vec()),
        Ev::Entry(b"ref".to_vec()),
        Ev::Regular(false, r.clone()),
        Ev::End,
    ];
    let expected = toks(&[
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"bin", b"node",
        b"(", b"type", b"regular", b"executable", b"", b"contents", &bin, b")", b")",
        b"entry", b"(", b"name", b"input", b"node",
        b"(", b"type", b"regular", b"contents", &input, b")", b")",
        b"entry", b"(", b"name", b"link", b"node",
        b"(", b"type", b"symlink", b"target", b"ref", b")", b")",
        b"entry", b"(", b"name", b"ref", b"node",
        b"(", b"type", b"regular", b"contents", &r, b")", b")",
        b")",
    ]);
    assert_eq!(expected.len(), 944);
    assert_eq!(write(&events).unwrap(), expected);
    assert_eq!(parse(&expected).unwrap(), (events, 944));
}

#[test]
#[rustfmt::skip]
fn leaf_and_directory_shapes_are_byte_exact() {
    let cases: Vec<(Vec<Ev>, Vec<u8>)> = vec![
        (
            vec![Ev::Symlink(b"/nix/store/x".to_vec())],
            toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"/nix/store/x", b")"]),
        ),
        (
            vec![Ev::Regular(true, b"#!/bin/sh\n".to_vec())],
            toks(&[
                b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"",
                b"contents", b"#!/bin/sh\n", b")",
            ]),
        ),
        (
            vec![Ev::Regular(false, Vec::new())],
            toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"", b")"]),
        ),
        (
            vec![Ev::Directory, Ev::End],
            toks(&[b"nix-archive-1", b"(", b"type", b"directory", b")"]),
        ),
        (
            vec![
                Ev::Directory,
                Ev::Entry(b"a".to_vec()),
                Ev::Directory,
                Ev::Entry(b"b".to_vec()),
                Ev::Directory,
                Ev::End,
                Ev::Entry(b"c".to_vec()),
                Ev::Regular(false, b"12345678".to_vec()),
                Ev::End,
                Ev::Entry(b"d".to_vec()),
                Ev::Directory,
                Ev::End,
                Ev::End,
            ],
            toks(&[
                b"nix-archive-1", b"(", b"type", b"directory",
                b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory",
                b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"directory", b")", b")",
                b"entry", b"(", b"name", b"c", b"node",
                b"(", b"type", b"regular", b"contents", b"12345678", b")", b")",
                b")", b")",
                b"entry", b"(", b"name", b"d", b"node", b"(", b"type", b"directory", b")", b")",
                b")",
            ]),
        ),
    ];
    for (events, bytes) in cases {
        assert_eq!(write(&events).unwrap(), bytes, "{events:?}");
        assert_eq!(parse(&bytes).unwrap(), (events, bytes.len() as u64));
    }
}

#[test]
fn reader_stops_exactly_at_the_end() {
    for nar in [
        unhex(HELLO_NAR_HEX),
        toks(&[b"nix-archive-1", b"(", b"type", b"directory", b")"]),
        toks(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"t",
            b")",
        ]),
    ] {
        let mut input = nar.clone();
        input.extend_from_slice(b"sentinel and more");
        let mut reader = NarReader::new(input.as_slice());
        assert_eq!(reader.skip_to_end().unwrap(), nar.len() as u64);
        assert!(reader.is_done());
        assert_eq!(reader.next().unwrap(), None);
        assert_eq!(reader.into_inner(), b"sentinel and more");
    }
}

#[test]
fn unread_contents_are_skipped_and_their_padding_checked() {
    let nar = write(&[
        Ev::Directory,
        Ev::Entry(b"a".to_vec()),
        Ev::Regular(false, vec![7; 100_001]),
        Ev::Entry(b"b".to_vec()),
        Ev::Regular(false, b"x".to_vec()),
        Ev::End,
    ])
    .unwrap();
    let mut reader = NarReader::new(nar.as_slice());
    assert_eq!(reader.next().unwrap(), Some(NarEvent::Directory));
    assert_eq!(
        reader.next().unwrap(),
        Some(NarEvent::Entry {
            name: b"a".to_vec()
        })
    );
    assert_eq!(
        reader.next().unwrap(),
        Some(NarEvent::Regular {
            executable: false,
            size: 100_001
        })
    );
    let mut buf = [0u8; 10];
    assert_eq!(reader.read_contents(&mut buf).unwrap(), 10);
    assert_eq!(buf, [7; 10]);
    assert_eq!(
        reader.next().unwrap(),
        Some(NarEvent::Entry {
            name: b"b".to_vec()
        })
    );
    assert_eq!(
        reader.next().unwrap(),
        Some(NarEvent::Regular {
            executable: false,
            size: 1
        })
    );
    // Not a regular file any more after this: contents reads give nothing.
    assert_eq!(reader.next().unwrap(), Some(NarEvent::End));
    assert_eq!(reader.read_contents(&mut buf).unwrap(), 0);
    assert_eq!(reader.next().unwrap(), None);

    // Non-zero padding after skipped contents is still caught.
    let mut bad = nar.clone();
    let x_at = bad
        .windows(8)
        .position(|w| w == b"x\0\0\0\0\0\0\0")
        .unwrap();
    bad[x_at + 3] = 1;
    assert_eq!(
        malformation(&bad),
        Malformation::NonZeroPadding {
            what: "file contents"
        }
    );
}

#[test]
#[rustfmt::skip]
fn malformed_archives_are_rejected_with_the_rule_they_break() {
    let dir_with = |name: &[u8]| {
        toks(&[
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", name, b"node",
            b"(", b"type", b"regular", b"contents", b"", b")", b")", b")",
        ])
    };
    let two_entries = |a: &[u8], b: &[u8]| {
        toks(&[
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", a, b"node", b"(", b"type", b"directory", b")", b")",
            b"entry", b"(", b"name", b, b"node", b"(", b"type", b"directory", b")", b")",
            b")",
        ])
    };
    let symlink_to = |t: &[u8]| {
        toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", t, b")"])
    };
    let tag = |expected: &'static str, got: &[u8]| Malformation::UnexpectedTag {
        expected,
        got: got.to_vec(),
    };
    let too_long = |what, len, limit| Malformation::TooLong { what, len, limit };
    let mut long_magic = toks(&[b"nix-archive-11"]);
    long_magic.extend(toks(&[b"(", b"type", b"directory", b")"]));
    let cases: Vec<(&str, Vec<u8>, Malformation)> = vec![
        ("wrong magic", toks(&[b"nix-archive-2", b"("]), Malformation::NotANar),
        ("magic too long", long_magic, Malformation::NotANar),
        ("huge first word", u64::MAX.to_le_bytes().to_vec(), Malformation::NotANar),
        ("no open paren", toks(&[b"nix-archive-1", b"type"]), tag("'('", b"type")),
        (
            "unknown type",
            toks(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]),
            Malformation::UnknownType(b"fifo".to_vec()),
        ),
        (
            "tag longer than 32",
            toks(&[b"nix-archive-1", b"(", &[b'x'; 33]]),
            too_long("tag", 33, 32),
        ),
        (
            "executable marker with a value",
            toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"1"]),
            Malformation::ExecutableMarkerNotEmpty,
        ),
        (
            "executable after contents",
            toks(&[
                b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"x",
                b"executable", b"", b")",
            ]),
            tag("')'", b"executable"),
        ),
        (
            "executable twice",
            toks(&[
                b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"",
                b"executable", b"", b"contents", b"", b")",
            ]),
            tag("'contents'", b"executable"),
        ),
        ("empty name", dir_with(b""), Malformation::InvalidName(Vec::new())),
        ("dot", dir_with(b"."), Malformation::InvalidName(b".".to_vec())),
        ("dotdot", dir_with(b".."), Malformation::InvalidName(b"..".to_vec())),
        ("slash", dir_with(b"a/b"), Malformation::InvalidName(b"a/b".to_vec())),
        ("absolute", dir_with(b"/etc"), Malformation::InvalidName(b"/etc".to_vec())),
        ("NUL", dir_with(b"a\0b"), Malformation::InvalidName(b"a\0b".to_vec())),
        ("name of 256 bytes", dir_with(&[b'n'; 256]), too_long("entry name", 256, 255)),
        (
            "unsorted",
            two_entries(b"b", b"a"),
            Malformation::NotSorted { previous: b"b".to_vec(), name: b"a".to_vec() },
        ),
        ("duplicate", two_entries(b"a", b"a"), Malformation::DuplicateName(b"a".to_vec())),
        (
            "empty target",
            symlink_to(b""),
            Malformation::InvalidSymlinkTarget { target: Vec::new(), reason: "it is empty" },
        ),
        (
            "NUL in target",
            symlink_to(b"a\0"),
            Malformation::InvalidSymlinkTarget {
                target: b"a\0".to_vec(),
                reason: "it contains a NUL byte",
            },
        ),
        ("target of 4096 bytes", symlink_to(&[b't'; 4096]), too_long("symlink target", 4096, 4095)),
        (
            "name after node",
            toks(&[
                b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"node",
            ]),
            tag("'name'", b"node"),
        ),
        (
            "junk in directory",
            toks(&[b"nix-archive-1", b"(", b"type", b"directory", b"contents"]),
            tag("'entry' or ')'", b"contents"),
        ),
        (
            "missing entry close",
            toks(&[
                b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name", b"a",
                b"node", b"(", b"type", b"symlink", b"target", b"t", b")", b"entry",
            ]),
            tag("')'", b"entry"),
        ),
        (
            "type twice",
            toks(&[b"nix-archive-1", b"(", b"type", b"type", b"regular"]),
            Malformation::UnknownType(b"type".to_vec()),
        ),
    ];
    for (what, nar, expected) in cases {
        let got = malformation(&nar);
        assert_eq!(got, expected, "{what}");
    }

    // Padding: non-zero after a tag, a name, and the magic.
    let mut nar = dir_with(b"abc");
    let name_at = nar.windows(8).position(|w| w == b"abc\0\0\0\0\0").unwrap();
    nar[name_at + 7] = b'!';
    assert_eq!(malformation(&nar), Malformation::NonZeroPadding { what: "entry name" });
    let mut nar = dir_with(b"abc");
    nar[8 + 15] = 1;
    assert_eq!(malformation(&nar), Malformation::NonZeroPadding { what: "magic" });
    let mut nar = dir_with(b"abc");
    let type_at = nar.windows(8).position(|w| w == b"type\0\0\0\0").unwrap();
    nar[type_at + 4] = 1;
    assert_eq!(malformation(&nar), Malformation::NonZeroPadding { what: "tag" });

    // The limits themselves are accepted.
    parse(&dir_with(&[b'n'; 255])).unwrap();
    parse(&symlink_to(&[b't'; 4095])).unwrap();
}

/// A chain of `depth` nodes: `depth - 1` nested directories around an empty file.
fn nested(depth: usize) -> Vec<Ev> {
    let mut events = Vec::new();
    for _ in 1..depth {
        events.push(Ev::Directory);
        events.push(Ev::Entry(b"d".to_vec()));
    }
    events.push(Ev::Regular(false, Vec::new()));
    events.extend(std::iter::repeat_n(Ev::End, depth - 1));
    events
}

#[test]
fn depth_counts_the_root_and_stops_at_64() {
    let ok = write(&nested(MAX_DEPTH)).unwrap();
    assert_eq!(parse(&ok).unwrap().0, nested(MAX_DEPTH));

    // One more level: hand-encode it (the writer refuses) and check the reader refuses.
    let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1"];
    for _ in 0..MAX_DEPTH {
        tokens.extend([
            &b"("[..],
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ]);
    }
    tokens.extend([&b"("[..], b"type", b"regular", b"contents", b"", b")"]);
    let too_deep = toks(&tokens);
    match parse(&too_deep) {
        Err(NarError::BadArchive {
            problem: Malformation::TooDeep,
            path,
            ..
        }) => {
            assert_eq!(
                path.0.len(),
                2 * MAX_DEPTH - 1,
                "the error names the 64-deep path"
            );
        }
        other => panic!("{other:?}"),
    }
    match write(&nested(MAX_DEPTH + 1)) {
        Err(NarError::Unencodable {
            problem: Malformation::TooDeep,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
#[rustfmt::skip]
fn errors_name_the_entry_and_offset() {
    let nar = toks(&[
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"outer", b"node", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"inn\xc3\xa9r", b"node", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"..", b"node",
    ]);
    let err = parse(&nar).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("NAR contains invalid file name '..'") && message.contains("'/outer/innér'"),
        "{message}"
    );
    let NarError::BadArchive { offset, .. } = err else { panic!() };
    assert_eq!(offset as usize, nar.len() - 32, "offset of the bad name");

    let truncated = &nar[..100];
    let err = parse(truncated).unwrap_err();
    assert!(matches!(err, NarError::UnexpectedEof { offset: 96, .. }), "{err:?}");
    assert!(err.to_string().contains("unexpected end-of-file"), "{err}");

    // A NUL in a name is shown, not swallowed.
    let err = parse(&toks(&[
        b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name", b"f\0o",
    ]))
    .unwrap_err();
    assert!(err.to_string().contains(r"invalid file name 'f\u{0}o'"), "{err}");
}

#[test]
fn reader_is_unusable_after_an_error() {
    let mut reader = NarReader::new(&b"garbage!"[..]);
    assert!(reader.next().is_err());
    assert!(matches!(reader.next(), Err(NarError::ReaderFailed)));
}

#[test]
fn writer_refuses_what_no_nar_can_hold() {
    let unencodable = |events: &[Ev]| match write(events) {
        Err(NarError::Unencodable { problem, path }) => (problem, path.to_string()),
        other => panic!("{events:?}: {other:?}"),
    };
    let in_dir = |name: &[u8]| {
        vec![
            Ev::Directory,
            Ev::Entry(b"sub".to_vec()),
            Ev::Directory,
            Ev::Entry(name.to_vec()),
        ]
    };
    for bad in [&b""[..], b".", b"..", b"a/b", b"\0", &[b'x'; 256]] {
        let (problem, path) = unencodable(&in_dir(bad));
        assert!(matches!(
            problem,
            Malformation::InvalidName(_) | Malformation::TooLong { .. }
        ));
        assert_eq!(path, "/sub");
    }
    let sorted = |a: &[u8], b: &[u8]| {
        vec![
            Ev::Directory,
            Ev::Entry(a.to_vec()),
            Ev::Symlink(b"t".to_vec()),
            Ev::Entry(b.to_vec()),
        ]
    };
    assert!(matches!(
        unencodable(&sorted(b"b", b"a")).0,
        Malformation::NotSorted { .. }
    ));
    assert!(matches!(
        unencodable(&sorted(b"a", b"a")).0,
        Malformation::DuplicateName(_)
    ));
    // Byte order, not character order: 'Z' (0x5a) < 'a' (0x61) < 'é' (0xc3 0xa9).
    write(&[
        Ev::Directory,
        Ev::Entry(b"Z".to_vec()),
        Ev::Symlink(b"t".to_vec()),
        Ev::Entry(b"a".to_vec()),
        Ev::Symlink(b"t".to_vec()),
        Ev::Entry("é".as_bytes().to_vec()),
        Ev::Symlink(b"t".to_vec()),
        Ev::End,
    ])
    .unwrap();
    for target in [&b""[..], b"a\0b", &[b't'; 4096]] {
        unencodable(&[Ev::Symlink(target.to_vec())]);
    }

    let out_of_order = |events: &[Ev]| {
        assert!(
            matches!(write(events), Err(NarError::OutOfOrder(_))),
            "{events:?}"
        );
    };
    out_of_order(&[Ev::Entry(b"a".to_vec())]);
    out_of_order(&[Ev::End]);
    out_of_order(&[Ev::Directory]);
    out_of_order(&[Ev::Directory, Ev::Entry(b"a".to_vec())]);
    out_of_order(&[
        Ev::Directory,
        Ev::Entry(b"a".to_vec()),
        Ev::Entry(b"b".to_vec()),
    ]);
    out_of_order(&[Ev::Symlink(b"t".to_vec()), Ev::Symlink(b"t".to_vec())]);
    out_of_order(&[Ev::Directory, Ev::End, Ev::Directory]);
    out_of_order(&[]);

    let mut w = NarWriter::new(Vec::new()).unwrap();
    let err = w.regular(false, 10, &b"short"[..]).unwrap_err();
    assert!(
        matches!(
            err,
            NarError::ShortContents {
                declared: 10,
                read: 5,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn writer_takes_only_the_declared_size() {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    let mut source = &b"hello world\nand more"[..];
    w.regular(false, 12, &mut source).unwrap();
    assert_eq!(source, b"and more");
    assert_eq!(w.finish().unwrap(), unhex(HELLO_NAR_HEX));
}

#[test]
fn copy_nar_reproduces_the_input_and_stops_at_its_end() {
    let nar = write(&nested(5)).unwrap();
    let mut input = nar.clone();
    input.extend_from_slice(b"trailing");
    let mut source = input.as_slice();
    let mut out = Vec::new();
    assert_eq!(copy_nar(&mut source, &mut out).unwrap(), nar.len() as u64);
    assert_eq!(out, nar);
    assert_eq!(source, b"trailing");

    let mut bad = unhex(HELLO_NAR_HEX);
    bad[0x6d] = 1; // padding after "hello world\n"
    let err = copy_nar(bad.as_slice(), Vec::new()).unwrap_err();
    assert_eq!(
        err.malformation(),
        Some(&Malformation::NonZeroPadding {
            what: "file contents"
        }),
        "{err:?}"
    );
}

#[test]
fn hashing_reader_covers_exactly_the_nar() {
    let nar = unhex(HELLO_NAR_HEX);
    let mut input = nar.clone();
    input.extend_from_slice(&[0xff; 16]);
    let mut hashing = HashingReader::new(input.as_slice());
    NarReader::new(&mut hashing).skip_to_end().unwrap();
    let (rest, hash) = hashing.into_parts();
    assert_eq!(rest, [0xff; 16]);
    assert_eq!(hash.size, 128);
    assert_eq!(
        hex(&hash.sha256),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );
}
