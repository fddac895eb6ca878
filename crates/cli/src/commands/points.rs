//! `shoalctl points ...`: upsert from files, get, delete and count points.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;
use shoal_proto::v1;
use shoal_types::Limits;

use crate::client::{items_per_request, Clients};
use crate::consistency::ConsistencyArg;
use crate::id::Id;
use crate::io::{read_jsonl, read_npy, Matrix};
use crate::output::{self, vector_text, Format, Report};

#[derive(Debug, Subcommand)]
pub enum PointsCommand {
    /// Insert or overwrite points from a .npy matrix or a JSON Lines file.
    Upsert(UpsertArgs),
    /// Fetch points by id (a number if the token parses as u64, else a string).
    Get {
        collection: String,
        #[arg(required = true)]
        ids: Vec<Id>,
        /// Also print the stored vectors.
        #[arg(long)]
        with_vectors: bool,
        #[command(flatten)]
        read: ConsistencyArg,
    },
    /// Delete points by id; ids that do not exist are ignored.
    Delete {
        collection: String,
        #[arg(required = true)]
        ids: Vec<Id>,
    },
    /// Count live points.
    Count {
        collection: String,
        #[command(flatten)]
        read: ConsistencyArg,
    },
}

#[derive(Debug, Args)]
pub struct UpsertArgs {
    collection: String,
    /// A float32 N x D .npy file, or a .jsonl file of {"id": 5 | "key", "vector": [...]} lines.
    #[arg(
        long,
        required_unless_present = "text_file",
        conflicts_with = "text_file"
    )]
    file: Option<PathBuf>,
    /// A .jsonl file of {"id": 5 | "key", "text": "..."} lines, for a collection with a
    /// vectorizer: the node turns the texts into vectors.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// Id of the first row of a .npy file; the rows get consecutive ids [default: 0].
    #[arg(long)]
    id_start: Option<u64>,
    /// Points per upsert request (fewer if that many would exceed the message limit).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
}

pub async fn run(mut clients: Clients, format: Format, command: PointsCommand) -> Result<()> {
    match command {
        PointsCommand::Upsert(args) => {
            let upserted = upsert_file(&mut clients, format, &args).await?;
            output::print(format, &Upserted { upserted })
        }
        PointsCommand::Get {
            collection,
            ids,
            with_vectors,
            read,
        } => {
            let request = v1::GetRequest {
                collection,
                ids: ids.into_iter().map(Into::into).collect(),
                with_vectors,
                consistency: read.to_wire(),
            };
            let response = clients.points.get(request).await?.into_inner();
            let points = response
                .points
                .into_iter()
                .map(|p| {
                    Ok(PointReport {
                        id: Id::from_wire(p.id)?,
                        vector: with_vectors.then_some(p.vector),
                    })
                })
                .collect::<Result<_>>()?;
            let missing = response
                .missing
                .into_iter()
                .map(|id| Id::from_wire(Some(id)))
                .collect::<Result<_>>()?;
            output::print(format, &GetReport { points, missing })
        }
        PointsCommand::Delete { collection, ids } => {
            let request = v1::DeleteRequest {
                collection,
                ids: ids.into_iter().map(Into::into).collect(),
            };
            let response = clients.points.delete(request).await?.into_inner();
            ensure_acknowledged(&response.failed_shards, response.unacknowledged.len())?;
            let deleted = response.deleted;
            output::print(format, &Deleted { deleted })
        }
        PointsCommand::Count { collection, read } => {
            let request = v1::CountRequest {
                collection,
                consistency: read.to_wire(),
            };
            let count = clients.points.count(request).await?.into_inner().count;
            output::print(format, &Count { count })
        }
    }
}

async fn upsert_file(clients: &mut Clients, format: Format, args: &UpsertArgs) -> Result<u64> {
    let batch_size = args.batch_size as usize;
    if let Some(path) = &args.text_file {
        ensure!(
            args.id_start.is_none(),
            "--id-start applies to .npy files only"
        );
        let points = read_jsonl(path)?;
        if let Some(p) = points.iter().find(|p| p.text.is_empty()) {
            bail!(
                "{}: every line of --text-file needs a \"text\" (id {:?} has none)",
                path.display(),
                p.id
            );
        }
        // Texts are embedded per request: keep requests small enough for the model's batch.
        let batch = batch_size.min(64);
        let progress = output::progress_bar(format, points.len() as u64, "points");
        let mut rest = points.into_iter();
        let batches = std::iter::from_fn(|| {
            let batch: Vec<v1::Point> = rest.by_ref().take(batch).collect();
            (!batch.is_empty()).then_some(batch)
        });
        return upsert_batches(clients, &args.collection, batches, &progress).await;
    }
    let file = args.file.as_ref().context("--file or --text-file")?;
    match file.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let matrix = read_npy(file, None)?;
            let id_start = args.id_start.unwrap_or(0);
            let progress = output::progress_bar(format, matrix.rows() as u64, "points");
            upsert_matrix(
                clients,
                &args.collection,
                &matrix,
                id_start,
                batch_size,
                &progress,
            )
            .await
        }
        Some("jsonl" | "ndjson") => {
            ensure!(
                args.id_start.is_none(),
                "--id-start applies to .npy files only; JSON Lines points carry their ids"
            );
            let points = read_jsonl(file)?;
            let dim = points.iter().map(|p| p.vector.len()).max().unwrap_or(0);
            let batch = batch_len(batch_size, dim);
            let progress = output::progress_bar(format, points.len() as u64, "points");
            let mut rest = points.into_iter();
            let batches = std::iter::from_fn(|| {
                let batch: Vec<v1::Point> = rest.by_ref().take(batch).collect();
                (!batch.is_empty()).then_some(batch)
            });
            upsert_batches(clients, &args.collection, batches, &progress).await
        }
        _ => bail!(
            "{}: unknown file type; expected a .npy or .jsonl file",
            file.display()
        ),
    }
}

