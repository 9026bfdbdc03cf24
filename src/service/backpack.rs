//! The backpack: a user's private shelf of reusable pieces (costumes, sounds, sprites,
//! scripts). Each item is two blobs (body and thumbnail) staged by the upload and committed
//! with the item row through `service::write`, so a failure (wrong type, quota) leaves no row
//! and no file. The quota (items and bytes per user) holds under concurrent saves: the
//! owner's user row is locked before the backpack is counted.

use std::collections::HashMap;

use entity::{asset, backpack_item, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::{
    domain::{AssetKind, Viewer},
    error::{AppError, AppResult},
    service::{Services, access, assets::sniff, now, write::Effect},
    storage::StagedUpload,
};

/// What a backpack item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Costume,
    Sound,
    Sprite,
    Script,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Costume => "costume",
            ItemKind::Sound => "sound",
            ItemKind::Sprite => "sprite",
            ItemKind::Script => "script",
        }
    }

    /// The kind named by its lower-case name (the Scratch editor's `type`); `None` for
    /// anything else.
    pub fn from_name(s: &str) -> Option<ItemKind> {
        [
            ItemKind::Costume,
            ItemKind::Sound,
            ItemKind::Sprite,
            ItemKind::Script,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn from_db(s: &str) -> ItemKind {
        match s {
            "costume" => ItemKind::Costume,
            "sound" => ItemKind::Sound,
            "sprite" => ItemKind::Sprite,
            _ => ItemKind::Script,
        }
    }

    /// The media type the body's bytes show, if they are what this kind holds.
    fn detect(self, head: &[u8]) -> Option<&'static str> {
        match self {
            ItemKind::Costume => sniff(AssetKind::ImageVector, head)
                .or_else(|| sniff(AssetKind::ImageBitmap, head))
                .map(|f| f.content_type),
            ItemKind::Sound => sniff(AssetKind::Sound, head).map(|f| f.content_type),
            // A .sprite3 file is a zip.
            ItemKind::Sprite => head.starts_with(b"PK\x03\x04").then_some("application/zip"),
            ItemKind::Script => head
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'[' || *b == b'{')
                .then_some("application/json"),
        }
    }
}

/// Longest item name.
const MAX_NAME_CHARS: usize = 100;

/// What to save.
pub struct NewItem {
    pub name: String,
    pub kind: ItemKind,
    pub mime: String,
    pub body: StagedUpload,
    pub thumbnail: StagedUpload,
}

/// Saves an item into the viewer's backpack, within the quota.
pub async fn save(
    svc: &Services,
    viewer: Viewer,
    item: NewItem,
    effect: Option<&Effect>,
) -> AppResult<backpack_item::Model> {
    let name = item.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(AppError::bad_input(
            "name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let detected = item.kind.detect(&item.body.head).ok_or_else(|| {
        AppError::bad_input(
            "body",
            format!("the body is not a {} file", item.kind.as_str()),
        )
    })?;
    if item.mime != detected {
        return Err(AppError::bad_input(
            "mime",
            format!("the body is {detected}, not {}", item.mime),
        ));
    }
    if sniff(AssetKind::ImageBitmap, &item.thumbnail.head).is_none() {
        return Err(AppError::bad_input(
            "thumbnail",
            "the thumbnail must be PNG or JPEG",
        ));
    }
    let (body, thumbnail) = (item.body.blob, item.thumbnail.blob);
    let size = (body.size + thumbnail.size) as i64;
    let (body_key, thumbnail_key) = (body.key.clone(), thumbnail.key.clone());
    let limits = svc.limits.clone();
    let mime = detected.to_owned();
    let saved = super::write::commit(svc, vec![body, thumbnail], effect, |txn| {
        let (name, mime, body_key, thumbnail_key, limits) = (
            name.clone(),
            mime.clone(),
            body_key.clone(),
            thumbnail_key.clone(),
            limits.clone(),
        );
        Box::pin(async move {
            // The owner's row is the quota's lock: concurrent saves count one after another.
            user::Entity::find_by_id(viewer.id.0)
                .lock_exclusive()
                .one(txn)
                .await?
                .ok_or(AppError::Unauthenticated)?;
            // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back for one type on both.
            let (items, bytes): (i64, i64) = backpack_item::Entity::find()
                .select_only()
                .column_as(backpack_item::Column::Id.count(), "items")
                .column_as(
                    sea_orm::sea_query::Expr::cust("CAST(COALESCE(SUM(size), 0) AS BIGINT)"),
                    "bytes",
                )
                .filter(backpack_item::Column::OwnerId.eq(viewer.id.0))
                .into_tuple()
                .one(txn)
                .await?
                .unwrap_or((0, 0));
            if items as u64 >= limits.backpack_max_items {
                return Err(AppError::QuotaExceeded {
                    what: "backpack items",
                    limit: limits.backpack_max_items,
                });
            }
            if (bytes + size) as u64 > limits.backpack_max_bytes {
                return Err(AppError::QuotaExceeded {
                    what: "backpack bytes",
                    limit: limits.backpack_max_bytes,
                });
            }
            Ok(backpack_item::ActiveModel {
                owner_id: Set(viewer.id.0),
                name: Set(name),
                kind: Set(item.kind.as_str().to_owned()),
                body_key: Set(body_key),
                thumbnail_key: Set(Some(thumbnail_key)),
                created_at: Set(now()),
                mime: Set(mime),
                size: Set(size),
                ..Default::default()
            }
            .insert(txn)
            .await?)
        })
    })
    .await?;
    tracing::info!(backpack.item = saved.id, user.id = %viewer.id, backpack.size = size, "backpack_item_saved");
    Ok(saved)
}

