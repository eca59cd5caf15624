//! Tests of every query through the public `query`, `garbage` and `referenced_chunks`.

use plait_proto::meta::NewKind;
use plait_proto::{ErrorCode, MetaQuery, MetaReply};

use crate::testutil::{Counting, Fs, chunk, code, ext, ext_at, ts};
use crate::{EXTENTS_MAX_PER_QUERY, INODES_MAX, READDIR_MAX_ENTRIES, WRITE_MAX_EXTENTS};

fn read_dir(fs: &Fs, ino: u64, after: Option<&str>, limit: u32) -> (u64, Vec<String>) {
    match fs.q(MetaQuery::ReadDir {
        ino,
        after: after.map(|a| a.as_bytes().to_vec()),
        limit,
        session: None,
    }) {
        Ok(MetaReply::Entries { parent, entries }) => (
            parent,
            entries
                .into_iter()
                .map(|e| {
                    assert_eq!(fs.attr(e.attr.ino), e.attr, "entries carry full attributes");
                    String::from_utf8(e.name).unwrap()
                })
                .collect(),
        ),
        other => panic!("{other:?}"),
    }
}

fn extents(fs: &Fs, ino: u64, offset: u64, len: u64) -> Vec<plait_proto::Extent> {
    match fs.q(MetaQuery::Extents { ino, offset, len }) {
        Ok(MetaReply::Extents { attr, extents, .. }) => {
            assert_eq!(attr, fs.attr(ino));
            extents
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lookup_finds_names_and_refuses_the_rest() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    assert_eq!(fs.lookup(root, "f"), Some(f));
    let q = |parent, name: &str| MetaQuery::Lookup {
        parent,
        name: name.as_bytes().to_vec(),
        session: None,
    };
    assert_eq!(code(fs.q(q(root, "g"))), ErrorCode::NotFound);
    assert_eq!(code(fs.q(q(f, "g"))), ErrorCode::NotDir);
    assert_eq!(code(fs.q(q(999, "g"))), ErrorCode::NotFound);
    assert_eq!(
        code(fs.q(q(root, &"x".repeat(256)))),
        ErrorCode::NameTooLong
    );
    assert_eq!(code(fs.q(q(root, ".."))), ErrorCode::InvalidArgument);
}

#[test]
fn read_dir_pages_in_name_order() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    for name in ["c", "a", "b", "e", "d"] {
        fs.mkfile(d, name);
    }
    let sub = fs.mkdir(d, "z");
    assert_eq!(
        read_dir(&fs, d, None, 100),
        (
            root,
            vec!["a", "b", "c", "d", "e", "z"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
    assert_eq!(read_dir(&fs, d, None, 2).1, ["a", "b"]);
    assert_eq!(read_dir(&fs, d, Some("b"), 2).1, ["c", "d"]);
    assert_eq!(read_dir(&fs, d, Some("bb"), 1).1, ["c"]);
    assert!(read_dir(&fs, d, Some("z"), 10).1.is_empty());
    assert!(read_dir(&fs, d, None, 0).1.is_empty());
    assert_eq!(read_dir(&fs, sub, None, 10), (d, Vec::new()));
    assert_eq!(read_dir(&fs, root, None, 10), (root, vec!["d".to_string()]));
    let f = fs.lookup(d, "a").unwrap();
    let rd = |ino| MetaQuery::ReadDir {
        ino,
        after: None,
        limit: 1,
        session: None,
    };
    assert_eq!(code(fs.q(rd(f))), ErrorCode::NotDir);
    assert_eq!(code(fs.q(rd(999))), ErrorCode::NotFound);
}

#[test]
fn read_dir_caps_the_page() {
    let (mut fs, root) = Fs::with_volume();
    for i in 0..READDIR_MAX_ENTRIES + 5 {
        fs.mkfile(root, &format!("{i:05}"));
    }
    let (_, page) = read_dir(&fs, root, None, u32::MAX);
    assert_eq!(page.len(), READDIR_MAX_ENTRIES);
    let (_, rest) = read_dir(&fs, root, page.last().map(String::as_str), u32::MAX);
    assert_eq!(rest.len(), 5);
}

#[test]
fn read_link_only_for_symlinks() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let Ok(MetaReply::Attr(l)) = fs.create(
        root,
        "l",
        NewKind::Symlink {
            target: b"/abs/path".to_vec(),
        },
    ) else {
        panic!()
    };
    assert_eq!(
        fs.q(MetaQuery::ReadLink { ino: l.ino }),
        Ok(MetaReply::Link(b"/abs/path".to_vec()))
    );
    assert_eq!(
        code(fs.q(MetaQuery::ReadLink { ino: f })),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(fs.q(MetaQuery::ReadLink { ino: 999 })),
        ErrorCode::NotFound
    );
}

#[test]
fn extents_query_returns_what_overlaps_the_range() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1), ext(200, 100, 2), ext(300, 100, 3)])
        .unwrap();
    assert_eq!(
        extents(&fs, f, 0, 1000),
        vec![ext(0, 100, 1), ext(200, 100, 2), ext(300, 100, 3)]
    );
    assert_eq!(
        extents(&fs, f, 50, 10),
        vec![ext(0, 100, 1)],
        "starts before the range"
    );
    assert_eq!(extents(&fs, f, 100, 100), Vec::new(), "a hole");
    assert_eq!(extents(&fs, f, 150, 51), vec![ext(200, 100, 2)]);
    assert_eq!(extents(&fs, f, 250, 50), vec![ext(200, 100, 2)]);
    assert_eq!(
        extents(&fs, f, 250, 51),
        vec![ext(200, 100, 2), ext(300, 100, 3)]
    );
    assert_eq!(extents(&fs, f, 300, 1), vec![ext(300, 100, 3)]);
    assert_eq!(extents(&fs, f, 399, u64::MAX), vec![ext(300, 100, 3)]);
    assert_eq!(extents(&fs, f, 400, 10), Vec::new());
    assert_eq!(extents(&fs, f, 50, 0), Vec::new());
    assert_eq!(extents(&fs, f, u64::MAX, 10), Vec::new());
    let d = fs.mkdir(root, "d");
    let ex = |ino| MetaQuery::Extents {
        ino,
        offset: 0,
        len: 1,
    };
    assert_eq!(code(fs.q(ex(d))), ErrorCode::IsDir);
    assert_eq!(code(fs.q(ex(999))), ErrorCode::NotFound);
}

