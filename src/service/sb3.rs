//! Scratch 3 project files (`.sb3`): a zip with `project.json` at its root and each asset
//! stored as `<md5>.<ext>`. Reading one validates everything an import relies on before a
//! byte is stored: bounded entry count and sizes (measured while decompressing, never taken
//! from the headers), plain root-level names that each appear once, a valid project
//! document, and assets whose bytes hash to their names and are what their extensions say.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Read, Write},
    sync::Arc,
};

use crate::{
    config::Limits,
    domain::{DataFormat, Md5, ProjectContent},
    error::{AppError, AppResult},
    storage::Hasher,
};

/// The name of the project document inside an `.sb3`.
pub const PROJECT_JSON: &str = "project.json";

/// How much an `.sb3` may hold. A zip bomb is refused by these, counted on the decompressed
/// bytes as they come out.
#[derive(Clone, Copy, Debug)]
pub struct Sb3Limits {
    pub max_entries: usize,
    pub max_content_bytes: u64,
    pub max_asset_bytes: u64,
    /// All entries together, decompressed.
    pub max_total_bytes: u64,
}

impl Sb3Limits {
    /// Scratch projects have tens to hundreds of assets; 1000 entries is far beyond a real one.
    pub const MAX_ENTRIES: usize = 1000;
    /// The total never exceeds the project document plus this many maximal assets.
    const MAX_ASSETS_OF_MAX_SIZE: u64 = 10;
}

impl From<&Limits> for Sb3Limits {
    fn from(l: &Limits) -> Self {
        Sb3Limits {
            max_entries: Sb3Limits::MAX_ENTRIES,
            max_content_bytes: l.max_content_bytes,
            max_asset_bytes: l.max_asset_bytes,
            max_total_bytes: l.max_content_bytes.saturating_add(
                l.max_asset_bytes
                    .saturating_mul(Self::MAX_ASSETS_OF_MAX_SIZE),
            ),
        }
    }
}

/// One asset entry of an `.sb3`, verified: its bytes hash to the md5 its name carries and
/// are in the format its extension names.
#[derive(Clone, Debug)]
pub struct Sb3Asset {
    pub md5: Md5,
    pub format: DataFormat,
    pub sha256: String,
    pub bytes: Arc<Vec<u8>>,
}

/// A validated `.sb3`.
#[derive(Clone, Debug)]
pub struct Sb3 {
    pub content: ProjectContent,
    /// The asset entries the project references (unreferenced entries are not kept).
    pub assets: Vec<Sb3Asset>,
}

/// Why an `.sb3` is refused: BAD_USER_INPUT on `file`, unless a more specific code applies
/// (CHECKSUM_MISMATCH, PAYLOAD_TOO_LARGE).
fn bad(message: impl Into<String>) -> AppError {
    AppError::bad_input("file", message)
}

