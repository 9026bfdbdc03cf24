//! Jobs: the `Job` type, `job(id)`, `exportProject(id)` and the `jobChanged(id)` subscription.

use async_graphql::{Context, Enum, ID, Object, Subscription};
use chrono::{DateTime, Utc};
use entity::job;
use futures::{Stream, StreamExt};

use super::{authority, errors::GqlResultExt, require_viewer, services, viewer};
use crate::{
    domain::ProjectId,
    error::AppError,
    service::{self, jobs::LeaseStatus},
};

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A Scratch 3 `.sb3` bundle of one project version.
    #[graphql(name = "EXPORT_SB3")]
    ExportSb3,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Claimed; waiting for a worker.
    Pending,
    /// A worker is building it.
    Running,
    /// Done: `url` downloads the result.
    Ready,
    /// Failed: `error` says why. Asking again starts a new job.
    Failed,
}

/// Slow work done in the background, claimed once per (kind, project, version).
pub struct Job(pub job::Model);

#[Object]
impl Job {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn kind(&self) -> JobKind {
        JobKind::ExportSb3
    }

    async fn status(&self) -> JobStatus {
        match self.0.status {
            LeaseStatus::Pending => JobStatus::Pending,
            LeaseStatus::Running => JobStatus::Running,
            LeaseStatus::Completed => JobStatus::Ready,
            LeaseStatus::Failed => JobStatus::Failed,
        }
    }

    /// Where to download the result (`/exports/{id}.sb3`, with the same credentials) once
    /// READY; null before.
    async fn url(&self) -> Option<String> {
        (self.0.status == LeaseStatus::Completed).then(|| format!("/exports/{}.sb3", self.0.id))
    }

    /// Why the job failed (FAILED only).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// A job id from a client: not a number is simply no such job.
fn job_id(id: &ID) -> Option<i64> {
    id.parse::<i64>().ok().filter(|id| *id > 0)
}

#[derive(Default)]
pub struct JobsQuery;

#[Object]
impl JobsQuery {
    /// A job by id; null if it does not exist or the viewer may not read its project.
    async fn job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Job>> {
        let Some(id) = job_id(&id) else {
            return Ok(None);
        };
        let found = service::jobs::get(services(ctx).gql()?, viewer(ctx), id)
            .await
            .gql()?;
        Ok(found.map(Job))
    }
}

#[derive(Default)]
pub struct JobsMutation;

#[Object]
impl JobsMutation {
    /// Exports the project's current version as an `.sb3` bundle, built in the background.
    /// Asking again for the same version (while it is pending, running or ready) answers the
    /// same job; after a failure it starts a new one. NOT_FOUND if the viewer may not read the
    /// project.
    async fn export_project(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Job> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&id, "id").gql()?;
        let job = service::jobs::export_project(services(ctx).gql()?, viewer, id)
            .await
            .gql()?;
        Ok(Job(job))
    }
}

/// Job subscriptions (part of the subscription root).
#[derive(Default)]
pub struct JobsSubscription;

#[Subscription]
impl JobsSubscription {
    /// The job's current state, then each status change in order (PENDING → RUNNING →
    /// READY | FAILED); the stream ends after READY or FAILED. NOT_FOUND if the viewer may not
    /// read the job's project (checked again before every event: losing access ends it).
    async fn job_changed(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Job>> + use<>> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx).gql()?.clone();
        let id = job_id(&id).ok_or(AppError::NotFound("job")).gql()?;
        // Refused at once rather than as the stream's first item.
        if service::jobs::get(&svc, Some(viewer), id)
            .await
            .gql()?
            .is_none()
        {
            return Err(AppError::NotFound("job")).gql();
        }
        Ok(service::jobs::watch(svc, authority(ctx), id).map(|item| item.map(Job).gql()))
    }
}
