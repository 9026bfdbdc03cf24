//! Assets: the `Asset` type, uploads, and the asset query.

use async_graphql::{Context, Enum, ID, InputObject, Object};
use entity::asset;

use super::{
    Uploads, effect, errors::GqlResultExt, loaders::AssetKey, require_viewer, services, viewer,
};
use crate::{
    domain::{AssetKind, Md5},
    error::AppError,
    service,
};

/// The kind of a media asset.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum AssetType {
    ImageVector,
    ImageBitmap,
    Sound,
}

impl From<AssetType> for AssetKind {
    fn from(t: AssetType) -> Self {
        match t {
            AssetType::ImageVector => AssetKind::ImageVector,
            AssetType::ImageBitmap => AssetKind::ImageBitmap,
            AssetType::Sound => AssetKind::Sound,
        }
    }
}

impl From<AssetKind> for AssetType {
    fn from(t: AssetKind) -> Self {
        match t {
            AssetKind::ImageVector => AssetType::ImageVector,
            AssetKind::ImageBitmap => AssetType::ImageBitmap,
            AssetKind::Sound => AssetType::Sound,
        }
    }
}

/// A content-addressed media asset (costume, backdrop or sound).
pub struct Asset(pub asset::Model);

#[Object]
impl Asset {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn md5(&self) -> &str {
        &self.0.md5
    }

    async fn asset_type(&self) -> AssetType {
        AssetKind::from_db(&self.0.asset_type)
            .unwrap_or(AssetKind::ImageBitmap)
            .into()
    }

    async fn sha256(&self) -> &str {
        &self.0.sha256
    }

    async fn size(&self) -> i64 {
        self.0.size
    }

    async fn content_type(&self) -> &str {
        &self.0.content_type
    }

    /// Where the bytes are served: `/assets/{md5}.{ext}`.
    async fn url(&self) -> String {
        format!("/assets/{}.{}", self.0.md5, self.0.data_format)
    }
}

/// A file part of a multipart request (GraphQL multipart request spec). In a JSON request it
/// cannot be satisfied.
pub struct UploadRef(pub String);

#[async_graphql::Scalar(name = "Upload")]
impl async_graphql::ScalarType for UploadRef {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match value {
            async_graphql::Value::String(s) => Ok(UploadRef(s)),
            other => Err(async_graphql::InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::String(self.0.clone())
    }
}

#[derive(InputObject)]
pub struct UploadAssetInput {
    /// The file part (multipart request).
    pub file: UploadRef,
    pub asset_type: AssetType,
    /// If given, the md5 the client computed; a mismatch is CHECKSUM_MISMATCH.
    pub md5: Option<String>,
}

/// The stored asset, and whether this upload created it (false: identical bytes were stored).
#[derive(async_graphql::SimpleObject)]
pub struct UploadAssetPayload {
    pub asset: Asset,
    pub created: bool,
}

/// The staged file an `Upload` variable points at; each file can be used once.
pub fn take_upload(
    ctx: &Context<'_>,
    file: &UploadRef,
    field: &'static str,
) -> Result<crate::storage::StagedUpload, AppError> {
    ctx.data_opt::<std::sync::Arc<Uploads>>()
        .and_then(|u| u.take(&file.0))
        .ok_or_else(|| {
            AppError::bad_input(
                field,
                "no file part for this upload (use a multipart request)",
            )
        })
}

#[derive(Default)]
pub struct AssetsQuery;

#[Object]
impl AssetsQuery {
    /// An asset by md5 and type; null if not stored.
    async fn asset(
        &self,
        ctx: &Context<'_>,
        md5: String,
        asset_type: AssetType,
    ) -> async_graphql::Result<Option<Asset>> {
        service::access::require_asset_reader(
            services(ctx).gql()?.limits.asset_access,
            viewer(ctx),
        )
        .gql()?;
        let md5 = Md5::parse(&md5)
            .ok_or_else(|| AppError::bad_input("md5", "md5 must be 32 hex digits"))
            .gql()?;
        let found = super::loaders(ctx)
            .gql()?
            .load_one(AssetKey(md5.as_str().to_owned(), asset_type.into()))
            .await
            .gql()?;
        Ok(found.map(Asset))
    }
}

#[derive(Default)]
pub struct AssetsMutation;

#[Object]
impl AssetsMutation {
    /// Stores a media asset (deduplicated by md5 and type).
    async fn upload_asset(
        &self,
        ctx: &Context<'_>,
        input: UploadAssetInput,
    ) -> async_graphql::Result<UploadAssetPayload> {
        let viewer = require_viewer(ctx).gql()?;
        let claimed = input
            .md5
            .map(|m| {
                Md5::parse(&m)
                    .ok_or_else(|| AppError::bad_input("md5", "md5 must be 32 hex digits"))
            })
            .transpose()
            .gql()?;
        let upload = take_upload(ctx, &input.file, "file").gql()?;
        let (asset, created) = service::assets::upload(
            services(ctx).gql()?,
            viewer,
            upload,
            input.asset_type.into(),
            claimed,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(UploadAssetPayload {
            asset: Asset(asset),
            created,
        })
    }
}