/// Reads and validates an `.sb3` held in memory (CPU-bound: call from a blocking task).
pub fn read_sb3(bytes: &[u8], limits: &Sb3Limits) -> AppResult<Sb3> {
    let mut zip = zip::ZipArchive::new(io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a valid .sb3 (zip) file: {e}")))?;
    // The zip reader indexes entries by name: of two entries with one name it keeps the last,
    // and counts one. Another reader (Scratch's, an unzip tool) may take the first. So the
    // central directory's own list decides: every name once, and at most so many entries.
    let listed = central_directory_names(bytes, zip.central_directory_start(), limits.max_entries)?;
    let entries_count = listed.len().max(zip.len());
    if entries_count > limits.max_entries {
        return Err(bad(format!(
            "the .sb3 has more than {} entries",
            limits.max_entries
        )));
    }
    let mut names = HashSet::new();
    for name in &listed {
        if !names.insert(*name) {
            return Err(bad(format!(
                "entry {:?} appears more than once in the .sb3: an .sb3 names each entry once",
                String::from_utf8_lossy(name)
            )));
        }
    }
    // Whatever the walk above saw, the reader must see the same entries, or the check was
    // made on something else than what is read.
    if zip.has_duplicate_names() || names.len() != zip.len() {
        return Err(bad(
            "the .sb3's central directory lists entries the zip reader does not see",
        ));
    }
    let mut total: u64 = 0;
    let mut project_json: Option<Vec<u8>> = None;
    let mut entries: Vec<(String, DataFormat, Vec<u8>)> = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i} of the .sb3 cannot be read: {e}")))?;
        let name = std::str::from_utf8(entry.name_raw())
            .map_err(|_| bad(format!("entry {i} has a name that is not UTF-8")))?
            .to_owned();
        check_name(&name)?;
        let (limit, what) = if name == PROJECT_JSON {
            (limits.max_content_bytes, "project.json")
        } else {
            (limits.max_asset_bytes, "an asset of the .sb3")
        };
        let kind = match name.rsplit_once('.') {
            _ if name == PROJECT_JSON => None,
            Some((stem, ext)) => match (
                Md5::parse(stem),
                DataFormat::from_extension(&ext.to_ascii_lowercase()),
            ) {
                (Some(_), Some(format)) => Some(format),
                // A file Scratch does not write (e.g. a thumbnail): skipped, not stored.
                _ => {
                    tracing::debug!(sb3.entry = %name, "sb3_entry_ignored");
                    continue;
                }
            },
            None => continue,
        };
        let data = read_limited(&mut entry, limit, limits.max_total_bytes - total, what)?;
        total += data.len() as u64;
        match kind {
            None => project_json = Some(data),
            Some(format) => entries.push((name, format, data)),
        }
    }
    let json = project_json.ok_or_else(|| bad("the .sb3 has no project.json at its root"))?;
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| bad(format!("project.json is not valid JSON: {e}")))?;
    let content = ProjectContent::parse(value, limits.max_content_bytes).map_err(|e| match e {
        AppError::BadUserInput { message, .. } => bad(format!("project.json: {message}")),
        other => other,
    })?;
    let referenced: HashSet<(String, DataFormat)> = content
        .asset_refs
        .iter()
        .map(|r| (r.md5.as_str().to_owned(), r.format))
        .collect();
    let mut verified = Vec::new();
    for (name, format, data) in entries {
        let (stem, ext) = name.rsplit_once('.').expect("checked above");
        let mut hasher = Hasher::default();
        hasher.update(&data);
        let (md5, sha256, _) = hasher.finish();
        if !stem.eq_ignore_ascii_case(&md5) {
            return Err(AppError::ChecksumMismatch(format!(
                "asset {name} of the .sb3 hashes to md5 {md5}"
            )));
        }
        let sniffed = super::assets::sniff(format.kind(), &data[..data.len().min(512)]);
        if sniffed.map(|f| f.extension) != Some(format.extension()) {
            return Err(bad(format!(
                "asset {name} of the .sb3 is not a .{ext} file"
            )));
        }
        let md5 = Md5::parse(&md5).expect("a hex digest");
        if referenced.contains(&(md5.as_str().to_owned(), format)) {
            verified.push((
                name,
                Sb3Asset {
                    md5,
                    format,
                    sha256,
                    bytes: Arc::new(data),
                },
            ));
        }
    }
    Ok(Sb3 {
        content,
        assets: one_per_asset(verified)?,
    })
}

