//! The backpack: `BackpackItem`, `backpack`, `saveBackpackItem`, `deleteBackpackItem`.

use async_graphql::{
    Context, Enum, ID, InputObject, Object,
    connection::{Connection, CursorType, Edge},
};
use chrono::{DateTime, Utc};
use entity::backpack_item;

use super::{
    assets::{UploadRef, take_upload},
    effect,
    errors::GqlResultExt,
    projects::IdCursor,
    require_viewer, services,
};
use crate::{
    error::AppError,
    service::{
        self,
        backpack::{ItemKind, NewItem},
    },
};

/// What a backpack item holds.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum BackpackItemType {
    Costume,
    Sound,
    Sprite,
    Script,
}

impl From<BackpackItemType> for ItemKind {
    fn from(t: BackpackItemType) -> Self {
        match t {
            BackpackItemType::Costume => ItemKind::Costume,
            BackpackItemType::Sound => ItemKind::Sound,
            BackpackItemType::Sprite => ItemKind::Sprite,
            BackpackItemType::Script => ItemKind::Script,
        }
    }
}

impl From<ItemKind> for BackpackItemType {
    fn from(k: ItemKind) -> Self {
        match k {
            ItemKind::Costume => BackpackItemType::Costume,
            ItemKind::Sound => BackpackItemType::Sound,
            ItemKind::Sprite => BackpackItemType::Sprite,
            ItemKind::Script => BackpackItemType::Script,
        }
    }
}

/// A piece kept in a backpack. Only its owner (and an admin) ever sees it.
pub struct BackpackItem(pub backpack_item::Model);

#[Object]
impl BackpackItem {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    #[graphql(name = "type")]
    async fn item_type(&self) -> BackpackItemType {
        ItemKind::from_db(&self.0.kind).into()
    }

    async fn mime(&self) -> &str {
        &self.0.mime
    }

    /// Where the owner (or an admin) fetches the body (with their token).
    async fn body_url(&self) -> String {
        format!("/backpack/{}/body", self.0.id)
    }

    /// Where the owner (or an admin) fetches the thumbnail (with their token).
    async fn thumbnail_url(&self) -> String {
        format!("/backpack/{}/thumbnail", self.0.id)
    }

    /// Bytes of body and thumbnail together.
    async fn size(&self) -> i64 {
        self.0.size
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

pub type BackpackItemConnection = Connection<IdCursor, BackpackItem>;

#[derive(InputObject)]
pub struct SaveBackpackItemInput {
    pub name: String,
    #[graphql(name = "type")]
    pub item_type: BackpackItemType,
    /// The body's media type; it must match its bytes.
    pub mime: String,
    pub body: UploadRef,
    /// PNG or JPEG.
    pub thumbnail: UploadRef,
}

#[derive(Default)]
pub struct BackpackQuery;

#[Object]
impl BackpackQuery {
    /// The viewer's backpack, newest first.
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn backpack(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<BackpackItemConnection> {
        let viewer = require_viewer(ctx).gql()?;
        let first = service::projects::page_size(first).gql()?;
        let after = after
            .map(|c| IdCursor::decode_cursor(&c).map(|c| c.0))
            .transpose()
            .gql()?;
        let (rows, has_next) = service::backpack::list(services(ctx).gql()?, viewer, first, after)
            .await
            .gql()?;
        let mut page = Connection::new(false, has_next);
        page.edges.extend(
            rows.into_iter()
                .map(|i| Edge::new(IdCursor(i.id), BackpackItem(i))),
        );
        Ok(page)
    }
}

#[derive(Default)]
pub struct BackpackMutation;

#[Object]
impl BackpackMutation {
    /// Saves a piece into the viewer's backpack (multipart: body and thumbnail files).
    async fn save_backpack_item(
        &self,
        ctx: &Context<'_>,
        input: SaveBackpackItemInput,
    ) -> async_graphql::Result<BackpackItem> {
        let viewer = require_viewer(ctx).gql()?;
        let body = take_upload(ctx, &input.body, "body").gql()?;
        let thumbnail = take_upload(ctx, &input.thumbnail, "thumbnail").gql()?;
        let item = NewItem {
            name: input.name,
            kind: input.item_type.into(),
            mime: input.mime,
            body,
            thumbnail,
        };
        let saved =
            service::backpack::save(services(ctx).gql()?, viewer, item, effect(ctx).as_ref())
                .await
                .gql()?;
        Ok(BackpackItem(saved))
    }

    /// Deletes one of the viewer's backpack items (an admin: anyone's); returns its id.
    async fn delete_backpack_item(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ID> {
        let viewer = require_viewer(ctx).gql()?;
        let id: i64 = id
            .parse()
            .map_err(|_| AppError::bad_input("id", "not a backpack item id"))
            .gql()?;
        service::backpack::delete(services(ctx).gql()?, viewer, id, effect(ctx).as_ref())
            .await
            .gql()?;
        Ok(ID(id.to_string()))
    }
}