/// A page of the viewer's backpack, newest first (by descending id, after the cursor id).
pub async fn list(
    svc: &Services,
    viewer: Viewer,
    first: u64,
    before_id: Option<i64>,
) -> AppResult<(Vec<backpack_item::Model>, bool)> {
    let mut query = backpack_item::Entity::find()
        .filter(access::own_backpack(viewer))
        .order_by_desc(backpack_item::Column::Id);
    if let Some(id) = before_id {
        query = query.filter(backpack_item::Column::Id.lt(id));
    }
    let mut rows = query.limit(first + 1).all(svc.db.conn()).await?;
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok((rows, has_next))
}

/// A page of the viewer's own backpack by position (the Scratch editor pages with
/// `limit`/`offset`), newest first.
pub async fn list_at(
    svc: &Services,
    viewer: Viewer,
    limit: u64,
    offset: u64,
) -> AppResult<Vec<backpack_item::Model>> {
    Ok(backpack_item::Entity::find()
        .filter(access::own_backpack(viewer))
        .order_by_desc(backpack_item::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(svc.db.conn())
        .await?)
}

/// Publishes a saved item's parts as content-addressed assets, the way Scratch's backpack
/// shares its asset store: the thumbnail (PNG or JPEG) always, the body when it is a costume or
/// a sound (the editor adds those to a project by md5ext, and a project saved with them must
/// find them on the asset server). Each is `assets::upload`: idempotent, and racers of the same
/// bytes get one row.
pub async fn publish_parts(
    svc: &Services,
    viewer: Viewer,
    kind: ItemKind,
    body: StagedUpload,
    thumbnail: StagedUpload,
) -> AppResult<()> {
    super::assets::upload(svc, viewer, thumbnail, AssetKind::ImageBitmap, None, None).await?;
    let body_kind = match kind {
        ItemKind::Costume => [AssetKind::ImageVector, AssetKind::ImageBitmap]
            .into_iter()
            .find(|k| sniff(*k, &body.head).is_some()),
        ItemKind::Sound => Some(AssetKind::Sound),
        ItemKind::Sprite | ItemKind::Script => None,
    };
    if let Some(asset_kind) = body_kind {
        super::assets::upload(svc, viewer, body, asset_kind, None, None).await?;
    }
    Ok(())
}

/// The asset names (`<md5>.<ext>`) of the blobs of `items` that are published as assets
/// ([`publish_parts`]), by blob key. A blob missing here is reachable only through its item.
pub async fn asset_names(
    svc: &Services,
    items: &[backpack_item::Model],
) -> AppResult<HashMap<String, String>> {
    let keys: Vec<&str> = items
        .iter()
        .flat_map(|i| std::iter::once(i.body_key.as_str()).chain(i.thumbnail_key.as_deref()))
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, String)> = asset::Entity::find()
        .select_only()
        .column(asset::Column::BlobKey)
        .column(asset::Column::Md5)
        .column(asset::Column::DataFormat)
        .filter(asset::Column::BlobKey.is_in(keys))
        .into_tuple()
        .all(svc.db.conn())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key, md5, ext)| (key, format!("{md5}.{ext}")))
        .collect())
}

/// An item the viewer may read (`access::backpack_items`); any other does not exist for them.
pub async fn get(
    svc: &Services,
    viewer: Viewer,
    id: i64,
) -> AppResult<Option<backpack_item::Model>> {
    Ok(backpack_item::Entity::find_by_id(id)
        .filter(access::backpack_items(viewer))
        .one(svc.db.conn())
        .await?)
}

/// Deletes an item the viewer may delete (`access::backpack_items`); any other is `NOT_FOUND`.
/// Its blobs become garbage for `atelier gc`.
pub async fn delete(
    svc: &Services,
    viewer: Viewer,
    id: i64,
    effect: Option<&Effect>,
) -> AppResult<i64> {
    delete_where(svc, viewer, id, access::backpack_items(viewer), effect).await
}

/// Deletes an item of the viewer's own backpack (a route that names the backpack: an item
/// of another one is `NOT_FOUND` there, even for an admin).
pub async fn delete_own(
    svc: &Services,
    viewer: Viewer,
    id: i64,
    effect: Option<&Effect>,
) -> AppResult<i64> {
    delete_where(svc, viewer, id, access::own_backpack(viewer), effect).await
}

async fn delete_where(
    svc: &Services,
    viewer: Viewer,
    id: i64,
    scope: sea_orm::Condition,
    effect: Option<&Effect>,
) -> AppResult<i64> {
    super::write::commit(svc, Vec::new(), effect, |txn| {
        let scope = scope.clone();
        Box::pin(async move {
            let deleted = backpack_item::Entity::delete_many()
                .filter(backpack_item::Column::Id.eq(id))
                .filter(scope)
                .exec(txn)
                .await?;
            if deleted.rows_affected == 0 {
                return Err(AppError::NotFound("backpack item"));
            }
            Ok(id)
        })
    })
    .await?;
    tracing::info!(backpack.item = id, user.id = %viewer.id, "backpack_item_deleted");
    Ok(id)
}