/// One asset may come under several names: `ABC….png` and `abc….png`, `….jpg` and `….jpeg`
/// (a project may reference it each way, and an export writes an entry for each name). They
/// are one asset if their bytes are the same; two entries whose bytes share an md5 but differ
/// (an md5 collision) are refused, whichever comes first.
fn one_per_asset(verified: Vec<(String, Sb3Asset)>) -> AppResult<Vec<Sb3Asset>> {
    let mut first: HashMap<(Md5, DataFormat), (String, String)> = HashMap::new();
    let mut assets = Vec::new();
    for (name, asset) in verified {
        match first.entry((asset.md5.clone(), asset.format)) {
            std::collections::hash_map::Entry::Occupied(seen) => {
                let (seen_name, seen_sha256) = seen.get();
                if *seen_sha256 != asset.sha256 {
                    return Err(bad(format!(
                        "entries {seen_name} and {name} of the .sb3 name one asset but hold different bytes"
                    )));
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((name, asset.sha256.clone()));
                assets.push(asset);
            }
        }
    }
    Ok(assets)
}

/// The names of the central directory's entries, in its order, duplicates included, read from
/// the directory the zip reader found (`start`: it has located the end record, zip64 or not).
/// A central directory header is 46 fixed bytes (the name's, extra field's and comment's
/// lengths at 28, 30 and 32) followed by those three; zip64 changes none of this. The walk
/// stops at the first record that is not such a header (the end records follow the last one)
/// or after `max + 1` entries, which is enough to refuse the file.
fn central_directory_names(bytes: &[u8], start: u64, max: usize) -> AppResult<Vec<&[u8]>> {
    const SIGNATURE: &[u8; 4] = b"PK\x01\x02";
    const FIXED: usize = 46;
    let cut_short = || bad("the .sb3's central directory is cut short");
    let mut at = usize::try_from(start).map_err(|_| cut_short())?;
    let mut names = Vec::new();
    while names.len() <= max {
        let Some(header) = bytes.get(at..).and_then(|rest| rest.get(..FIXED)) else {
            break;
        };
        if &header[..4] != SIGNATURE {
            break;
        }
        let length =
            |offset: usize| usize::from(u16::from_le_bytes([header[offset], header[offset + 1]]));
        let name_start = at + FIXED;
        let name = bytes
            .get(name_start..name_start + length(28))
            .ok_or_else(cut_short)?;
        names.push(name);
        at = name_start + length(28) + length(30) + length(32);
    }
    Ok(names)
}

/// Only plain names at the root: no directories, no `..`, no absolute or Windows paths, no
/// control characters. Scratch writes nothing else, and nothing else can trick a consumer
/// that extracts the file later.
fn check_name(name: &str) -> AppResult<()> {
    let tricky = name.is_empty()
        || name.contains('/')
        || name.contains('\\')
        || name.contains(':')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control);
    if tricky {
        return Err(bad(format!(
            "entry {name:?}: only plain file names at the root of an .sb3 are allowed"
        )));
    }
    Ok(())
}

/// Reads at most `limit` bytes (and at most `budget`, what is left of the total): whatever
/// the entry's header claims, one byte more than allowed refuses the file.
fn read_limited(
    entry: &mut impl Read,
    limit: u64,
    budget: u64,
    what: &'static str,
) -> AppResult<Vec<u8>> {
    let cap = limit.min(budget);
    let mut data = Vec::new();
    entry
        .take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("{what} cannot be decompressed: {e}")))?;
    if data.len() as u64 > cap {
        return Err(if cap == limit {
            AppError::PayloadTooLarge { what, limit }
        } else {
            AppError::PayloadTooLarge {
                what: "the decompressed .sb3",
                limit: budget,
            }
        });
    }
    Ok(data)
}

