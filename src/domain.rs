//! Domain types parsed at the edge, so the service layer never sees invalid values.

use std::fmt;

use crate::error::{AppError, AppResult};

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Id of a ", $what, ".")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl $name {
            /// Parses a GraphQL `ID`; a malformed one is bad input on `field`.
            pub fn parse(raw: &str, field: &'static str) -> AppResult<Self> {
                raw.parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .map($name)
                    .ok_or_else(|| {
                        AppError::bad_input(field, concat!("not a valid ", $what, " id"))
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(UserId, "user");
id_type!(ProjectId, "project");
id_type!(GroupId, "group");
id_type!(AssetId, "asset");

/// A user's role; stored lower-case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Student,
    Teacher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
            Role::Admin => "admin",
        }
    }

    /// Unknown stored values degrade to the least privileged role.
    pub fn from_db(s: &str) -> Role {
        match s {
            "admin" => Role::Admin,
            "teacher" => Role::Teacher,
            _ => Role::Student,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "student" => Ok(Role::Student),
            "teacher" => Ok(Role::Teacher),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (student, teacher or admin)"
            )),
        }
    }
}

/// The signed-in user a request acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub id: UserId,
    pub role: Role,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A project title: trimmed, 1 to 200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> AppResult<Title> {
        let t = raw.trim();
        if t.is_empty() {
            return Err(AppError::bad_input("title", "title must not be empty"));
        }
        if t.chars().count() > Self::MAX_CHARS {
            return Err(AppError::bad_input(
                "title",
                format!("title must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if t.chars().any(char::is_control) {
            return Err(AppError::bad_input(
                "title",
                "title must not contain control characters",
            ));
        }
        Ok(Title(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The three kinds of media Scratch stores; with the md5 they form an asset's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AssetKind {
    ImageVector,
    ImageBitmap,
    Sound,
}

impl AssetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::ImageVector => "image_vector",
            AssetKind::ImageBitmap => "image_bitmap",
            AssetKind::Sound => "sound",
        }
    }

    pub fn from_db(s: &str) -> Option<AssetKind> {
        match s {
            "image_vector" => Some(AssetKind::ImageVector),
            "image_bitmap" => Some(AssetKind::ImageBitmap),
            "sound" => Some(AssetKind::Sound),
            _ => None,
        }
    }
}

/// The file formats Scratch stores assets in. `assets.data_format` holds the canonical
/// extension of the format the bytes were sniffed as; a project's `md5ext` may use an alias
/// of it. This table is the one place aliases are defined: project references, asset URLs
/// and fsck all go through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataFormat {
    Svg,
    Png,
    Jpeg,
    Wav,
    Mp3,
}

impl DataFormat {
    /// Extension (lower case, as Scratch writes it) → format; `jpg` and `jpeg` are one format.
    pub fn from_extension(ext: &str) -> Option<DataFormat> {
        match ext {
            "svg" => Some(DataFormat::Svg),
            "png" => Some(DataFormat::Png),
            "jpg" | "jpeg" => Some(DataFormat::Jpeg),
            "wav" => Some(DataFormat::Wav),
            "mp3" => Some(DataFormat::Mp3),
            _ => None,
        }
    }

    /// The canonical extension: what `assets.data_format` stores and asset URLs use.
    pub fn extension(self) -> &'static str {
        match self {
            DataFormat::Svg => "svg",
            DataFormat::Png => "png",
            DataFormat::Jpeg => "jpg",
            DataFormat::Wav => "wav",
            DataFormat::Mp3 => "mp3",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            DataFormat::Svg => "image/svg+xml",
            DataFormat::Png => "image/png",
            DataFormat::Jpeg => "image/jpeg",
            DataFormat::Wav => "audio/wav",
            DataFormat::Mp3 => "audio/mpeg",
        }
    }

    /// The asset kind this format is stored as.
    pub fn kind(self) -> AssetKind {
        match self {
            DataFormat::Svg => AssetKind::ImageVector,
            DataFormat::Png | DataFormat::Jpeg => AssetKind::ImageBitmap,
            DataFormat::Wav | DataFormat::Mp3 => AssetKind::Sound,
        }
    }
}

/// A lower-case hex md5 (32 digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Md5(String);

