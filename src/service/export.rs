//! Building a `.sb3` bundle: the project JSON of one version and every asset it references,
//! zipped the way Scratch opens it (`project.json` at the root, each asset under the name the
//! JSON looks it up by, exactly as written there: Scratch's lookup is case-sensitive).
//!
//! The bundle is deterministic (fixed entry order, fixed timestamps): two builds of one version
//! produce the same bytes, hence the same content-addressed blob key. A build repeated after a
//! worker died therefore never leaves a second bundle blob behind.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use entity::{asset, job};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::{
    domain::{DataFormat, Md5, ProjectContent},
    error::AppError,
    service::Services,
    storage::StagedBlob,
};

/// Why a build produced no bundle. Either way the job ends FAILED with [`BuildFailed::reason`]
/// as its `error`; neither is an error of the request that asked for the export.
#[derive(Debug)]
pub enum BuildFailed {
    /// This version cannot be built (retrying it is futile): the reason.
    Unbuildable(String),
    /// Trouble on the way (database, storage, a corrupt blob).
    Error(AppError),
}

impl BuildFailed {
    /// What `Job.error` says: the reason, or the error's public message (details are logged).
    pub fn reason(&self) -> String {
        match self {
            BuildFailed::Unbuildable(why) => why.clone(),
            BuildFailed::Error(e) => e.public_message(),
        }
    }
}

impl std::fmt::Display for BuildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildFailed::Unbuildable(why) => f.write_str(why),
            BuildFailed::Error(e) => e.fmt(f),
        }
    }
}

impl From<AppError> for BuildFailed {
    fn from(e: AppError) -> Self {
        BuildFailed::Error(e)
    }
}

impl From<std::io::Error> for BuildFailed {
    fn from(e: std::io::Error) -> Self {
        BuildFailed::Error(e.into())
    }
}

fn failed(message: impl Into<String>) -> BuildFailed {
    BuildFailed::Unbuildable(message.into())
}

/// Builds the bundle of `job`'s project version and stages it (not yet visible: the job's
/// READY transaction publishes it).
pub async fn build(svc: &Services, job: &job::Model) -> Result<StagedBlob, BuildFailed> {
    // Tests make a build fail on purpose (`return(message)`).
    fail::fail_point!("export::build", |msg: Option<String>| Err(failed(
        msg.unwrap_or_else(|| "injected build failure".to_owned())
    )));
    let key = job
        .source_key
        .as_deref()
        .ok_or_else(|| failed("the job does not name the project's content"))?;
    let json = match svc.blobs.read_content(key).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(failed(format!(
                "the content of version {} is no longer stored; export again",
                job.subject_version
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| AppError::internal(format!("stored project content does not parse: {e}")))?;
    // Validates the document as every save did; the names come from the JSON as written.
    ProjectContent::parse(value.clone(), u64::MAX)?;
    let wanted = entry_names(&value);

    let md5s: Vec<String> = wanted
        .values()
        .map(|(md5, _)| md5.as_str().to_owned())
        .collect();
    let rows = if md5s.is_empty() {
        Vec::new()
    } else {
        asset::Entity::find()
            .filter(asset::Column::Md5.is_in(md5s))
            .all(svc.db.conn())
            .await
            .map_err(AppError::from)?
    };
    // One read per asset, however many names it is looked up by.
    let mut read: HashMap<(Md5, DataFormat), Vec<u8>> = HashMap::new();
    let mut entries = Vec::with_capacity(wanted.len());
    for (name, (md5, format)) in &wanted {
        let key = (md5.clone(), *format);
        if !read.contains_key(&key) {
            let row = rows
                .iter()
                .find(|a| {
                    a.md5 == md5.as_str()
                        && a.asset_type == format.kind().as_str()
                        && a.data_format == format.extension()
                })
                .ok_or_else(|| failed(format!("asset {name} is not stored")))?;
            let bytes = svc.blobs.read(&row.blob_key).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    AppError::internal(format!("asset {} blob {} is missing", row.id, row.blob_key))
                } else {
                    AppError::from(e)
                }
            })?;
            read.insert(key.clone(), bytes);
        }
        entries.push((name.clone(), read[&key].clone()));
    }
    let zipped = tokio::task::spawn_blocking(move || {
        crate::service::sb3::build_sb3(&json, entries.into_iter())
    })
    .await
    .map_err(AppError::internal)?
    .map_err(|e| AppError::internal(format!("zipping failed: {e}")))?;
    Ok(svc.blobs.stage_bytes(Arc::new(zipped)).await?)
}