/// Upserts the rows of `matrix` with ids `id_start..`, in batches of at most `batch_size`.
pub async fn upsert_matrix(
    clients: &mut Clients,
    collection: &str,
    matrix: &Matrix,
    id_start: u64,
    batch_size: usize,
    progress: &ProgressBar,
) -> Result<u64> {
    let rows = matrix.rows();
    id_start
        .checked_add(rows as u64)
        .context("--id-start plus the number of rows overflows a u64 id")?;
    let batch = batch_len(batch_size, matrix.dim);
    let batches = (0..rows).step_by(batch).map(|start| {
        (start..rows.min(start + batch))
            .map(|i| v1::Point {
                id: Some((id_start + i as u64).into()),
                vector: matrix.row(i).to_vec(),
                ..Default::default()
            })
            .collect()
    });
    upsert_batches(clients, collection, batches, progress).await
}

/// Requested batch size, capped so one request of `dim`-dimensional points fits the limits.
pub fn batch_len(batch_size: usize, dim: usize) -> usize {
    let max_points = Limits::default().max_points_per_request.min(batch_size);
    // A point on the wire: its floats plus the id and framing.
    items_per_request(dim * 4 + 32, max_points)
}

async fn upsert_batches(
    clients: &mut Clients,
    collection: &str,
    batches: impl Iterator<Item = Vec<v1::Point>>,
    progress: &ProgressBar,
) -> Result<u64> {
    let mut upserted = 0;
    for points in batches {
        let n = points.len() as u64;
        let request = v1::UpsertRequest {
            collection: collection.to_owned(),
            points,
        };
        upserted += acknowledged(clients.points.upsert(request).await?.into_inner())?;
        progress.inc(n);
    }
    Ok(upserted)
}

#[derive(Serialize)]
struct Upserted {
    upserted: u64,
}

impl Report for Upserted {
    fn text(&self) -> String {
        format!("upserted {} points", self.upserted)
    }
}

#[derive(Serialize)]
struct GetReport {
    points: Vec<PointReport>,
    missing: Vec<Id>,
}

#[derive(Serialize)]
struct PointReport {
    id: Id,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<Vec<f32>>,
}

impl Report for GetReport {
    fn text(&self) -> String {
        let mut lines: Vec<String> = self
            .points
            .iter()
            .map(|p| match &p.vector {
                Some(v) => format!("{}  {}", p.id, vector_text(v)),
                None => p.id.to_string(),
            })
            .collect();
        if !self.missing.is_empty() {
            let missing: Vec<String> = self.missing.iter().map(Id::to_string).collect();
            lines.push(format!("missing: {}", missing.join(", ")));
        }
        lines.join("\n")
    }
}

#[derive(Serialize)]
struct Deleted {
    deleted: u64,
}

impl Report for Deleted {
    fn text(&self) -> String {
        format!("deleted {} points", self.deleted)
    }
}

#[derive(Serialize)]
struct Count {
    count: u64,
}

impl Report for Count {
    fn text(&self) -> String {
        self.count.to_string()
    }
}

/// Fails when some shards did not acknowledge their part of a write.
pub fn ensure_acknowledged(failed: &[v1::ShardFailure], unacknowledged: usize) -> Result<()> {
    anyhow::ensure!(
        failed.is_empty(),
        "{unacknowledged} points were not acknowledged (retry them; writes are idempotent): {}",
        crate::output::shard_failures(failed)
    );
    Ok(())
}

/// The points an upsert wrote, or an error if some shards did not acknowledge theirs.
pub fn acknowledged(response: v1::UpsertResponse) -> Result<u64> {
    ensure_acknowledged(&response.failed_shards, response.unacknowledged.len())?;
    Ok(response.upserted)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> PointsCommand {
        let argv = ["shoalctl", "points"]
            .into_iter()
            .chain(args.iter().copied());
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Points(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn get_and_count_take_a_consistency_level() {
        let eventual = i32::from(v1::Consistency::Eventual);
        let PointsCommand::Get { ids, read, .. } =
            parse(&["get", "c", "1", "a", "--consistency", "eventual"])
        else {
            panic!("not get");
        };
        assert_eq!(ids.len(), 2);
        assert_eq!(read.to_wire(), eventual);
        let PointsCommand::Count { read, .. } = parse(&["count", "c", "--consistency=eventual"])
        else {
            panic!("not count");
        };
        assert_eq!(read.to_wire(), eventual);
        let PointsCommand::Count { read, .. } = parse(&["count", "c"]) else {
            panic!("not count");
        };
        assert_eq!(read.to_wire(), i32::from(v1::Consistency::Strong));
    }
}