impl Md5 {
    pub fn parse(raw: &str) -> Option<Md5> {
        (raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Md5(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An asset a project's JSON references: `md5ext` = `<md5>.<ext>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetRef {
    pub md5: Md5,
    pub kind: AssetKind,
    /// The format the extension names: the asset must be stored in it.
    pub format: DataFormat,
    pub md5ext: String,
}

/// Scratch 3 project JSON, validated and serialized, with the assets it references.
#[derive(Clone, Debug)]
pub struct ProjectContent {
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub asset_refs: Vec<AssetRef>,
}

impl ProjectContent {
    /// Deepest nesting of arrays and objects a project may have. Scratch projects nest far less
    /// (blocks are a flat map); under serde_json's own 128, every client can read it back.
    pub const MAX_DEPTH: usize = 100;

    /// Validates a Scratch 3 document: an object with a `targets` array, nested at most
    /// [`Self::MAX_DEPTH`] levels, at most `max_bytes` once serialized, whose costumes and
    /// sounds name their assets well. Every way content arrives (GraphQL literal or variable,
    /// `.sb3`, the editor's routes) comes through here.
    pub fn parse(value: serde_json::Value, max_bytes: u64) -> AppResult<ProjectContent> {
        if depth_exceeds(&value, Self::MAX_DEPTH) {
            return Err(AppError::LimitExceeded {
                limit: "content_depth",
                field: Some("content"),
                message: format!(
                    "content is nested deeper than {} levels of arrays and objects",
                    Self::MAX_DEPTH
                ),
            });
        }
        let obj = value
            .as_object()
            .ok_or_else(|| AppError::bad_input("content", "content must be a JSON object"))?;
        let targets = obj
            .get("targets")
            .and_then(|t| t.as_array())
            .ok_or_else(|| AppError::bad_input("content", "content must have a `targets` array"))?;
        let mut refs = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let target = target.as_object().ok_or_else(|| {
                AppError::bad_input("content", format!("targets[{i}] must be an object"))
            })?;
            for (list, is_sound) in [("costumes", false), ("sounds", true)] {
                let Some(items) = target.get(list) else {
                    continue;
                };
                let items = items.as_array().ok_or_else(|| {
                    AppError::bad_input("content", format!("targets[{i}].{list} must be an array"))
                })?;
                for (j, item) in items.iter().enumerate() {
                    refs.push(asset_ref(item, is_sound).map_err(|why| {
                        AppError::bad_input("content", format!("targets[{i}].{list}[{j}]: {why}"))
                    })?);
                }
            }
        }
        let bytes = serde_json::to_vec(&value).map_err(AppError::internal)?;
        if bytes.len() as u64 > max_bytes {
            return Err(AppError::PayloadTooLarge {
                what: "project content",
                limit: max_bytes,
            });
        }
        refs.sort();
        refs.dedup();
        Ok(ProjectContent {
            bytes: std::sync::Arc::new(bytes),
            asset_refs: refs,
        })
    }
}

/// Whether `value` nests arrays and objects deeper than `max` (the top level is 1). Iterative:
/// the value may come from a parser that bounds nesting less tightly than we do.
fn depth_exceeds(value: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

fn asset_ref(item: &serde_json::Value, is_sound: bool) -> Result<AssetRef, String> {
    let field = |name: &str| item.get(name).and_then(|v| v.as_str());
    let (md5, ext) = match field("md5ext") {
        Some(md5ext) => md5ext
            .rsplit_once('.')
            .ok_or_else(|| format!("md5ext {md5ext:?} has no extension"))?,
        None => match (field("assetId"), field("dataFormat")) {
            (Some(id), Some(format)) => (id, format),
            _ => return Err("needs `md5ext` or `assetId` and `dataFormat`".to_owned()),
        },
    };
    let ext = ext.to_ascii_lowercase();
    let md5 = Md5::parse(md5).ok_or_else(|| format!("{md5:?} is not an md5"))?;
    let format = DataFormat::from_extension(&ext)
        .filter(|f| (f.kind() == AssetKind::Sound) == is_sound)
        .ok_or_else(|| format!("unsupported data format {ext:?}"))?;
    Ok(AssetRef {
        md5ext: format!("{}.{ext}", md5.as_str()),
        md5,
        kind: format.kind(),
        format,
    })
}