/// Every name the project's JSON looks an asset up by, each with the asset it names, in name
/// order. Scratch looks a costume up in the bundle as `<assetId>.<dataFormat>` and a sound as
/// its `md5ext`, case-sensitively and byte for byte: a project saying `E8544D….png` needs an
/// entry of exactly that name, and one saying `….jpeg` for a JPEG stored as `jpg` needs `.jpeg`.
/// So each costume and sound gives its `md5ext` and its `<assetId>.<dataFormat>` as written,
/// when they name the asset its reference resolves to (the `md5ext`, else the pair: the rule
/// every save validated), and a name that names something else is left out.
fn entry_names(content: &serde_json::Value) -> BTreeMap<String, (Md5, DataFormat)> {
    let parse = |name: &str| {
        let (stem, ext) = name.rsplit_once('.')?;
        Some((
            Md5::parse(stem)?,
            DataFormat::from_extension(&ext.to_ascii_lowercase())?,
        ))
    };
    let mut names = BTreeMap::new();
    let targets = content["targets"].as_array().into_iter().flatten();
    for target in targets {
        for list in ["costumes", "sounds"] {
            for item in target[list].as_array().into_iter().flatten() {
                let md5ext = item["md5ext"].as_str().map(str::to_owned);
                let pair = match (item["assetId"].as_str(), item["dataFormat"].as_str()) {
                    (Some(id), Some(format)) => Some(format!("{id}.{format}")),
                    _ => None,
                };
                let Some(asset) = md5ext
                    .as_deref()
                    .map_or_else(|| pair.as_deref().and_then(parse), parse)
                else {
                    continue;
                };
                for name in [md5ext, pair].into_iter().flatten() {
                    if parse(&name) == Some(asset.clone()) {
                        names.insert(name, asset.clone());
                    }
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_named_as_the_json_looks_them_up() {
        let a = "e8544d5a1fbd3f3a8e9d4b6f1a2b3c4d";
        let up = a.to_ascii_uppercase();
        let b = "0123456789abcdef0123456789abcdef";
        let content = serde_json::json!({ "targets": [
            { "costumes": [
                // Upper-case md5: the entry keeps it.
                { "md5ext": format!("{up}.png"), "assetId": up, "dataFormat": "png" },
                // A JPEG referenced by both of its extensions.
                { "md5ext": format!("{b}.jpeg"), "assetId": b, "dataFormat": "jpeg" },
                { "md5ext": format!("{b}.jpg"), "assetId": b, "dataFormat": "jpg" },
                // md5ext and the costume lookup differ in case: both names.
                { "md5ext": format!("{a}.PNG"), "assetId": up, "dataFormat": "png" },
                // An assetId naming another asset than md5ext: only md5ext counts.
                { "md5ext": format!("{a}.png"), "assetId": b, "dataFormat": "png" },
            ], "sounds": [
                // No md5ext: the pair.
                { "assetId": up, "dataFormat": "wav" },
            ] },
            { "costumes": "not a list" },
        ]});
        let names: Vec<(String, String, DataFormat)> = entry_names(&content)
            .into_iter()
            .map(|(n, (md5, f))| (n, md5.as_str().to_owned(), f))
            .collect();
        let expected = [
            (format!("{b}.jpeg"), b, DataFormat::Jpeg),
            (format!("{b}.jpg"), b, DataFormat::Jpeg),
            (format!("{up}.png"), a, DataFormat::Png),
            (format!("{up}.wav"), a, DataFormat::Wav),
            (format!("{a}.PNG"), a, DataFormat::Png),
            (format!("{a}.png"), a, DataFormat::Png),
        ];
        let expected: Vec<(String, String, DataFormat)> = expected
            .into_iter()
            .map(|(n, m, f)| (n, m.to_owned(), f))
            .collect();
        assert_eq!(names, expected);
    }
}
