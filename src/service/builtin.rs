//! Built-in assets: the five media files of the stock Scratch editor's default project
//! (vendor/scratch-default-project). The editor saves "New project" without uploading them,
//! so every data dir must already have them. They are ordinary asset rows and blobs, with no
//! `created_by`: their rows reference their blobs, so `gc` keeps them, and `fsck` checks
//! that each one is present with the right bytes.

use std::sync::Arc;

use crate::{
    domain::{AssetKind, DataFormat, Md5},
    error::{AppError, AppResult},
    service::Services,
    storage::{SNIFF_BYTES, StagedUpload},
};

/// One built-in asset, embedded in the binary.
#[derive(Debug)]
pub struct Builtin {
    /// `<md5>.<ext>`, the name the editor's project JSON uses.
    pub md5ext: &'static str,
    pub sha256: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! builtin {
    ($md5ext:literal, $sha256:literal) => {
        Builtin {
            md5ext: $md5ext,
            sha256: $sha256,
            bytes: include_bytes!(concat!("../../vendor/scratch-default-project/", $md5ext)),
        }
    };
}

/// The default project's assets (sha256 as listed in the vendor README; a unit test checks
/// both hashes against the embedded bytes).
pub const BUILTINS: [Builtin; 5] = [
    builtin!(
        "cd21514d0531fdffb22204e0ec5ed84a.svg",
        "c3b723d028900d9768878653c3a65c377871fe3ecfce5c7b66ef795505e85e1a"
    ),
    builtin!(
        "bcf454acf82e4504149f7ffe07081dbc.svg",
        "0f561db6723a721bd54c7f303072846023bb5b39be0846fcf098ae4b93f7df98"
    ),
    builtin!(
        "0fb9be3e8397c983338cb71dc84d0b25.svg",
        "6c438b5dd181e6ca0bfe74d36c1503e13ebce02681d3c384d68d923d6164573a"
    ),
    builtin!(
        "83a9787d4cb6f3b7632b4ddfebf74367.wav",
        "fb8c18242813d8763cccf5f6077daf44b672d0088f5d3688cca29d621b4959cc"
    ),
    builtin!(
        "83c36d806dc92327b9e7049a565c6bff.wav",
        "427afe9d62874d41401d01558d48bec98f26d675e4480b073835576ed1ff499d"
    ),
];

impl Builtin {
    /// The md5 (the name before the dot) and the format its extension names.
    pub fn parts(&self) -> (Md5, DataFormat) {
        let (md5, ext) = self
            .md5ext
            .split_once('.')
            .expect("built-in names are <md5>.<ext>");
        (
            Md5::parse(md5).expect("built-in names start with an md5"),
            DataFormat::from_extension(ext).expect("built-in extensions are known formats"),
        )
    }

    pub fn kind(&self) -> AssetKind {
        self.parts().1.kind()
    }
}

/// Makes sure every built-in asset has its row and its published blob. Idempotent and safe
/// with several processes starting at once: each one goes through the upload path
/// (`ON CONFLICT DO NOTHING` on (md5, type); a blob already published is left as it is, a
/// missing one is published from the staged copy). Run by `migrate` and at server start,
/// after recovery; not by `fsck`, which must see a missing one rather than repair it.
pub async fn ensure(svc: &Services) -> AppResult<()> {
    for b in &BUILTINS {
        let (md5, format) = b.parts();
        let row = super::assets::find_by_md5ext(svc, &md5, format).await?;
        let stage = || async {
            svc.blobs
                .stage_bytes(Arc::new(b.bytes.to_vec()))
                .await
                .map_err(|e| AppError::Unavailable(format!("cannot stage built-in asset: {e}")))
        };
        if let Some(row) = &row
            && row.sha256 == b.sha256
        {
            let path = svc.blobs.blob_path(&row.blob_key);
            let hashed = tokio::task::spawn_blocking(move || crate::storage::hash_file(&path))
                .await
                .map_err(AppError::internal)?;
            match hashed {
                Ok((_, sha256, _)) if sha256 == b.sha256 => continue,
                // Published but with other bytes (a damaged disk, a hand edit): the right
                // bytes replace them; rows referencing the key are unchanged.
                Ok(_) => {
                    svc.blobs.replace(stage().await?).await.map_err(|e| {
                        AppError::Unavailable(format!("cannot repair built-in asset: {e}"))
                    })?;
                    tracing::warn!(asset.md5ext = b.md5ext, "builtin_asset_blob_repaired");
                    continue;
                }
                // Missing: the upload path below publishes it.
                Err(_) => {}
            }
        }
        let blob = stage().await?;
        let head = b.bytes[..b.bytes.len().min(SNIFF_BYTES)].to_vec();
        let (row, created) = super::assets::store(
            svc,
            None,
            StagedUpload { blob, head },
            format.kind(),
            Some(md5),
            None,
        )
        .await?;
        tracing::info!(
            asset.id = row.id,
            asset.md5ext = b.md5ext,
            created,
            "builtin_asset_ensured"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_bytes_match_their_names() {
        use sha2::Digest;
        for b in &BUILTINS {
            let (md5, format) = b.parts();
            assert_eq!(
                hex::encode(md5::Md5::digest(b.bytes)),
                md5.as_str(),
                "{}",
                b.md5ext
            );
            assert_eq!(
                hex::encode(sha2::Sha256::digest(b.bytes)),
                b.sha256,
                "{}",
                b.md5ext
            );
            assert!(
                super::super::assets::sniff(format.kind(), b.bytes).is_some(),
                "{} sniffs as its kind",
                b.md5ext
            );
        }
    }
}