#[test]
fn extents_query_is_capped() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let total = EXTENTS_MAX_PER_QUERY + 10;
    for start in (0..total).step_by(WRITE_MAX_EXTENTS) {
        let batch: Vec<_> = (start..total.min(start + WRITE_MAX_EXTENTS))
            .map(|i| ext_at(i as u64 * 2, 1, 1, i as u64))
            .collect();
        fs.write(f, &batch).unwrap();
    }
    let got = extents(&fs, f, 0, u64::MAX);
    assert_eq!(got.len(), EXTENTS_MAX_PER_QUERY);
    let next = got.last().unwrap().end();
    assert_eq!(extents(&fs, f, next, u64::MAX).len(), 10);
}

#[test]
fn extents_query_reads_only_the_extents_it_returns() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    // 1000 extents of 5 bytes, 10 bytes apart: [10 i, 10 i + 5).
    let batch: Vec<_> = (0..1000u64).map(|i| ext_at(i * 10, 5, 1, i * 5)).collect();
    fs.write(f, &batch).unwrap();
    for (offset, len, want) in [
        (5000, 5, &batch[500..501]),
        (5003, 1, &batch[500..501]),
        (5005, 5, &batch[..0]),
        (4999, 12, &batch[500..502]),
        (5004, 60, &batch[500..507]),
        (9990, 100, &batch[999..]),
    ] {
        let view = Counting::new(&fs.kv);
        let reply = crate::query(
            &view,
            &MetaQuery::Extents {
                ino: f,
                offset,
                len,
            },
        )
        .unwrap();
        let Ok(MetaReply::Extents { extents, .. }) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(extents, want, "extents over [{offset}, +{len})");
        assert!(
            view.entries.get() < 40,
            "read {} entries",
            view.entries.get()
        );
        assert_eq!(view.seek_prevs.get(), 0, "seeks backwards");
    }
}

#[test]
fn fs_stats_counts_inodes() {
    let (mut fs, root) = Fs::with_volume();
    let stats = |fs: &Fs| match fs.q(MetaQuery::FsStats) {
        Ok(MetaReply::FsStats(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats(&fs).files, 1);
    fs.mkfile(root, "a");
    let b = fs.mkfile(root, "b");
    let s = stats(&fs);
    assert_eq!(
        (s.files, s.files_free, s.total_bytes, s.free_bytes),
        (3, INODES_MAX - 3, 0, 0)
    );
    fs.unlink(root, "b").unwrap();
    assert_eq!(stats(&fs).files, 3, "an orphan still uses an inode");
    fs.reap(b).unwrap();
    assert_eq!(stats(&fs).files, 2);
}

#[test]
fn garbage_and_referenced_chunks_page() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let g = fs.mkfile(root, "g");
    fs.write(f, &[ext(0, 1, 1), ext(1, 1, 2), ext(2, 1, 3)])
        .unwrap();
    fs.write(g, &[ext(0, 1, 3), ext(1, 1, 4)]).unwrap();
    let refs = crate::referenced_chunks(&fs.kv, None, 10).unwrap();
    assert_eq!(
        refs,
        vec![(chunk(1), 1), (chunk(2), 1), (chunk(3), 2), (chunk(4), 1)]
    );
    assert_eq!(
        crate::referenced_chunks(&fs.kv, Some(&chunk(2)), 1).unwrap(),
        vec![(chunk(3), 2)]
    );
    assert!(crate::garbage(&fs.kv, None, 10).unwrap().is_empty());
    let t1 = fs.next_now();
    fs.truncate(f, 1).unwrap();
    let t2 = fs.next_now();
    fs.truncate(g, 0).unwrap();
    assert_eq!(t1, ts(t1.sec));
    assert_eq!(
        crate::garbage(&fs.kv, None, 10).unwrap(),
        vec![(chunk(2), t1), (chunk(3), t2), (chunk(4), t2)]
    );
    assert_eq!(
        crate::garbage(&fs.kv, Some(&chunk(2)), 1).unwrap(),
        vec![(chunk(3), t2)]
    );
    assert!(
        crate::garbage(&fs.kv, Some(&chunk(4)), 10)
            .unwrap()
            .is_empty()
    );
    assert!(crate::garbage(&fs.kv, None, 0).unwrap().is_empty());
    fs.check();
}
