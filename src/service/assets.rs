//! Assets: content-addressed media, unique by (md5, asset_type). Uploads are staged while
//! streaming, sniffed, then inserted with `ON CONFLICT DO NOTHING`; every racer gets the
//! winner's row and exactly one of them `created` (invariant I5, docs/ARCHITECTURE.md).

use entity::asset;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::{
    domain::{AssetKind, DataFormat, Md5, Viewer},
    error::{AppError, AppResult},
    service::{Services, now, write::Effect},
    storage::StagedUpload,
};

/// A detected media format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub content_type: &'static str,
    pub extension: &'static str,
}

/// What the bytes are, if they are what `kind` promises. Decided by the bytes, never by the
/// client's file name or content type.
pub fn sniff(kind: AssetKind, head: &[u8]) -> Option<Format> {
    let f = |format: DataFormat| {
        Some(Format {
            content_type: format.content_type(),
            extension: format.extension(),
        })
    };
    match kind {
        AssetKind::ImageBitmap if head.starts_with(b"\x89PNG\r\n\x1a\n") => f(DataFormat::Png),
        AssetKind::ImageBitmap if head.starts_with(&[0xFF, 0xD8, 0xFF]) => f(DataFormat::Jpeg),
        AssetKind::Sound
            if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" =>
        {
            f(DataFormat::Wav)
        }
        AssetKind::Sound if head.starts_with(b"ID3") => f(DataFormat::Mp3),
        // MPEG audio frame sync: 11 set bits.
        AssetKind::Sound if head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0 => {
            f(DataFormat::Mp3)
        }
        AssetKind::ImageVector if svg_root(head) => f(DataFormat::Svg),
        _ => None,
    }
}