/// Writes an `.sb3`, as Scratch does: `project.json` first, then each asset under the name
/// given (the name the project's JSON looks it up by). Text formats (SVG, WAV) are deflated;
/// already compressed media is stored as it is (deflating it again costs CPU and saves
/// nothing). Entries carry a fixed timestamp, so one
/// project always gives the same bytes (exports of a version rebuilt after a crash land on the
/// same content-addressed blob).
pub fn build_sb3(
    project_json: &[u8],
    assets: impl Iterator<Item = (String, Vec<u8>)>,
) -> io::Result<Vec<u8>> {
    use zip::{CompressionMethod, DateTime, write::SimpleFileOptions};
    let base = SimpleFileOptions::default().last_modified_time(DateTime::default());
    let deflated = base.compression_method(CompressionMethod::Deflated);
    let stored = base.compression_method(CompressionMethod::Stored);
    let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    zip.start_file(PROJECT_JSON, deflated)
        .map_err(io::Error::other)?;
    zip.write_all(project_json)?;
    for (name, bytes) in assets {
        let compressed = [".png", ".jpg", ".jpeg", ".gif", ".mp3"]
            .iter()
            .any(|ext| name.to_ascii_lowercase().ends_with(ext));
        let options = if compressed { stored } else { deflated };
        zip.start_file(name, options).map_err(io::Error::other)?;
        zip.write_all(&bytes)?;
    }
    Ok(zip.finish().map_err(io::Error::other)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Sb3Limits {
        Sb3Limits::from(&Limits::default())
    }

    fn md5_hex(b: &[u8]) -> String {
        let mut h = Hasher::default();
        h.update(b);
        h.finish().0
    }

    fn project(md5ext: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "targets": [{ "isStage": true, "name": "Stage",
                "costumes": [{ "name": "c", "md5ext": md5ext, "assetId": md5ext.split('.').next(), "dataFormat": "svg" }],
                "sounds": [] }],
            "meta": { "semver": "3.0.0" }
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_and_refuses_tricks() {
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec();
        let name = format!("{}.svg", md5_hex(&svg));
        let ok = build_sb3(&project(&name), [(name.clone(), svg.clone())].into_iter()).unwrap();
        let sb3 = read_sb3(&ok, &limits()).unwrap();
        assert_eq!(sb3.assets.len(), 1);
        assert_eq!(*sb3.assets[0].bytes, svg);

        let wrong = format!("{}.svg", md5_hex(b"other"));
        let bad = build_sb3(&project(&wrong), [(wrong.clone(), svg.clone())].into_iter()).unwrap();
        assert_eq!(
            read_sb3(&bad, &limits()).unwrap_err().code(),
            crate::error::Code::ChecksumMismatch
        );

        for trick in ["../x.svg", "/etc/passwd", "a/b.svg", "a\\b.svg", "C:x"] {
            let z = build_sb3(
                &project(&name),
                [(trick.to_owned(), svg.clone())].into_iter(),
            )
            .unwrap();
            let e = read_sb3(&z, &limits()).unwrap_err();
            assert!(e.to_string().contains("plain file names"), "{trick}: {e}");
        }

        let zeros = vec![0u8; 2 * 1024 * 1024];
        let bomb_name = format!("{}.wav", md5_hex(&zeros));
        let bomb = build_sb3(&project(&name), [(bomb_name, zeros)].into_iter()).unwrap();
        let small = Sb3Limits {
            max_asset_bytes: 1024 * 1024,
            ..limits()
        };
        assert_eq!(
            read_sb3(&bomb, &small).unwrap_err().code(),
            crate::error::Code::PayloadTooLarge
        );
        assert!(read_sb3(b"not a zip", &limits()).is_err());
    }

    /// `zip` with its entries named `from` renamed `to` (as long), in the central directory
    /// and in the local headers: how a zip with two entries of one name is made (writers
    /// refuse to write one).
    fn renamed(mut zip: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut at = zip::ZipArchive::new(io::Cursor::new(&zip))
            .unwrap()
            .central_directory_start() as usize;
        while zip[at..at + 4] == *b"PK\x01\x02" {
            let len = |o: usize| usize::from(u16::from_le_bytes([zip[at + o], zip[at + o + 1]]));
            let (n, e, c) = (len(28), len(30), len(32));
            let local = u32::from_le_bytes(zip[at + 42..at + 46].try_into().unwrap()) as usize;
            if &zip[at + 46..at + 46 + n] == from.as_bytes() {
                zip[at + 46..at + 46 + n].copy_from_slice(to.as_bytes());
                assert_eq!(&zip[local + 30..local + 30 + n], from.as_bytes());
                zip[local + 30..local + 30 + n].copy_from_slice(to.as_bytes());
            }
            at += 46 + n + e + c;
        }
        zip
    }

    #[test]
    fn an_entry_name_appears_once() {
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec();
        let name = format!("{}.svg", md5_hex(&svg));
        let other = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"9\"/>".to_vec();
        let placeholder = format!("{}.svX", md5_hex(&svg));
        // (entries as written, renamed from → to, the name reported twice)
        let cases = [
            (
                vec![
                    ("project.jsoX".to_owned(), project(&name)),
                    (PROJECT_JSON.to_owned(), project(&name)),
                    (name.clone(), svg.clone()),
                ],
                ("project.jsoX", PROJECT_JSON),
                PROJECT_JSON,
            ),
            // A bad copy first, a good one last (the zip reader's index keeps the last).
            (
                vec![
                    (PROJECT_JSON.to_owned(), project(&name)),
                    (placeholder.clone(), other.clone()),
                    (name.clone(), svg.clone()),
                ],
                (placeholder.as_str(), name.as_str()),
                name.as_str(),
            ),
            // Even two identical copies.
            (
                vec![
                    (PROJECT_JSON.to_owned(), project(&name)),
                    (name.clone(), svg.clone()),
                    (placeholder.clone(), svg.clone()),
                ],
                (placeholder.as_str(), name.as_str()),
                name.as_str(),
            ),
        ];
        for (entries, (from, to), twice) in cases {
            let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
            for (n, b) in &entries {
                zip.start_file(n.as_str(), zip::write::SimpleFileOptions::default())
                    .unwrap();
                zip.write_all(b).unwrap();
            }
            let written = zip.finish().unwrap().into_inner();
            let dup = renamed(written, from, to);
            let e = read_sb3(&dup, &limits()).unwrap_err();
            assert_eq!(e.code(), crate::error::Code::BadUserInput, "{twice}: {e}");
            assert!(
                e.to_string()
                    .contains(&format!("{twice:?} appears more than once")),
                "{twice}: {e}"
            );
        }
        // The walk sees every entry the reader does, and counts duplicates.
        let zip = build_sb3(&project(&name), [(name.clone(), svg.clone())].into_iter()).unwrap();
        let start = zip::ZipArchive::new(io::Cursor::new(&zip))
            .unwrap()
            .central_directory_start();
        let names = central_directory_names(&zip, start, 10).unwrap();
        assert_eq!(names, [PROJECT_JSON.as_bytes(), name.as_bytes()]);
        assert_eq!(central_directory_names(&zip, start, 0).unwrap().len(), 1);
        assert!(central_directory_names(&zip[..zip.len() - 30], start, 10).is_err());
        // Too many entries, however many the reader's index holds.
        let many: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("x{i}.txt"), vec![])).collect();
        let zip = build_sb3(&project(&name), many.into_iter()).unwrap();
        let few = Sb3Limits {
            max_entries: 5,
            ..limits()
        };
        assert!(
            read_sb3(&zip, &few)
                .unwrap_err()
                .to_string()
                .contains("more than 5 entries")
        );
    }

    #[test]
    fn one_asset_under_two_names_is_kept_once() {
        let asset = |sha256: &str| Sb3Asset {
            md5: Md5::parse("e8544d5a1fbd3f3a8e9d4b6f1a2b3c4d").unwrap(),
            format: DataFormat::Jpeg,
            sha256: sha256.to_owned(),
            bytes: Arc::new(vec![1]),
        };
        let kept = one_per_asset(vec![
            ("E8544D5A1FBD3F3A8E9D4B6F1A2B3C4D.jpg".into(), asset("s1")),
            ("e8544d5a1fbd3f3a8e9d4b6f1a2b3c4d.jpeg".into(), asset("s1")),
        ])
        .unwrap();
        assert_eq!(kept.len(), 1);
        // The same md5 with other bytes (an md5 collision): refused, whichever is first.
        for order in [["s1", "s2"], ["s2", "s1"]] {
            let e = one_per_asset(vec![
                (
                    "E8544D5A1FBD3F3A8E9D4B6F1A2B3C4D.jpg".into(),
                    asset(order[0]),
                ),
                (
                    "e8544d5a1fbd3f3a8e9d4b6f1a2b3c4d.jpeg".into(),
                    asset(order[1]),
                ),
            ])
            .unwrap_err();
            assert!(e.to_string().contains("hold different bytes"), "{e}");
        }
    }

    #[test]
    fn names_scratch_writes_in_any_case_import() {
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec();
        let md5 = md5_hex(&svg);
        let upper = format!("{}.SVG", md5.to_ascii_uppercase());
        let lower = format!("{md5}.svg");
        let zip = build_sb3(
            &project(&upper),
            [(upper.clone(), svg.clone()), (lower, svg.clone())].into_iter(),
        )
        .unwrap();
        let sb3 = read_sb3(&zip, &limits()).unwrap();
        assert_eq!(sb3.assets.len(), 1, "one asset under two names");
        assert_eq!(sb3.assets[0].md5.as_str(), md5);
    }
}