/// Whether the document's root element is `<svg>`: skips a BOM, whitespace, the XML
/// declaration, processing instructions, comments and a DOCTYPE.
fn svg_root(head: &[u8]) -> bool {
    let mut s = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    loop {
        while let Some((first, rest)) = s.split_first() {
            if first.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        let skip_past = |s: &[u8], end: &[u8]| -> Option<usize> {
            s.windows(end.len())
                .position(|w| w == end)
                .map(|p| p + end.len())
        };
        let next = if s.starts_with(b"<?") {
            skip_past(s, b"?>")
        } else if s.starts_with(b"<!--") {
            skip_past(s, b"-->")
        } else if s.starts_with(b"<!DOCTYPE") || s.starts_with(b"<!doctype") {
            skip_past(s, b">")
        } else {
            let Some(rest) = s.strip_prefix(b"<svg") else {
                return false;
            };
            return matches!(
                rest.first(),
                Some(b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')
            );
        };
        match next {
            Some(n) => s = &s[n..],
            None => return false,
        }
    }
}

/// Stores an uploaded asset, or finds the identical one already stored.
/// Returns the asset and whether this call created it.
pub async fn upload(
    svc: &Services,
    viewer: Viewer,
    upload: StagedUpload,
    kind: AssetKind,
    claimed_md5: Option<Md5>,
    effect: Option<&Effect>,
) -> AppResult<(asset::Model, bool)> {
    store(svc, Some(viewer.id.0), upload, kind, claimed_md5, effect).await
}

/// [`upload`] for any origin: `created_by` is None for the built-in assets
/// ([`super::builtin`]), which no user uploaded.
pub(crate) async fn store(
    svc: &Services,
    created_by: Option<i64>,
    upload: StagedUpload,
    kind: AssetKind,
    claimed_md5: Option<Md5>,
    effect: Option<&Effect>,
) -> AppResult<(asset::Model, bool)> {
    let StagedUpload { blob, head } = upload;
    if let Some(claimed) = &claimed_md5
        && claimed.as_str() != blob.md5
    {
        return Err(AppError::ChecksumMismatch(format!(
            "the bytes hash to md5 {}, not {}",
            blob.md5,
            claimed.as_str()
        )));
    }
    let format = sniff(kind, &head).ok_or_else(|| {
        AppError::bad_input(
            "file",
            match kind {
                AssetKind::ImageVector => "IMAGE_VECTOR assets must be SVG documents",
                AssetKind::ImageBitmap => "IMAGE_BITMAP assets must be PNG or JPEG",
                AssetKind::Sound => "SOUND assets must be WAV or MP3",
            },
        )
    })?;
    let (md5, sha256, size) = (blob.md5.clone(), blob.sha256.clone(), blob.size as i64);
    // Winner or not, the staged copy is published after commit: if the blob is there already
    // this just removes our copy; if the winner has not published yet, ours (same bytes)
    // takes its place.
    let (asset, created) = super::write::commit(svc, vec![blob], effect, |txn| {
        let (md5, sha256) = (md5.clone(), sha256.clone());
        Box::pin(async move {
            let (winner, created) = crate::db::get_or_create(
                txn,
                asset::ActiveModel {
                    md5: Set(md5.clone()),
                    asset_type: Set(kind.as_str().to_owned()),
                    sha256: Set(sha256.clone()),
                    size: Set(size),
                    content_type: Set(format.content_type.to_owned()),
                    data_format: Set(format.extension.to_owned()),
                    blob_key: Set(sha256.clone()),
                    created_by: Set(created_by),
                    created_at: Set(now()),
                    ..Default::default()
                },
                [asset::Column::Md5, asset::Column::AssetType],
                asset::Entity::find()
                    .filter(asset::Column::Md5.eq(md5.as_str()))
                    .filter(asset::Column::AssetType.eq(kind.as_str())),
            )
            .await?;
            if winner.sha256 != sha256 {
                // An md5 collision: same key, different bytes. Never alias them.
                return Err(AppError::Conflict(format!(
                    "a different {} asset with md5 {md5} is already stored",
                    kind.as_str()
                )));
            }
            Ok((winner, created))
        })
    })
    .await?;
    if created {
        tracing::info!(asset.id = asset.id, asset.md5 = %asset.md5, asset.size = asset.size, "asset_created");
    } else {
        tracing::debug!(asset.id = asset.id, asset.md5 = %asset.md5, "asset_upload_lost_race");
    }
    Ok((asset, created))
}

/// The asset of (md5, kind).
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    md5: &str,
    kind: AssetKind,
) -> AppResult<Option<asset::Model>> {
    Ok(asset::Entity::find()
        .filter(asset::Column::Md5.eq(md5))
        .filter(asset::Column::AssetType.eq(kind.as_str()))
        .one(conn)
        .await?)
}

/// The asset served as `<md5>.<ext>`: stored in the format the extension names (`ext` may be
/// an alias, e.g. `jpeg` for `jpg`).
pub async fn find_by_md5ext(
    svc: &Services,
    md5: &Md5,
    format: DataFormat,
) -> AppResult<Option<asset::Model>> {
    Ok(asset::Entity::find()
        .filter(asset::Column::Md5.eq(md5.as_str()))
        .filter(asset::Column::DataFormat.eq(format.extension()))
        .one(svc.db.conn())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_bytes() {
        let png = b"\x89PNG\r\n\x1a\n....";
        assert_eq!(sniff(AssetKind::ImageBitmap, png).unwrap().extension, "png");
        assert_eq!(sniff(AssetKind::Sound, png), None);
        assert_eq!(
            sniff(AssetKind::ImageBitmap, &[0xFF, 0xD8, 0xFF, 0xE0])
                .unwrap()
                .extension,
            "jpg"
        );
        assert_eq!(
            sniff(AssetKind::Sound, b"RIFF\0\0\0\0WAVEfmt ")
                .unwrap()
                .extension,
            "wav"
        );
        assert_eq!(
            sniff(AssetKind::Sound, b"RIFF\0\0\0\0AVI ").map(|f| f.extension),
            None
        );
        assert_eq!(
            sniff(AssetKind::Sound, b"ID3\x04").unwrap().extension,
            "mp3"
        );
        assert_eq!(
            sniff(AssetKind::Sound, &[0xFF, 0xFB, 0x90])
                .unwrap()
                .extension,
            "mp3"
        );
        assert!(
            sniff(
                AssetKind::ImageVector,
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"
            )
            .is_some()
        );
        assert!(sniff(
            AssetKind::ImageVector,
            b"\xEF\xBB\xBF<?xml version=\"1.0\"?>\n<!-- made by hand -->\n<!DOCTYPE svg PUBLIC \"x\" \"y\">\n<svg>\n</svg>"
        )
        .is_some());
        assert!(sniff(AssetKind::ImageVector, b"<html><svg></svg></html>").is_none());
        assert!(sniff(AssetKind::ImageVector, b"<svgfoo>").is_none());
        assert!(sniff(AssetKind::ImageVector, b"<!-- unterminated").is_none());
        assert!(sniff(AssetKind::ImageVector, b"").is_none());
    }
}
